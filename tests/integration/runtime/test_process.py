"""Exit codes, output streams, logs, wait, stop, kill, remove, names: the container lifecycle."""

from __future__ import annotations

import time

import grpc
import pytest

from berth.runtime.v1 import runtime_pb2


def ref(cid: str) -> runtime_pb2.ContainerRef:
    return runtime_pb2.ContainerRef(id=cid)


def test_exit_code_propagates(rt):
    code, _, _, c = rt.run("sh", "-c", "exit 3")
    assert code == 3 and c.exit_code == 3 and c.status == "exited" and c.finished_unix_nano > 0


def test_missing_command_is_127_with_dockers_message(rt):
    code, _, _, c = rt.run("nosuchcmd")
    assert code == 127 and c.status == "exited" and c.exit_code == 127
    assert c.error == 'exec: "nosuchcmd": executable file not found in $PATH'


def test_not_executable_is_126(rt):
    code, _, _, c = rt.run("/etc/passwd")
    assert code == 126 and c.error == 'exec: "/etc/passwd": permission denied'


def test_stdout_and_stderr_are_kept_apart(rt):
    code, out, err, _ = rt.run("sh", "-c", "echo to-out; echo to-err >&2; echo more-out")
    assert code == 0
    assert out == b"to-out\nmore-out\n" and err == b"to-err\n"


def test_logs_survive_exit_with_tail_and_times(rt):
    code, _, _, c = rt.run("sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2")
    assert code == 0
    entries = list(rt.stub.Logs(runtime_pb2.LogsRequest(id=c.id, tail=-1)))
    assert [e.output.data for e in entries] == [b"line1\n", b"line2\n", b"line3\n", b"line4\n", b"line5\n",
                                                b"oops\n"]
    assert entries[-1].output.stream == 1
    now = time.time_ns()
    assert all(now - 60e9 < e.output.time_unix_nano <= now for e in entries)
    tail = list(rt.stub.Logs(runtime_pb2.LogsRequest(id=c.id, tail=2)))
    assert [e.output.data for e in tail] == [b"line5\n", b"oops\n"]
    assert list(rt.stub.Logs(runtime_pb2.LogsRequest(id=c.id, tail=0))) == []


def test_wait_on_created_then_started(rt):
    c = rt.create("sh", "-c", "sleep 0.3; exit 7")
    fut = rt.stub.Wait.future(ref(c.id))
    time.sleep(0.3)
    assert not fut.done()
    started = rt.stub.Start(ref(c.id))
    assert started.status == "running" and started.pid > 0
    assert rt.stub.Start(ref(c.id)).pid == started.pid  # starting a running container is a no-op
    resp = fut.result(timeout=20)
    assert resp.exit_code == 7 and not resp.oom_killed


def test_attach_to_an_exited_container_returns_at_once(rt):
    code, _, _, c = rt.run("true")
    responses = list(rt.stub.Attach(iter([runtime_pb2.AttachRequest(id=c.id)]), timeout=5))
    assert [r.WhichOneof("item") for r in responses] == [None, "exit_code"]


def test_stop_sends_sigterm_first(rt):
    c = rt.create("sh", "-c", "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done")
    rt.stub.Start(ref(c.id))
    time.sleep(0.5)
    t = time.monotonic()
    stopped = rt.stub.Stop(runtime_pb2.StopRequest(id=c.id, timeout=10))
    assert time.monotonic() - t < 5
    assert stopped.status == "exited" and stopped.exit_code == 0
    assert b"got TERM\n" in b"".join(e.output.data for e in rt.stub.Logs(runtime_pb2.LogsRequest(id=c.id, tail=-1)))


def test_stop_kills_after_the_timeout(rt):
    c = rt.create("sleep", "300")  # pid 1 without a handler: SIGTERM is ignored
    rt.stub.Start(ref(c.id))
    t = time.monotonic()
    stopped = rt.stub.Stop(runtime_pb2.StopRequest(id=c.id, timeout=1))
    elapsed = time.monotonic() - t
    assert 0.9 < elapsed < 5
    assert stopped.status == "exited" and stopped.exit_code == 137


def test_stop_uses_the_spec_signal_and_timeout(rt):
    c = rt.create("sh", "-c", "trap 'exit 5' USR1; while true; do sleep 0.1; done", stop_signal="SIGUSR1",
                  stop_timeout=2)
    rt.stub.Start(ref(c.id))
    time.sleep(0.3)
    assert rt.stub.Stop(runtime_pb2.StopRequest(id=c.id, timeout=-1)).exit_code == 5


def test_kill(rt):
    c = rt.create("sleep", "300")
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Kill(runtime_pb2.KillRequest(id=c.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == f"Cannot kill container: {c.id}: container is not running"
    rt.stub.Start(ref(c.id))
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Kill(runtime_pb2.KillRequest(id=c.id, signal="SIGNOPE"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rt.stub.Kill(runtime_pb2.KillRequest(id=c.id, signal="9"))
    assert rt.stub.Wait(ref(c.id), timeout=10).exit_code == 137


def test_remove(rt):
    c = rt.create("sleep", "300")
    rt.stub.Start(ref(c.id))
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Remove(runtime_pb2.RemoveRequest(id=c.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == (f"You cannot remove a running container {c.id}. Stop the container before "
                                 "attempting removal or force remove")
    removed = rt.stub.Remove(runtime_pb2.RemoveRequest(id=c.id, force=True))
    assert removed.id == c.id and removed.status == "exited"
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Inspect(ref(c.id))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == f"No such container: {c.id}"
    assert not (rt.svc.root_dir / "runtime" / "containers" / c.id).exists()


def test_names_ids_and_lookup(rt):
    c = rt.create("true", name="web")
    with pytest.raises(grpc.RpcError) as e:
        rt.create("true", name="web")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert e.value.details() == (f'Conflict. The container name "/web" is already in use by container "{c.id}". '
                                 "You have to remove (or rename) that container to be able to reuse that name.")
    with pytest.raises(grpc.RpcError) as e:
        rt.create("true", name="-bad")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Create(runtime_pb2.CreateRequest(id="ABC", spec=runtime_pb2.ContainerSpec(args=["true"])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rt.stub.Inspect(ref("web")).id == c.id
    assert rt.stub.Inspect(ref(c.id[:12])).id == c.id
    with pytest.raises(grpc.RpcError) as e:
        rt.stub.Inspect(ref("nothere"))
    assert e.value.details() == "No such container: nothere"


def test_list_newest_first_and_running_only_by_default(rt):
    a = rt.create("true")
    b = rt.create("sleep", "300")
    rt.stub.Start(ref(b.id))
    all_ids = [c.id for c in rt.stub.List(runtime_pb2.ListRequest(all=True)).containers]
    assert all_ids.index(b.id) < all_ids.index(a.id)
    running = [c.id for c in rt.stub.List(runtime_pb2.ListRequest()).containers]
    assert b.id in running and a.id not in running


def test_start_again_after_exit_keeps_the_rootfs(rt):
    c = rt.create("sh", "-c", "cat /state 2>/dev/null; echo run >> /state")
    assert rt.attach_and_start(c.id) == (0, b"", b"")
    first = rt.stub.Inspect(ref(c.id))
    again = rt.stub.Start(ref(c.id))
    assert again.status == "running" and again.pid != first.pid
    assert rt.stub.Wait(ref(c.id), timeout=20).exit_code == 0
    assert [e.output.data for e in rt.stub.Logs(runtime_pb2.LogsRequest(id=c.id, tail=-1))] == [b"run\n"]
