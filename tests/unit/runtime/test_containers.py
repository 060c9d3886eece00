"""The service logic with a fake supervisor and a fake cgroup manager (no root, no processes)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from services.common import errors
from services.runtime.containers import Containers, build_env, parse_signal, resolv_conf
from services.runtime.supervisor.client import SupervisorError

A = "a" * 64
B = "ab" + "c" * 62


class FakeStream:
    def __init__(self, ack=None):  # noqa: ANN001
        self.ack = ack or {"ok": True, "running": False}

    def next(self, timeout=None):  # noqa: ANN001
        time.sleep(min(timeout or 0.01, 0.01))
        return None

    def close(self):
        pass


class FakeSupervisor:
    def __init__(self) -> None:
        self.spawned: list[dict] = []
        self.killed: list[tuple[str, int]] = []
        self.alive: dict[str, int] = {}
        self.next_pid = 100
        self.spawn_reply: dict | None = None

    def spawn(self, config):  # noqa: ANN001
        self.spawned.append(config)
        self.next_pid += 1
        if self.spawn_reply:
            return {"ok": True, "pid": self.next_pid, **self.spawn_reply}
        self.alive[config["id"]] = self.next_pid
        return {"ok": True, "pid": self.next_pid}

    def kill(self, cid, signum):  # noqa: ANN001
        if cid not in self.alive:
            raise SupervisorError("container is not running")
        self.killed.append((cid, signum))

    def list(self):
        return dict(self.alive)

    def watch(self):
        return FakeStream()

    def subscribe(self, cid):  # noqa: ANN001
        return FakeStream({"ok": True, "running": cid in self.alive})

    def shutdown(self, if_idle=True):  # noqa: ANN001
        return not self.alive


class FakeCgroups:
    version = "fake"

    def __init__(self) -> None:
        self.live: dict[str, object] = {}
        self.oom: set[str] = set()

    def create(self, cid, limits):  # noqa: ANN001
        self.live[cid] = limits
        return [Path(f"/fake/{cid}/cgroup.procs")]

    def exists(self, cid):  # noqa: ANN001
        return cid in self.live

    def oom_killed(self, cid):  # noqa: ANN001
        return cid in self.oom

    def remove(self, cid):  # noqa: ANN001
        self.live.pop(cid, None)

    def remove_parent(self) -> None:
        self.parent_removed = not self.live

    def apply(self, cid, limits):  # noqa: ANN001
        self.live[cid] = limits

    def freeze(self, cid):  # noqa: ANN001
        self.frozen_ids = getattr(self, "frozen_ids", set()) | {cid}

    def thaw(self, cid):  # noqa: ANN001
        self.frozen_ids = getattr(self, "frozen_ids", set()) - {cid}

    def frozen(self, cid):  # noqa: ANN001
        return cid in getattr(self, "frozen_ids", set())

    def dirs(self, cid):  # noqa: ANN001
        return [Path(f"/fake/{cid}")]


@pytest.fixture
def env(tmp_path):
    sup, cg = FakeSupervisor(), FakeCgroups()
    c = Containers(tmp_path, f"sqlite:///{tmp_path / 'runtime.db'}", sup, cg)
    return c, sup, cg


def spec(*args: str, **kw) -> runtime_pb2.ContainerSpec:
    return runtime_pb2.ContainerSpec(args=list(args) or ["true"], rootfs=types_pb2.Mount(
        type="overlay", lowerdirs=["/l"], upperdir="/u", workdir="/w"), **kw)


def test_parse_signal():
    assert parse_signal("") == signal.SIGKILL
    assert parse_signal("term") == parse_signal("SIGTERM") == parse_signal("15") == signal.SIGTERM
    assert parse_signal("", default=signal.SIGTERM) == signal.SIGTERM
    for bad in ("SIGNOPE", "0", "999"):
        with pytest.raises(errors.InvalidArgument):
            parse_signal(bad)


def test_build_env():
    assert build_env(["A=1"], "h") == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                       "HOSTNAME=h", "A=1"]
    assert build_env(["PATH=/bin", "HOSTNAME=x"], "h") == ["PATH=/bin", "HOSTNAME=x"]


def test_resolv_conf_drops_loopback(tmp_path):
    f = tmp_path / "r"
    f.write_text("search lan\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n")
    assert resolv_conf(str(f)) == "search lan\nnameserver 10.0.0.1\n"
    f.write_text("nameserver 127.0.0.53\n")
    assert "8.8.8.8" in resolv_conf(str(f))


def test_create_validates(env):
    c, _, _ = env
    with pytest.raises(errors.InvalidArgument):
        c.create("ABC", "", spec())
    with pytest.raises(errors.InvalidArgument):
        c.create(A, "_x", spec())
    with pytest.raises(errors.InvalidArgument):
        c.create(A, "", runtime_pb2.ContainerSpec(args=["x"]))
    rec = c.create(A, "web", spec())
    assert rec.status == "created" and rec.log_path.endswith(f"{A}/{A}-json.log")
    with pytest.raises(errors.AlreadyExists) as e:
        c.create(B, "web", spec())
    assert str(e.value).startswith('Conflict. The container name "/web" is already in use by container "aaaa')
    with pytest.raises(errors.AlreadyExists):
        c.create(A, "", spec())


def test_lookup_by_id_name_prefix(env):
    c, _, _ = env
    c.create(A, "web", spec())
    c.create(B, "", spec())
    assert c.get("web").id == A
    assert c.get("aaa").id == A
    assert c.get("abc").id == B
    with pytest.raises(errors.InvalidArgument):
        c.get("a")  # ambiguous
    with pytest.raises(errors.NotFound) as e:
        c.get("zzz")
    assert str(e.value) == "No such container: zzz"


def test_start_creates_cgroups_files_and_spawns(env, tmp_path):
    c, sup, cg = env
    c.create(A, "", spec("sh", "-c", "x", hostname="", cwd="", env=["X=1"],
                         resources=runtime_pb2.Resources(memory_bytes=1 << 25)))
    rec = c.start(A)
    assert rec.status == "running" and rec.pid == 101 and rec.started_ns > 0
    cfg = sup.spawned[0]
    assert cfg["hostname"] == A[:12] and cfg["cwd"] == "/"
    assert cfg["cgroup_procs"] == [f"/fake/{A}/cgroup.procs"]
    assert cfg["rootfs"]["lowerdirs"] == ["/l"]
    assert "HOSTNAME=" + A[:12] in cfg["env"] and "X=1" in cfg["env"]
    assert (tmp_path / "containers" / A / "hostname").read_text() == A[:12] + "\n"
    assert set(cfg["files"]) == {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}
    assert cg.live[A].memory_bytes == 1 << 25
    assert c.start(A).pid == 101 and len(sup.spawned) == 1  # no-op when running


def test_exec_failure_is_a_state_not_an_rpc_error(env):
    c, sup, cg = env
    c.create(A, "", spec("nope"))
    sup.spawn_reply = {"error": 'exec: "nope": executable file not found in $PATH', "exit_code": 127}
    rec = c.start(A)
    assert (rec.status, rec.exit_code) == ("exited", 127)
    assert rec.error.startswith('exec: "nope"')
    assert A not in cg.live
    assert c.wait(A).exit_code == 127


def test_exit_event_records_oom_and_removes_cgroups_once(env):
    c, sup, cg = env
    c.create(A, "", spec())
    pid = c.start(A).pid
    cg.oom.add(A)
    c._on_exit(A, pid + 1, 1, 5)  # another run's pid: ignored
    assert c.get(A).status == "running"
    c._on_exit(A, pid, 137, 5)
    rec = c.get(A)
    assert (rec.status, rec.exit_code, rec.oom_killed, rec.finished_ns) == ("exited", 137, True, 5)
    assert A not in cg.live
    c._on_exit(A, pid, 0, 6)  # duplicate: ignored
    assert c.get(A).exit_code == 137


def test_wait_blocks_until_exit(env):
    c, sup, _ = env
    c.create(A, "", spec())
    got = []
    t = threading.Thread(target=lambda: got.append(c.wait(A).exit_code))
    t.start()
    time.sleep(0.1)
    assert not got
    pid = c.start(A).pid
    c._on_exit(A, pid, 4, 1)
    t.join(5)
    assert got == [4]


def test_kill_and_remove_rules(env, tmp_path):
    c, sup, cg = env
    c.create(A, "", spec())
    with pytest.raises(errors.FailedPrecondition) as e:
        c.kill(A)
    assert str(e.value) == f"Cannot kill container: {A}: container is not running"
    pid = c.start(A).pid
    with pytest.raises(errors.InvalidArgument):
        c.kill(A, "BOGUS")
    c.kill(A, "HUP")
    assert sup.killed == [(A, signal.SIGHUP)]
    with pytest.raises(errors.FailedPrecondition):
        c.remove(A)

    def exit_soon():
        time.sleep(0.1)
        sup.alive.pop(A)
        c._on_exit(A, pid, 137, 1)

    threading.Thread(target=exit_soon).start()
    removed = c.remove(A, force=True)
    assert removed.status == "exited" and (A, signal.SIGKILL) in sup.killed
    assert not (tmp_path / "containers" / A).exists()
    with pytest.raises(errors.NotFound):
        c.get(A)


def test_stop_escalates_to_sigkill(env):
    c, sup, _ = env
    c.create(A, "", spec(stop_signal="SIGUSR1", stop_timeout=-1))
    pid = c.start(A).pid

    def die_on_kill():
        while (A, signal.SIGKILL) not in sup.killed:
            time.sleep(0.01)
        sup.alive.pop(A)
        c._on_exit(A, pid, 137, 1)

    threading.Thread(target=die_on_kill).start()
    t = time.monotonic()
    rec = c.stop(A, timeout=0)
    assert time.monotonic() - t < 3
    assert sup.killed[0] == (A, signal.SIGUSR1) and rec.exit_code == 137


def test_reconcile_after_restart(env, tmp_path):
    c, sup, cg = env
    for cid in (A, B):
        c.create(cid, "", spec())
        c.start(cid)
    pid_b = c.get(B).pid
    # B exited while no runtime server was up; the supervisor recorded it. A vanished without a record.
    sup.alive.clear()
    (tmp_path / "containers" / B / "exit.json").write_text(json.dumps(
        {"exit_code": 9, "finished_at": 42, "pid": pid_b}))
    c.reconcile()
    assert (c.get(B).status, c.get(B).exit_code, c.get(B).finished_ns) == ("exited", 9, 42)
    assert (c.get(A).status, c.get(A).exit_code) == ("exited", 255)
    assert cg.live == {}


def test_attach_to_exited_container_acks_then_exits(env):
    c, sup, _ = env
    c.create(A, "", spec())
    sup.spawn_reply = {"error": "x", "exit_code": 127}
    c.start(A)
    assert [(e.kind, e.exit_code) for e in c.attach(A)] == [("subscribed", 0), ("exit", 127)]


def test_list_orders_newest_first(env):
    c, _, _ = env
    c.create(A, "", spec())
    c.create(B, "", spec())
    c.start(A)
    assert [r.id for r in c.list(all_=True)] == [B, A]
    assert [r.id for r in c.list()] == [A]


# ---- restart policies, pause, update, rename -------------------------------------------------

def test_restart_rules():
    from services.runtime.containers import next_backoff, should_restart

    on_failure = runtime_pb2.RestartPolicy(name="on-failure", maximum_retry_count=3)
    assert should_restart(on_failure, 1, 2, False) and not should_restart(on_failure, 1, 3, False)
    assert not should_restart(on_failure, 0, 0, False)
    assert should_restart(runtime_pb2.RestartPolicy(name="on-failure"), 1, 100, False)
    assert should_restart(runtime_pb2.RestartPolicy(name="always"), 0, 0, False)
    assert not should_restart(runtime_pb2.RestartPolicy(name="always"), 0, 0, True)  # stopped by hand
    assert not should_restart(runtime_pb2.RestartPolicy(name="no"), 1, 0, False)
    assert next_backoff(0, 0) == 0.1 and next_backoff(0.1, 1) == 0.2 and next_backoff(40, 1) == 60
    assert next_backoff(3.2, 11) == 0.1  # a long run resets it


def test_on_failure_restarts_then_gives_up(env):
    c, sup, _ = env
    rec = c.create(A, "", spec("false", restart_policy=runtime_pb2.RestartPolicy(name="on-failure",
                                                                                    maximum_retry_count=2)))
    c.start(rec.id)
    for expected in (1, 2):
        pid = c.get(rec.id).pid
        sup.alive.pop(rec.id)
        c._on_exit(rec.id, pid, 1, time.time_ns())
        deadline = time.monotonic() + 5
        while c.get(rec.id).restart_count != expected or c.get(rec.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    pid = c.get(rec.id).pid
    sup.alive.pop(rec.id)
    c._on_exit(rec.id, pid, 1, time.time_ns())
    time.sleep(0.6)
    assert c.get(rec.id).status == "exited" and c.get(rec.id).restart_count == 2
    assert len(sup.spawned) == 3


def test_stop_by_hand_cancels_a_pending_restart(env):
    c, sup, _ = env
    rec = c.create(A, "", spec("sh", restart_policy=runtime_pb2.RestartPolicy(name="always")))
    c.start(rec.id)
    pid = c.get(rec.id).pid
    sup.alive.pop(rec.id)
    c._on_exit(rec.id, pid, 0, time.time_ns())
    c.stop(rec.id)  # within the 100 ms backoff
    time.sleep(0.3)
    assert c.get(rec.id).status == "exited" and len(sup.spawned) == 1
    assert c.get(rec.id).manually_stopped


def test_pause_rules(env):
    c, _, cg = env
    with pytest.raises(errors.FailedPrecondition):
        c.pause(c.create(A, "", spec("sh")).id)  # not running
    c.start(A)
    c.pause(A)
    assert cg.frozen(A) and c.is_paused(c.get(A))
    with pytest.raises(errors.FailedPrecondition, match="already paused"):
        c.pause(A)
    c.unpause(A)
    with pytest.raises(errors.FailedPrecondition, match="not paused"):
        c.unpause(A)


def test_update_merges_limits_and_applies_them_live(env):
    c, _, cg = env
    c.create(A, "", spec("sh", resources=runtime_pb2.Resources(pids_limit=10)))
    c.start(A)
    c.update(A, runtime_pb2.Resources(memory_bytes=64 << 20), None)
    assert cg.live[A].memory_bytes == 64 << 20 and cg.live[A].pids_limit == 10
    with pytest.raises(errors.InvalidArgument):
        c.update(A, None, runtime_pb2.RestartPolicy(name="sometimes"))


def test_rename_rules(env):
    c, _, _ = env
    c.create(A, "aa", spec("sh"))
    c.create("b" * 64, "bb", spec("sh"))
    with pytest.raises(errors.AlreadyExists):
        c.rename("aa", "bb")
    with pytest.raises(errors.InvalidArgument):
        c.rename("aa", "aa")
    with pytest.raises(errors.InvalidArgument):
        c.rename("aa", "bad name")
    assert c.rename("aa", "cc").name == "cc"


def test_log_options_are_validated(env):
    c, _, _ = env
    with pytest.raises(errors.InvalidArgument, match="unknown log opt"):
        c.create(A, "", spec("sh", log_opts={"colour": "red"}))
    with pytest.raises(errors.InvalidArgument, match="invalid size"):
        c.create(A, "", spec("sh", log_opts={"max-size": "big"}))
    c.create(A, "", spec("sh", log_opts={"max-size": "1m", "max-file": "2"}))
    c.start(A)
