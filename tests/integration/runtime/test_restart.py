"""Live restore: the runtime server can die; the supervisor and its containers carry on."""

from __future__ import annotations

import json
import signal
import time

from berth.runtime.v1 import runtime_pb2


def _log_lines(rt, cid):
    return [e.output.data for e in rt.stub.Logs(runtime_pb2.LogsRequest(id=cid, tail=-1))]


def test_sigkill_and_restart_keeps_containers_running_and_logging(rt):
    c = rt.create("sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done")
    short = rt.create("sh", "-c", "sleep 1; exit 9")
    pid = rt.stub.Start(runtime_pb2.ContainerRef(id=c.id)).pid
    rt.stub.Start(runtime_pb2.ContainerRef(id=short.id))
    sup_pid = rt.svc.supervisor_pid()
    rt.svc.stop("runtime", sig=signal.SIGKILL)
    before = len(_log_lines_file(rt, c.id))
    time.sleep(1.5)  # the short container exits while no runtime server is up
    assert len(_log_lines_file(rt, c.id)) > before + 5  # still logging without the server
    rt.svc.start("runtime")
    rt.reconnect()
    assert rt.svc.supervisor_pid() == sup_pid
    again = rt.stub.Inspect(runtime_pb2.ContainerRef(id=c.id))
    assert again.status == "running" and again.pid == pid
    running = [x.id for x in rt.stub.List(runtime_pb2.ListRequest()).containers]
    assert c.id in running and short.id not in running
    done = rt.stub.Inspect(runtime_pb2.ContainerRef(id=short.id))
    assert done.status == "exited" and done.exit_code == 9  # from the supervisor's exit.json
    n = len(_log_lines(rt, c.id))
    time.sleep(0.5)
    assert len(_log_lines(rt, c.id)) > n
    # exits are still followed after the restart
    stopped = rt.stub.Stop(runtime_pb2.StopRequest(id=c.id, timeout=1))
    assert stopped.status == "exited" and stopped.exit_code == 137


def _log_lines_file(rt, cid):
    path = rt.svc.root_dir / "runtime" / "containers" / cid / f"{cid}-json.log"
    return path.read_text().splitlines()


def test_sigterm_leaves_containers_running_and_an_idle_supervisor_exits(busybox_dir, tmp_path):
    import os

    from tests.harness import Services
    from tests.hostcheck import HostState

    from .conftest import Runtime

    svc = Services(tmp_path)
    before = HostState.capture(svc.cgroup_parent)
    svc.start("runtime")
    rt = Runtime(svc, busybox_dir, tmp_path)
    try:
        c = rt.create("sleep", "300")
        pid = rt.stub.Start(runtime_pb2.ContainerRef(id=c.id)).pid
        sup = svc.supervisor_pid()
        svc.stop("runtime")  # SIGTERM: live restore, the container keeps running
        os.kill(pid, 0)
        os.kill(sup, 0)
        svc.stop_supervisor()  # now the supervisor goes, and takes its containers along
        exit_file = svc.root_dir / "runtime" / "containers" / c.id / "exit.json"
        assert json.loads(exit_file.read_text())["exit_code"] == 137
        svc.start("runtime")  # reconciles: exited with the recorded code, cgroups removed
        rt.reconnect()
        rec = rt.stub.Inspect(runtime_pb2.ContainerRef(id=c.id))
        assert (rec.status, rec.exit_code) == ("exited", 137)
        rt.remove_all()
        new_sup = svc.supervisor_pid()
        svc.stop("runtime")  # no container left: the supervisor is told to exit
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(new_sup):
            time.sleep(0.05)
        assert svc.supervisor_pid() is None
        assert not HostState.capture(svc.cgroup_parent).leaks_since(before)
    finally:
        rt.remove_all()
        rt.channel.close()
        svc.close()


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie left for its parent, the stopped server, counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False
