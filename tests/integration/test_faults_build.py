"""`berth build` when the image service (the builder) is SIGKILLed in the middle of it.

The builder lives in the image service, a RUN step's container in the runtime, and the api
joins the two. When the builder dies mid-RUN the api must stop and remove the step's
container at once (not when the command would have ended): the restarted image service
sweeps the build's snapshot, which must not be under a live container. Afterwards: no stray
snapshot, no scratch dir, no half image, no container left in the runtime, nothing on the
host, and the same build succeeds when repeated.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests import images
from tests.harness import EXTERNAL, REPO, Services
from tests.hostcheck import HostState
from tests.integration.test_faults import assert_consistent, eventually, killed_at, ok

pytestmark = pytest.mark.skipif(EXTERNAL or os.geteuid() != 0, reason="starts its own services; needs root")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (fault injection)")

STEP_SECONDS = 6  # how long the RUN would take: the kill must end it long before


@pytest.fixture(scope="module")
def svc():
    s = Services(Path(tempfile.mkdtemp(prefix="berth-faults-build-")))
    try:
        s.start()
        tar = s.base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        ok(s.berth("import", str(tar), "busybox:latest"))
        yield s
    finally:
        s.close()


@pytest.fixture
def clean(svc: Services):
    before = HostState.capture(svc.cgroup_parent)
    yield
    eventually(lambda: assert_consistent(svc), what="consistent state")

    def no_leaks() -> None:
        leaks = HostState.capture(svc.cgroup_parent).leaks_since(before)
        assert not leaks, f"host not clean: {leaks}"

    eventually(no_leaks, timeout=5)


def state(s: Services) -> dict[str, set[str]]:
    """What the services keep on disk: layers, blobs, snapshots, scratch, containers."""
    image, runtime = s.root_dir / "image", s.root_dir / "runtime" / "containers"
    return {"layers": set(os.listdir(image / "layers")), "blobs": set(os.listdir(image / "blobs" / "sha256")),
            "snapshots": set(os.listdir(image / "snapshots")), "tmp": set(os.listdir(image / "tmp")),
            "containers": set(os.listdir(runtime))}


def context(s: Services, name: str, dockerfile: str) -> Path:
    ctx = s.base / name
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "payload.txt").write_text(f"payload of {name}\n")
    return ctx


def build(s: Services, tag: str, ctx: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "build", "--progress", "plain", "-t", tag, str(ctx)],
                            env=s.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    """Lines of the build's stderr up to the one containing `needle`."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"the build never printed {needle!r}: {''.join(seen)}")


def assert_failed_in_one_line(proc: subprocess.Popen, timeout: float) -> str:
    _, err = proc.communicate(timeout=timeout)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert proc.returncode not in (0, None) and "Traceback" not in err and last, err
    return last


def images_named(s: Services, repo: str) -> list[str]:
    return [line for line in ok(s.berth("images")).stdout.splitlines()[1:] if line.split()[0] == repo]


def test_image_service_killed_mid_run_step(svc, clean):
    before = state(svc)
    ctx = context(svc, "mid-run", f"""FROM busybox
COPY payload.txt /payload.txt
RUN echo step-$((40+2)) && sleep {STEP_SECONDS} && echo done > /done.txt
CMD ["cat", "/done.txt"]
""")
    proc = build(svc, "killed-build:1", ctx)
    try:
        wait_for_line(proc, "step-42")
        assert len(state(svc)["containers"] - before["containers"]) == 1, "no step container running"
        killed = time.monotonic()
        svc.stop("image", sig=signal.SIGKILL)
        last = assert_failed_in_one_line(proc, timeout=30)
        # The api stopped the step when the builder went, not when the sleep ended.
        assert time.monotonic() - killed < STEP_SECONDS - 1, "the step's container outlived its builder"
        assert "image service" in last, last
        assert state(svc)["containers"] == before["containers"], "the step's container was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "image" not in svc.procs:
            svc.start("image")
    eventually(lambda: assert_consistent(svc))
    assert images_named(svc, "killed-build") == []
    # The COPY before the RUN completed: its layer is build cache (leased by a cache row), and
    # the same build, now to the end, starts from it.
    again = build(svc, "killed-build:1", ctx)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "CACHED" in err, err
    assert ok(svc.berth("run", "--rm", "killed-build:1")).stdout == "done\n"
    ok(svc.berth("rmi", "killed-build:1"))
    assert_unchanged_once_pruned(svc, before)


def assert_unchanged_once_pruned(s: Services, before: dict[str, set[str]]) -> None:
    """Beyond the build cache, which `builder prune` returns, nothing was added."""
    ok(s.berth("builder", "prune", "-a", "-f"))
    after = state(s)
    assert after == before, f"left behind: { {k: after[k] ^ before[k] for k in after if after[k] != before[k]} }"


@needs_strace
@pytest.mark.parametrize("when", [1, 2, 3])
def test_image_service_killed_at_a_rename_of_the_build(svc, clean, when):
    """The builder publishes by rename (the snapshot, the step's blob and layer): a kill at
    each of them leaves nothing once the service is back, and the build then works."""
    before = state(svc)
    ctx = context(svc, f"rename-{when}", f"""FROM busybox
RUN echo built-{when} > /built.txt
COPY payload.txt /payload.txt
CMD ["cat", "/built.txt"]
""")
    tag = f"renamed-build-{when}:1"
    with killed_at(svc, "image", "rename", when=when):
        r = svc.berth("build", "--progress", "plain", "-t", tag, str(ctx), timeout=60)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    eventually(lambda: assert_consistent(svc))
    assert images_named(svc, f"renamed-build-{when}") == []
    assert_unchanged_once_pruned(svc, before)
    ok(svc.berth("build", "--progress", "plain", "-t", tag, str(ctx), timeout=120))
    assert ok(svc.berth("run", "--rm", tag)).stdout == f"built-{when}\n"
    ok(svc.berth("rmi", tag))
    assert_unchanged_once_pruned(svc, before)
