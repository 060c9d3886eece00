"""Both cgroup managers against fake cgroup trees in a temp dir."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from services.runtime import cgroups
from services.runtime.cgroups import Limits, detect, new_manager
from services.runtime.cgroups import v1 as v1mod
from services.runtime.cgroups.v1 import V1Manager
from services.runtime.cgroups.v2 import V2Manager, shares_to_weight

CID = "c" * 64


def fake_v1(root: Path, controllers=("memory", "cpu", "cpuacct", "pids", "freezer", "cpuset")) -> Path:
    for c in controllers:
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    (root / "unified").mkdir()  # hybrid: an empty v2 mount beside
    return root


def fake_v2(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def empty_files(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file() and f.parent.name == CID:
            f.unlink()


def test_detect(tmp_path):
    assert detect(fake_v1(tmp_path / "a")) == "v1"
    assert detect(fake_v2(tmp_path / "b")) == "v2"
    with pytest.raises(RuntimeError):
        detect(tmp_path)
    assert isinstance(new_manager(tmp_path / "a", "berth"), V1Manager)
    assert isinstance(new_manager(tmp_path / "b", "berth"), V2Manager)


def test_v1_create_writes_limits_per_controller(tmp_path):
    root = fake_v1(tmp_path)
    m = V1Manager(root, "berth")
    procs = m.create(CID, Limits(memory_bytes=32 << 20, cpu_quota_us=50000, cpu_period_us=100000,
                                 pids_limit=20, cpu_shares=512))
    assert sorted(p.parent.parent.parent.name for p in procs) == ["cpu", "cpuacct", "freezer", "memory", "pids"]
    d = root / "memory" / "berth" / CID
    assert (d / "memory.limit_in_bytes").read_text() == str(32 << 20)
    assert not (root / "cpuset" / "berth" / CID).exists()
    cpu = root / "cpu" / "berth" / CID
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.shares").read_text() == "512"
    assert (root / "pids" / "berth" / CID / "pids.max").read_text() == "20"
    assert m.exists(CID)
    empty_files(root)  # a real cgroup dir's files vanish with it; a fake one's must go first
    m.remove(CID)
    assert not m.exists(CID)
    m.remove(CID)  # idempotent


def test_v1_no_limits_writes_nothing(tmp_path):
    root = fake_v1(tmp_path)
    V1Manager(root, "berth").create(CID, Limits())
    assert list((root / "memory" / "berth" / CID).iterdir()) == []


class KernelMemory:
    """Imitates the kernel rule memory.limit_in_bytes <= memory.memsw.limit_in_bytes."""

    def __init__(self, limit: int, memsw: int) -> None:
        self.values = {"memory.limit_in_bytes": limit, "memory.memsw.limit_in_bytes": memsw}
        self.order: list[str] = []

    def write(self, path: Path, value) -> None:  # noqa: ANN001
        new = dict(self.values, **{path.name: int(value)})
        if new["memory.limit_in_bytes"] > new["memory.memsw.limit_in_bytes"]:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.values = new
        self.order.append(path.name)


@pytest.mark.parametrize("start,target,order", [
    (1 << 62, 64 << 20, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),  # lowering
    (32 << 20, 64 << 20, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]),  # raising
])
def test_v1_memory_and_memsw_order(tmp_path, monkeypatch, start, target, order):
    d = tmp_path
    (d / "memory.limit_in_bytes").write_text("")
    (d / "memory.memsw.limit_in_bytes").write_text("")
    kernel = KernelMemory(start, start)
    monkeypatch.setattr(v1mod, "write", kernel.write)
    V1Manager._set_memory(d, target)
    assert kernel.values == {"memory.limit_in_bytes": target, "memory.memsw.limit_in_bytes": target}
    assert kernel.order == order


def test_v1_oom_and_usage(tmp_path):
    root = fake_v1(tmp_path)
    m = V1Manager(root, "berth")
    m.create(CID, Limits())
    mem = root / "memory" / "berth" / CID
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert not m.oom_killed(CID)
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert m.oom_killed(CID)
    (root / "cpuacct" / "berth" / CID / "cpuacct.usage").write_text("12345\n")
    assert m.cpu_usage_ns(CID) == 12345
    for f in mem.iterdir():
        f.unlink()


def test_v1_shared_cpu_cpuacct_hierarchy_is_joined_once(tmp_path):
    root = tmp_path
    (root / "cpu,cpuacct").mkdir()
    (root / "cpu,cpuacct" / "cgroup.procs").write_text("")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    fake_v1(root, ("memory", "pids"))
    procs = V1Manager(root, "berth").create(CID, Limits())
    assert len(procs) == 3


def test_v1_remove_retries_while_busy(tmp_path, monkeypatch):
    calls = []
    real_rmdir = cgroups.os.rmdir

    def rmdir(path):  # noqa: ANN001
        calls.append(path)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "busy")
        real_rmdir(path)

    d = tmp_path / "x"
    d.mkdir()
    monkeypatch.setattr(cgroups.os, "rmdir", rmdir)
    cgroups.rmdir_retry(d)
    assert len(calls) == 3 and not d.exists()


def test_v2_create_enables_controllers_and_writes_limits(tmp_path):
    root = fake_v2(tmp_path)
    m = V2Manager(root, "berth.slice")
    procs = m.create(CID, Limits(memory_bytes=32 << 20, cpu_quota_us=50000, pids_limit=20, cpu_shares=1024))
    d = root / "berth.slice" / CID
    assert procs == [d / "cgroup.procs"]
    # a plain file stands in for the kernel's subtree_control: the last write wins here
    assert (root / "cgroup.subtree_control").read_text() in ("+memory", "+cpu", "+pids", "+io")
    assert (d / "memory.max").read_text() == str(32 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "20"
    assert (d / "cpu.weight").read_text() == str(shares_to_weight(1024))
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert m.oom_killed(CID)
    (d / "cpu.stat").write_text("usage_usec 250\nuser_usec 200\n")
    assert m.cpu_usage_ns(CID) == 250_000
    for f in d.iterdir():
        f.unlink()
    m.remove(CID)
    assert not d.exists()


def test_v2_swap_is_zero_where_supported(tmp_path):
    root = fake_v2(tmp_path)
    d = root / "berth" / CID
    d.mkdir(parents=True)
    (d / "memory.swap.max").write_text("max")
    V2Manager(root, "berth").create(CID, Limits(memory_bytes=1 << 20))
    assert (d / "memory.swap.max").read_text() == "0"


def test_shares_to_weight():
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39
