"""The container init path against the recording syscall fake."""

from __future__ import annotations

import errno
import os

import pytest

from services.common.mount import Mount
from services.runtime import capabilities, namespaces, rootfs
from services.runtime.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    PR_CAP_AMBIENT,
    PR_CAPBSET_DROP,
    RecordingSyscalls,
)


def mounts(fake: RecordingSyscalls) -> list[tuple]:
    return [c[1:] for c in fake.calls if c[0] == "mount"]


def test_namespaces_are_all_but_user():
    fake = RecordingSyscalls()
    namespaces.enter_new_namespaces(fake)
    flags = fake.calls[0][1]
    for ns in ("NEWNS", "NEWUTS", "NEWIPC", "NEWNET", "NEWCGROUP", "NEWPID"):
        assert flags & getattr(namespaces, "CLONE_" + ns)
    assert not flags & 0x10000000  # CLONE_NEWUSER


def test_overlay_root_is_mounted_after_making_everything_private(tmp_path):
    fake = RecordingSyscalls()
    spec = Mount(type="overlay", lowerdirs=["/l1", "/l2"], upperdir="/u", workdir="/w")
    rootfs.mount_root(fake, spec, str(tmp_path))
    assert mounts(fake) == [
        (None, "/", None, MS_REC | MS_PRIVATE, None),
        ("overlay", str(tmp_path), "overlay", 0, "lowerdir=/l1:/l2,upperdir=/u,workdir=/w"),
    ]


def test_bind_root_read_only(tmp_path):
    fake = RecordingSyscalls()
    rootfs.mount_root(fake, Mount(type="bind", source="/src", options=["ro"]), str(tmp_path))
    assert mounts(fake)[1:] == [("/src", str(tmp_path), None, MS_BIND | MS_REC, None),
                                (None, str(tmp_path), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)]


def test_unknown_root_type_is_refused(tmp_path):
    with pytest.raises(ValueError):
        rootfs.mount_root(RecordingSyscalls(), Mount(type="zfs"), str(tmp_path))


def test_kernel_filesystems_and_dev(tmp_path):
    fake = RecordingSyscalls()
    rootfs.mount_kernel_fs(fake, str(tmp_path))
    m = {(c[2] or c[0]): c for c in mounts(fake)}
    assert m["proc"][1] == str(tmp_path / "proc")
    assert m["sysfs"][3] & MS_RDONLY
    assert "mode=755" in [c for c in mounts(fake) if c[1] == str(tmp_path / "dev")][0][4]
    assert "newinstance" in m["devpts"][4] and "ptmxmode=0666" in m["devpts"][4]
    assert m["mqueue"][1] == str(tmp_path / "dev/mqueue")
    nodes = {os.path.basename(c[1]): c[3] for c in fake.calls if c[0] == "mknod"}
    assert nodes == {"null": os.makedev(1, 3), "zero": os.makedev(1, 5), "full": os.makedev(1, 7),
                     "random": os.makedev(1, 8), "urandom": os.makedev(1, 9), "tty": os.makedev(5, 0)}
    assert os.readlink(tmp_path / "dev/fd") == "/proc/self/fd"
    assert os.readlink(tmp_path / "dev/ptmx") == "pts/ptmx"


def test_bind_files_creates_targets(tmp_path):
    fake = RecordingSyscalls()
    rootfs.bind_files(fake, str(tmp_path), {"/etc/hostname": "/host/hostname"})
    assert (tmp_path / "etc/hostname").exists()
    assert mounts(fake) == [("/host/hostname", str(tmp_path / "etc/hostname"), None, MS_BIND, None)]


def test_pivot_root_then_detach_the_old_root(tmp_path, monkeypatch):
    fake = RecordingSyscalls()
    dirs = []
    monkeypatch.setattr(os, "chdir", dirs.append)
    rootfs.pivot(fake, str(tmp_path))
    assert fake.calls == [("pivot_root", ".", "."), ("umount2", ".", MNT_DETACH)]
    assert dirs == [str(tmp_path), "/"]


def test_masked_and_readonly_paths(tmp_path):
    (tmp_path / "kcore").write_text("")
    (tmp_path / "acpi").mkdir()
    fake = RecordingSyscalls()
    rootfs.mask_paths(fake, [str(tmp_path / "kcore"), str(tmp_path / "acpi"), str(tmp_path / "absent")])
    assert mounts(fake) == [("/dev/null", str(tmp_path / "kcore"), None, MS_BIND, None),
                            ("tmpfs", str(tmp_path / "acpi"), "tmpfs", MS_RDONLY, None)]
    fake = RecordingSyscalls()
    rootfs.readonly_paths(fake, [str(tmp_path / "acpi")])
    p = str(tmp_path / "acpi")
    assert mounts(fake) == [(p, p, None, MS_BIND | MS_REC, None),
                            (p, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, None)]


def test_mount_failure_propagates_with_its_errno(tmp_path):
    fake = RecordingSyscalls(fail={"mount": errno.EPERM})
    with pytest.raises(OSError) as e:
        rootfs.mount_root(fake, Mount(type="overlay", lowerdirs=["/l"]), str(tmp_path))
    assert e.value.errno == errno.EPERM


def test_capabilities_drop_everything_but_dockers_default():
    fake = RecordingSyscalls()
    capabilities.restrict(fake, last=40)
    dropped = [c[2] for c in fake.calls if c[0] == "prctl" and c[1] == PR_CAPBSET_DROP]
    kept = {capabilities.BY_NAME[n] for n in capabilities.DEFAULT}
    assert sorted(dropped + sorted(kept)) == list(range(41))
    assert capabilities.BY_NAME["SYS_ADMIN"] in dropped and capabilities.BY_NAME["NET_ADMIN"] in dropped
    assert ("prctl", PR_CAP_AMBIENT, 4) in fake.calls
    assert fake.names()[-1] == "clear_inheritable_caps"
    assert sum(1 << c for c in kept) == 0xA80425FB  # Docker's CapBnd
