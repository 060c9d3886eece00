"""The devices cgroup allow-list (Docker's defaults, `--device`, `--privileged`), how the v1
manager writes it, and the seccomp profile that allows mknod only where it is enforced."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat

import pytest

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.runtime import capabilities
from services.runtime.cgroups import DeviceAccess, Limits
from services.runtime.cgroups.v1 import V1Manager
from services.runtime.cgroups.v2 import V2Manager
from services.runtime.security import devices, policy, seccomp
from services.runtime.syscalls import PR_SET_NO_NEW_PRIVS, LinuxSyscalls

CID = "d" * 64
NR_MKNODAT = 259  # x86_64
needs_x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")


def test_default_rules_are_dockers():
    access = devices.cgroup_access(False, [])
    assert not access.allow_all
    for rule in ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                 "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm"):
        assert rule in access.rules
    assert not any(r.startswith("a") or r.startswith("b 8") for r in access.rules)


def test_device_rules_come_from_the_host_node():
    st = os.stat("/dev/null")
    access = devices.cgroup_access(False, [("/dev/null", "r"), ("/dev/zero", "")])
    assert access.rules[-2:] == (f"c {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} r", "c 1:5 rwm")
    assert devices.cgroup_access(True, [("/dev/null", "r")]) == DeviceAccess(allow_all=True)
    with pytest.raises(devices.DeviceError, match="/dev/berth-gone"):
        devices.cgroup_access(False, [("/dev/berth-gone", "rwm")])
    with pytest.raises(devices.DeviceError, match="not a device node"):
        devices.cgroup_rule("/etc/hostname")


def _fake_v1(root, controllers=("memory", "pids", "devices")):
    for c in controllers:
        (root / c).mkdir(parents=True)
        (root / c / "cgroup.procs").write_text("")
    return root


class _Recorder:
    """Stands in for a devices cgroup directory's files: records every write in order."""

    def __init__(self, monkeypatch) -> None:
        self.writes: list[tuple[str, str]] = []
        from services.runtime.cgroups import v1

        def write(path, value):
            self.writes.append((os.path.basename(path), str(value)))
        monkeypatch.setattr(v1, "write", write)


def test_v1_denies_all_then_allows_each_rule(tmp_path, monkeypatch):
    m = V1Manager(_fake_v1(tmp_path), "berth")
    assert m.enforces_devices
    rec = _Recorder(monkeypatch)
    procs = m.create(CID, Limits(devices=DeviceAccess(rules=("c 1:3 rwm", "b 7:0 r"))))
    assert (tmp_path / "devices" / "berth" / CID / "cgroup.procs") in procs  # processes join it, execs too
    assert rec.writes == [("devices.deny", "a"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "b 7:0 r")]
    rec.writes.clear()
    m.apply(CID, Limits(devices=DeviceAccess(rules=("c 1:3 rwm",))))  # update never narrows a live list
    assert rec.writes == []
    m.create(CID, Limits(devices=DeviceAccess(allow_all=True)))
    assert rec.writes == [("devices.allow", "a")]
    rec.writes.clear()
    m.create(CID, Limits())  # None: inherit the parent's
    assert rec.writes == []
    for d in m.dirs(CID):
        d.rmdir()
    m.remove_parent()
    assert not (tmp_path / "devices" / "berth").exists()


def test_v1_without_a_devices_hierarchy_does_not_enforce_and_v2_needs_cgroup_bpf(tmp_path):
    from services.runtime.cgroups import devices_bpf

    assert not V1Manager(_fake_v1(tmp_path / "a", ("memory", "pids")), "berth").enforces_devices
    assert V2Manager(tmp_path / "b", "berth").enforces_devices == devices_bpf.supported()


def test_mknod_profile_is_never_accepted_from_a_request():
    spec = runtime_pb2.ContainerSpec(args=["true"], security=runtime_pb2.Security(seccomp=seccomp.DEFAULT_WITH_MKNOD))
    with pytest.raises(errors.InvalidArgument):
        policy.validate(spec)


def test_mknod_profile_only_changes_mknod():
    base = json.loads(seccomp.default_profile_text())
    opened = json.loads(seccomp.default_with_mknod_text())
    names = {"mknod", "mknodat"}
    assert [r for r in base["syscalls"] if not names & set(r["names"])] == \
        [r for r in opened["syscalls"] if not names & set(r["names"])]
    mknod_rules = [r for r in opened["syscalls"] if names & set(r["names"])]
    assert len(mknod_rules) == 1 and not mknod_rules[0].get("args")


def _mknodat_errno(bpf: bytes, mode: int) -> int:
    """mknodat of a node under a missing directory in a filtered child: EPERM from the filter,
    ENOENT from the kernel when the filter let it through (nothing is ever created)."""
    path = ctypes.create_string_buffer(b"/berth-no-such-dir/node")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            sys_ = LinuxSyscalls()
            sys_.prctl(PR_SET_NO_NEW_PRIVS, 1)
            seccomp.install(sys_, bpf)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            ctypes.set_errno(0)
            rc = libc.syscall(ctypes.c_long(NR_MKNODAT), ctypes.c_long(-100), ctypes.c_void_p(ctypes.addressof(path)),
                              ctypes.c_long(mode), ctypes.c_long(os.makedev(7, 0)))
            os.write(w, str(ctypes.get_errno() if rc == -1 else 0).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data)


@needs_x86_64
def test_the_kernel_sees_mknod_opened_only_in_the_devices_cgroup_profile():
    caps = sorted(capabilities.DEFAULT)
    strict, opened = seccomp.bpf_for(seccomp.DEFAULT, caps), seccomp.bpf_for(seccomp.DEFAULT_WITH_MKNOD, caps)
    assert _mknodat_errno(strict, stat.S_IFBLK | 0o600) == errno.EPERM
    assert _mknodat_errno(strict, stat.S_IFIFO | 0o600) == errno.ENOENT
    assert _mknodat_errno(opened, stat.S_IFBLK | 0o600) == errno.ENOENT
    assert _mknodat_errno(opened, stat.S_IFCHR | 0o600) == errno.ENOENT


def test_bpf_program_assembly():
    from services.runtime.cgroups import devices_bpf

    assert devices_bpf.parse_rule("c 136:* rwm") == (devices_bpf.DEV_CHAR, 136, -1, 7)
    assert devices_bpf.parse_rule("b *:* m") == (devices_bpf.DEV_BLOCK, -1, -1, 1)
    # 6 to read the context, per rule: type test, access test unless rwm, major/minor tests
    # unless wildcards, then "return 1"; finally "return 0". 8 bytes an instruction.
    assert len(devices_bpf.assemble([])) == 8 * 8
    assert len(devices_bpf.assemble(["c 1:3 rwm", "b *:* m"])) == 8 * (8 + 5 + 4)
    with pytest.raises((KeyError, ValueError)):
        devices_bpf.parse_rule("x 1:3 rwm")
