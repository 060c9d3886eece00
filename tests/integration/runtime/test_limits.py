"""cgroup limits, shown from the container's side: memory (OOM), pids, cpu quota."""

from __future__ import annotations

import time
from pathlib import Path

from berth.runtime.v1 import runtime_pb2
from services.runtime.cgroups import new_manager

MiB = 1 << 20


def test_memory_hog_is_oom_killed(rt):
    # pid 1 (sh) reads 100 MB through a command substitution into its own memory.
    code, _, _, c = rt.run("sh", "-c", 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo ${#x}',
                           resources=runtime_pb2.Resources(memory_bytes=32 * MiB))
    assert code == 137
    assert c.oom_killed and c.exit_code == 137
    assert rt.stub.Wait(runtime_pb2.ContainerRef(id=c.id)).oom_killed


def test_small_program_under_memory_limit_is_fine(rt):
    code, out, _, c = rt.run("sh", "-c", "echo ok", resources=runtime_pb2.Resources(memory_bytes=32 * MiB))
    assert (code, out, c.oom_killed) == (0, b"ok\n", False)


def test_fork_bomb_is_capped_by_pids_limit(rt):
    # Each attempt is announced before the fork; ash gives up at the first refused fork.
    code, out, err, _ = rt.run("sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 10 & done",
                               resources=runtime_pb2.Resources(pids_limit=20))
    attempts = int(out.split()[-1])
    assert attempts == 20  # pid 1 and 19 sleeps: the 20th fork is refused
    assert code != 0 and b"fork" in err


def _cgroup(rt, controller: str, cid: str) -> Path:
    mgr = new_manager(Path("/sys/fs/cgroup"), rt.svc.cgroup_parent)
    if mgr.version == "v2":
        return Path("/sys/fs/cgroup") / rt.svc.cgroup_parent / cid
    return Path("/sys/fs/cgroup") / controller / rt.svc.cgroup_parent / cid


def test_cpu_quota_keeps_a_busy_loop_near_half_a_core(rt):
    c = rt.create("sh", "-c", "while :; do :; done",
                  resources=runtime_pb2.Resources(cpu_quota_us=50_000, cpu_period_us=100_000))
    rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
    mgr = new_manager(Path("/sys/fs/cgroup"), rt.svc.cgroup_parent)
    time.sleep(0.5)
    u0, t0 = mgr.cpu_usage_ns(c.id), time.monotonic()
    time.sleep(2)
    u1, t1 = mgr.cpu_usage_ns(c.id), time.monotonic()
    share = (u1 - u0) / 1e9 / (t1 - t0)
    assert 0.35 < share < 0.65, share
