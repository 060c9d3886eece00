"""Crash reconciliation for networks: a runtime killed with SIGKILL leaves veths, netns and
rules that the next start cleans up (for containers that died meanwhile) or keeps serving
(for containers still running)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.assertions import ok
from tests.harness import EXTERNAL, Services
from tests.hostcheck import HostState, _instance_tag

pytestmark = pytest.mark.skipif(EXTERNAL or os.geteuid() != 0, reason="starts its own services; needs root")


@pytest.fixture
def private(busybox_tar):
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-netrec-")))
    before = HostState.capture(svc.cgroup_parent)
    ok(svc.berth("daemon", "start"))
    ok(svc.berth("import", str(busybox_tar), "busybox"))
    yield svc
    svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
    svc.berth("daemon", "stop")
    leaks = HostState.capture(svc.cgroup_parent).leaks_since(before)
    svc.close()
    assert not leaks, leaks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(port: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _nft(table: str) -> str:
    return subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True).stdout


def _crash_runtime(svc: Services) -> None:
    os.kill(int((svc.run_dir / "runtime.pid").read_text()), signal.SIGKILL)
    time.sleep(0.5)


def test_runtime_crash_reconciles_network(private):
    svc = private
    tag = _instance_tag(svc.cgroup_parent)
    keep_port, dead_port = _free_port(), _free_port()
    serve = "mkdir -p /w && echo {} > /w/index.html && exec httpd -f -p 80 -h /w"
    ok(svc.berth("run", "-d", "--name", "keep", "-p", f"{keep_port}:80", "busybox", "sh", "-c", serve.format("kept")))
    ok(svc.berth("run", "-d", "--name", "dies", "-p", f"{dead_port}:80", "busybox", "sh", "-c", serve.format("x")))
    dead_pid = int(ok(svc.berth("inspect", "-f", "{{.State.Pid}}", "dies")).stdout)
    dead_id = ok(svc.berth("inspect", "-f", "{{.Id}}", "dies")).stdout.strip()
    assert f"dport {dead_port}" in _nft(tag)
    assert os.path.exists(f"/run/netns/{tag}-{dead_id[:12]}")

    _crash_runtime(svc)
    os.kill(dead_pid, signal.SIGKILL)  # dies while nobody tears its network down
    time.sleep(0.3)
    ok(svc.berth("daemon", "start"))

    assert ok(svc.berth("inspect", "-f", "{{.State.Status}}", "dies")).stdout.strip() == "exited"
    assert not os.path.exists(f"/run/netns/{tag}-{dead_id[:12]}")
    rules = _nft(tag)
    assert f"dport {dead_port}" not in rules and f"dport {keep_port}" in rules
    assert _fetch(keep_port) == "kept\n"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"v{tag[-6:]}{dead_id[:5]}" not in links
    # The lease of the dead container is free again; no duplicate address after the restart.
    ok(svc.berth("start", "dies"))
    ips = {ok(svc.berth("exec", n, "sh", "-c", "ip -o -4 addr show eth0")).stdout.split()[3] for n in ("keep", "dies")}
    assert len(ips) == 2
