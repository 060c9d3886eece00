"""`berth daemon start|stop|status` and state that survives a restart of the services."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.assertions import ok, one_line_error
from tests.harness import EXTERNAL, Services
from tests.hostcheck import HostState

pytestmark = pytest.mark.skipif(EXTERNAL, reason="starts and stops its own services")


@pytest.fixture
def private():
    """A Berth started only through `berth daemon start`, so the command itself is tested."""
    base = Path(tempfile.mkdtemp(prefix="berth-daemon-"))
    svc = Services(base)
    before = HostState.capture(svc.cgroup_parent)
    yield svc
    svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
    svc.berth("daemon", "stop")
    leaks = HostState.capture(svc.cgroup_parent).leaks_since(before)
    parents = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{svc.cgroup_parent}")]
    svc.close()
    assert not leaks, leaks
    assert not parents, f"berth's parent cgroups left after daemon stop: {parents}"


def test_daemon_restart_keeps_state(private, busybox_tar):
    svc = private
    assert svc.berth("daemon", "status").returncode == 1
    ok(svc.berth("daemon", "start"))
    ok(svc.berth("daemon", "status"))
    ok(svc.berth("import", str(busybox_tar), "busybox"))
    ok(svc.berth("run", "--name", "done", "busybox", "echo", "persisted"))
    ok(svc.berth("run", "-d", "--name", "sleeper", "busybox", "sleep", "300"))
    pid = int(ok(svc.berth("inspect", "-f", "{{.State.Pid}}", "sleeper")).stdout)

    ok(svc.berth("daemon", "stop"))
    assert svc.berth("daemon", "status").returncode == 1
    one_line_error(svc.berth("ps"), 1, "Cannot connect")
    os.kill(pid, signal.SIGKILL)  # the container dies while the daemon is down
    time.sleep(0.3)

    ok(svc.berth("daemon", "start"))
    ps = ok(svc.berth("ps", "-a")).stdout
    assert "done" in ps and "sleeper" in ps
    assert ok(svc.berth("inspect", "-f", "{{.State.Status}}", "sleeper")).stdout.strip() == "exited"
    assert ok(svc.berth("logs", "done")).stdout == "persisted\n"
    assert "busybox" in ok(svc.berth("images")).stdout


def test_runtime_crash_keeps_containers_running(private, busybox_tar):
    svc = private
    ok(svc.berth("daemon", "start"))
    ok(svc.berth("import", str(busybox_tar), "busybox"))
    ok(svc.berth("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                 "while :; do echo tick; sleep 0.2; done"))
    runtime_pid = int((svc.run_dir / "runtime.pid").read_text())
    os.kill(runtime_pid, signal.SIGKILL)
    time.sleep(0.5)
    one_line_error(svc.berth("ps"), 1, "runtime service is not running")
    before = len(Path(_log_path(svc)).read_text().splitlines())
    time.sleep(0.6)
    assert len(Path(_log_path(svc)).read_text().splitlines()) > before  # still logging without the server
    ok(svc.berth("daemon", "start"))
    assert "Up " in ok(svc.berth("ps")).stdout
    ok(svc.berth("rm", "-f", "ticker"))


def _log_path(svc: Services) -> str:
    logs = list((svc.root_dir / "runtime" / "containers").glob("*/*-json.log"))
    assert len(logs) == 1, logs
    return str(logs[0])


def test_service_down_is_named(private, busybox_tar):
    svc = private
    ok(svc.berth("daemon", "start"))
    image_pid = int((svc.run_dir / "image.pid").read_text())
    os.kill(image_pid, signal.SIGTERM)
    time.sleep(0.5)
    one_line_error(svc.berth("images"), 1, "image service is not running")
    one_line_error(svc.berth("run", "--rm", "busybox", "true"), 125, "image service is not running")
