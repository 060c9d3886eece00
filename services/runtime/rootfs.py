"""The container's root filesystem: its mount, /proc, /sys, /dev, masked and read-only paths, pivot_root.

Every function runs inside the container's own mount namespace (after unshare), so all
these mounts vanish with the namespace: nothing is ever mounted on the host.
"""

from __future__ import annotations

import os
import stat

from services.common.mount import Mount
from services.runtime import mounts as container_mounts
from services.runtime.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
    Syscalls,
)

# (name, major, minor), all mode 0666 like Docker's defaults.
DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
DEV_LINKS = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")]

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _join(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def mount_root(sys: Syscalls, spec: Mount, target: str) -> None:
    """Make our mount namespace private, then mount the snapshot at ``target``."""
    sys.mount(None, "/", None, MS_REC | MS_PRIVATE)
    readonly = "ro" in spec.options
    extra = [o for o in spec.options if o not in ("ro", "rw")]
    if spec.type == "overlay":
        if not spec.lowerdirs:
            raise ValueError("overlay rootfs without lowerdirs")
        opts = ["lowerdir=" + ":".join(spec.lowerdirs)]
        if spec.upperdir:
            opts += [f"upperdir={spec.upperdir}", f"workdir={spec.workdir}"]
        sys.mount("overlay", target, "overlay", MS_RDONLY if readonly else 0, ",".join(opts + extra))
    elif spec.type == "bind":
        sys.mount(spec.source, target, None, MS_BIND | MS_REC)
        if readonly:
            sys.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    else:
        raise ValueError(f"unsupported rootfs mount type {spec.type!r}")


def _mkdir(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def mount_kernel_fs(sys: Syscalls, root: str) -> None:
    """/proc (of the new pid namespace), /sys read-only, and a private /dev."""
    _mkdir(_join(root, "proc"))
    sys.mount("proc", _join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mkdir(_join(root, "sys"))
    sys.mount("sysfs", _join(root, "sys"), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    mount_dev(sys, _join(root, "dev"))


def mount_dev(sys: Syscalls, dev: str) -> None:
    _mkdir(dev)
    sys.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        path = os.path.join(dev, name)
        sys.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        if os.path.exists(path):
            os.chmod(path, 0o666)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))
    _mkdir(os.path.join(dev, "pts"))
    sys.mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5")
    _mkdir(os.path.join(dev, "shm"), 0o1777)
    sys.mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    _mkdir(os.path.join(dev, "mqueue"))
    sys.mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def bind_files(sys: Syscalls, root: str, files: dict[str, str]) -> None:
    """Bind host files (hostname, hosts, resolv.conf) onto paths in the container."""
    for inside, host_path in files.items():
        target = _join(root, inside)
        _mkdir(os.path.dirname(target))
        if not os.path.lexists(target):
            with open(target, "w"):
                pass
        sys.mount(host_path, target, None, MS_BIND)


def pivot(sys: Syscalls, root: str) -> None:
    """Make ``root`` the new /, and detach the old root so the host's tree is out of reach."""
    os.chdir(root)
    sys.pivot_root(".", ".")
    sys.umount2(".", MNT_DETACH)
    os.chdir("/")


def mask_paths(sys: Syscalls, paths: list[str] = MASKED_PATHS) -> None:
    """Hide paths after pivot_root: /dev/null over files, an empty read-only tmpfs over dirs."""
    for path in paths:
        if os.path.isdir(path):
            sys.mount("tmpfs", path, "tmpfs", MS_RDONLY)
        elif os.path.exists(path):
            sys.mount("/dev/null", path, None, MS_BIND)


def readonly_paths(sys: Syscalls, paths: list[str] = READONLY_PATHS) -> None:
    for path in paths:
        if os.path.exists(path):
            sys.mount(path, path, None, MS_BIND | MS_REC)
            sys.mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def setup(sys: Syscalls, spec: Mount, root: str, files: dict[str, str], *, mounts: list[dict] | None = None,
          read_only: bool = False, workdir: str = "") -> None:
    """The whole sequence, from a fresh mount namespace to a pivoted, hardened root.

    ``mounts`` (volumes, binds, tmpfs; see services/runtime/mounts.py) go on after the
    generated files and before pivot_root; ``read_only`` remounts / read-only last.
    """
    mount_root(sys, spec, root)
    mount_kernel_fs(sys, root)
    bind_files(sys, root, files)
    if mounts:
        container_mounts.apply(sys, root, mounts)
    if read_only:
        container_mounts.make_workdir(root, workdir)
    pivot(sys, root)
    mask_paths(sys)
    readonly_paths(sys)
    if read_only:
        container_mounts.readonly_root(sys)
