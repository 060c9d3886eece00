"""Fixtures: a private set of real Berth services, test images, and a clean-host check."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from tests import images
from tests.harness import EXTERNAL, ExternalServices, Services
from tests.hostcheck import HostState

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "busybox-rootfs.tar"
    path.write_bytes(images.busybox_rootfs_bytes())
    return path


@pytest.fixture(scope="session")
def services() -> Services:
    """One set of services for the session, with busybox imported."""
    if EXTERNAL:
        svc: Services = ExternalServices()
    else:
        svc = Services(Path(tempfile.mkdtemp(prefix="berth-test-")))
    try:  # whatever fails after the first process started, close() still runs
        svc.start()
        tar = svc.base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        r = svc.berth("import", str(tar), "busybox:latest")
        assert r.returncode == 0, r.stderr
        yield svc
        svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
    finally:
        svc.close()


@pytest.fixture
def clean_host(services: Services):
    """Fail the test if it leaves mounts, cgroups, netns or links behind."""
    before = HostState.capture(services.cgroup_parent)
    dirs_before = _state_dirs(services)
    yield
    deadline = time.monotonic() + 5
    while True:
        leaks = HostState.capture(services.cgroup_parent).leaks_since(before)
        new_dirs = _state_dirs(services) - dirs_before
        if new_dirs:
            leaks.append(f"state dirs: {sorted(new_dirs)[:5]}")
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaks, f"host not clean: {leaks}"


def _state_dirs(services: Services) -> set[str]:
    """Per-container directories of runtime and image: a removed container leaves none."""
    found = set()
    for d in (services.root_dir / "runtime" / "containers", services.root_dir / "image" / "snapshots"):
        if d.is_dir():
            found |= {str(p) for p in d.iterdir()}
    return found
