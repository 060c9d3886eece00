"""The runtime's interactive paths against the real service: a pty from the container's
own devpts, exec in every namespace of the container, stdin that is never read, and a
supervisor that holds no fd or process more after all of it."""

from __future__ import annotations

import os
import queue
import threading
import time

from berth.runtime.v1 import runtime_pb2


def _requests(q: queue.Queue):  # noqa: ANN202
    while (item := q.get()) is not None:
        yield item


def _collect(responses, out: list, done: threading.Event) -> None:  # noqa: ANN001
    try:
        for r in responses:
            if r.HasField("output"):
                out.append(r.output.data)
            elif r.HasField("exit_code"):
                out.append(("exit", r.exit_code))
    finally:
        done.set()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, ValueError):
                pass
    return found


def test_tty_exec_and_unread_stdin_leave_the_supervisor_as_it_was(rt):
    sup = rt.svc.supervisor_pid()
    fds_before, children_before = _fds(sup), _children(sup)

    c = rt.create("sh", tty=True, open_stdin=True, tty_rows=25, tty_cols=90)
    q: queue.Queue = queue.Queue()
    q.put(runtime_pb2.AttachRequest(id=c.id))
    responses = rt.stub.Attach(_requests(q))
    next(responses)
    rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
    out: list = []
    done = threading.Event()
    threading.Thread(target=_collect, args=(responses, out, done), daemon=True).start()
    q.put(runtime_pb2.AttachRequest(stdin=b"stty size; tty; stat -c dev=%d /dev/pts; ls /dev/pts\n"))
    deadline = time.monotonic() + 10
    while b"ptmx" not in b"".join(x for x in out if isinstance(x, bytes)):
        assert time.monotonic() < deadline, out
        time.sleep(0.05)
    text = b"".join(x for x in out if isinstance(x, bytes)).decode()
    assert "25 90\r\n/dev/pts/0\r\n" in text, text
    # the pty lives in a devpts instance of the container's own, not the host's
    assert f"dev={os.stat('/dev/pts').st_dev}\r\n" not in text and "dev=" in text

    # exec: the same namespaces as the container's init, and its cgroup
    init = rt.stub.Inspect(runtime_pb2.ContainerRef(id=c.id)).pid
    eq: queue.Queue = queue.Queue()
    script = "for n in ipc mnt net pid uts cgroup; do readlink /proc/self/ns/$n; done; cat /proc/self/cgroup"
    eq.put(runtime_pb2.ExecRequest(spec=runtime_pb2.ExecSpec(container=c.id, args=["sh", "-c", script])))
    exec_out, code = b"", None
    for r in rt.stub.Exec(_requests(eq), timeout=30):
        if r.HasField("output"):
            exec_out += r.output.data
        elif r.HasField("exit_code"):
            code = r.exit_code
    eq.put(None)
    assert code == 0
    lines = exec_out.decode().split("\n")
    expected = [os.readlink(f"/proc/{init}/ns/{n}") for n in ("ipc", "mnt", "net", "pid", "uts", "cgroup")]
    assert lines[:6] == expected
    with open(f"/proc/{init}/cgroup") as f:
        init_cgroups = f.read()
    assert rt.svc.cgroup_parent in init_cgroups
    # Seen from its cgroup namespace, a process in the container's own cgroup is at "/";
    # one left in the supervisor's cgroup would show a "/.." path.
    exec_cgroups = {ln.split(":")[1]: ln.split(":")[2] for ln in lines[6:] if ln.count(":") == 2}
    assert exec_cgroups["memory"] == "/" and exec_cgroups["pids"] == "/", exec_cgroups

    # a second container that never reads its stdin: 4 MB sent to it must not block anyone
    lazy = rt.create("sleep", "300", open_stdin=True)
    lq: queue.Queue = queue.Queue()
    lq.put(runtime_pb2.AttachRequest(id=lazy.id))
    lazy_responses = rt.stub.Attach(_requests(lq))
    next(lazy_responses)
    rt.stub.Start(runtime_pb2.ContainerRef(id=lazy.id))
    for _ in range(64):
        lq.put(runtime_pb2.AttachRequest(stdin=b"x" * 65536))
    time.sleep(0.5)
    q.put(runtime_pb2.AttachRequest(stdin=b"echo still-$((40+2))\n"))
    deadline = time.monotonic() + 10
    while b"still-42" not in b"".join(x for x in out if isinstance(x, bytes)):
        assert time.monotonic() < deadline, "the supervisor blocked on a full stdin pipe"
        time.sleep(0.05)

    q.put(runtime_pb2.AttachRequest(stdin=b"exit 3\n"))
    assert done.wait(10) and out[-1] == ("exit", 3)
    q.put(None)
    lq.put(None)
    lazy_responses.cancel()
    rt.stub.Remove(runtime_pb2.RemoveRequest(id=lazy.id, force=True))
    rt.stub.Remove(runtime_pb2.RemoveRequest(id=c.id, force=True))
    deadline = time.monotonic() + 5
    while (_fds(sup), _children(sup)) != (fds_before, children_before):
        assert time.monotonic() < deadline, (_fds(sup), fds_before, _children(sup), children_before)
        time.sleep(0.05)


def test_exec_into_a_stopped_container_is_refused(rt):
    import grpc
    import pytest

    c = rt.create("true")
    rt.attach_and_start(c.id)
    q: queue.Queue = queue.Queue()
    q.put(runtime_pb2.ExecRequest(spec=runtime_pb2.ExecSpec(container=c.id, args=["true"])))
    q.put(None)
    with pytest.raises(grpc.RpcError) as err:
        list(rt.stub.Exec(_requests(q), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not running" in err.value.details()
