"""User namespaces (`--userns=auto`): a private uid/gid range per container, idmapped mounts.

Container root becomes an unprivileged host uid: the runtime gives each such container
its own 65536-id range (recorded in its DB row, so ranges survive restarts and are
reused once the container is removed), ranges listed in /etc/subuid and /etc/subgid
are skipped.

The supervisor makes a user namespace with that mapping before forking (``make_userns``:
a throwaway child unshares, the supervisor writes its uid_map/gid_map, keeps a handle to
the namespace). The container's init builds the root filesystem as real root, with the
image's layers seen through an *idmapped mount* of the overlay (``idmap``: open_tree,
mount_setattr(MOUNT_ATTR_IDMAP), move_mount), so files owned by 0 in the image are owned
by root inside; then it joins the namespace with setns just before dropping privileges.
Bind mounts are not idmapped: what container root creates there is owned, on the host,
by the first uid of its range. Named volumes are idmapped like the root filesystem.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from pathlib import Path

from services.runtime.syscalls import _CAPGET_NR, _CAPSET_NR, Syscalls

CLONE_NEWUSER = 0x10000000
SIZE = 65536
MAX_ID = 2**32 - 2
DEFAULT_FIRST = 100000

# New mount API (numbers shared by all architectures but alpha).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x100000
MNT_DETACH = 2
_CAP_V3 = 0x20080522

# Sysctls of the container's own network namespace that let container root do what
# root in Docker's default containers does (bind low ports, ping) although that
# namespace belongs to the host's user namespace.
NET_SYSCTLS = {"net/ipv4/ip_unprivileged_port_start": "0", "net/ipv4/ping_group_range": "0 2147483647"}


class UsernsError(Exception):
    """A user namespace or an idmapped mount could not be set up; the message says which."""


def first_id(env: dict[str, str] | None = None) -> int:
    """Where allocation starts: BERTH_USERNS_BASE, else 100000."""
    raw = (env if env is not None else os.environ).get("BERTH_USERNS_BASE", "")
    try:
        return max(1, int(raw)) if raw else DEFAULT_FIRST
    except ValueError:
        return DEFAULT_FIRST


def default_mode(env: dict[str, str] | None = None) -> str:
    """The daemon-wide default for containers that do not say (``userns_remap``-like):
    BERTH_USERNS_DEFAULT=auto puts every container in its own user namespace."""
    value = (env if env is not None else os.environ).get("BERTH_USERNS_DEFAULT", "").strip()
    return "auto" if value == "auto" else ""


def reserved_ranges(files: tuple[str, ...] = ("/etc/subuid", "/etc/subgid")) -> list[tuple[int, int]]:
    """(start, count) of every subordinate id range the host gave its users."""
    out = []
    for name in files:
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines():
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    out.append((int(parts[1]), int(parts[2])))
    return out


def allocate(used: set[int], first: int, size: int = SIZE,
             reserved: list[tuple[int, int]] | None = None) -> int:
    """The lowest free range start ``first + n*size`` overlapping neither a used range nor a reserved one."""
    reserved = reserved or []
    base = first
    while base + size - 1 <= MAX_ID:
        clash = base in used or any(base < start + count and start < base + size for start, count in reserved)
        if not clash:
            return base
        base += size
    raise UsernsError("no free user namespace range left")


def uid_map(base: int, size: int = SIZE) -> str:
    return f"0 {base} {size}"


# ---- kernel side ------------------------------------------------------------------------
@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def make_userns(sys: Syscalls, base: int, size: int = SIZE) -> int:
    """An fd of a new user namespace mapping 0..size-1 to base..base+size-1 (uids and gids).

    Runs in the supervisor: a child unshares and waits while we write its maps (as
    root of the parent namespace), then we keep a handle to its namespace and let it go.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            sys.unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise UsernsError("cannot create a user namespace (unshare failed)")
        mapping = uid_map(base, size).encode()
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY)
            try:
                os.write(fd, mapping)
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsernsError(f"cannot set up the user namespace {uid_map(base, size)!r}: {exc}") from exc
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def idmap(path: str, userns_fd: int, tree: bool = False, replace: bool = True) -> None:
    """Put an idmapped clone of ``path`` (ids seen through ``userns_fd``) at ``path``.

    On-disk owner 0 then shows as the namespace's root; what the namespace's root creates
    is stored as 0. With ``replace`` the mount at ``path`` goes (else the clone is stacked
    on the directory, which need not be a mount point); with ``tree`` submounts come
    along, cloned but not idmapped. Needs a filesystem with idmapped-mount support
    (ext4, xfs, btrfs, tmpfs 6.3+); overlayfs itself has none, so its layers are idmapped.
    """
    libc = _libc()
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if tree else 0)
    try:
        fd = _check(libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD),
                                 ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint(flags)), "open_tree")
    except OSError as exc:
        raise UsernsError(f"idmapped mounts are not supported here ({path}): {exc.strerror}") from exc
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        try:
            _check(libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), ctypes.c_char_p(b""),
                                ctypes.c_uint(AT_EMPTY_PATH), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
                   "mount_setattr")
        except OSError as exc:
            raise UsernsError(f"cannot make an idmapped mount of {path} "
                              f"(filesystem or kernel without idmap support?): {exc.strerror}") from exc
        if replace:
            _check(libc.umount2(os.fsencode(path), MNT_DETACH), f"umount {path}")
        _check(libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd), ctypes.c_char_p(b""),
                            ctypes.c_int(AT_FDCWD), ctypes.c_char_p(os.fsencode(path)),
                            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), "move_mount")
    finally:
        os.close(fd)


def idmap_layers(lowerdirs: list[str], upperdir: str, workdir: str, userns_fd: int) -> None:
    """Idmapped views of an overlay's layers, stacked on their own paths (in our mount namespace).

    The upper and work dirs must share a mount, so their common parent is mapped once.
    """
    dirs = list(dict.fromkeys(lowerdirs))
    if upperdir:
        dirs.append(os.path.commonpath([upperdir, workdir]) if workdir else upperdir)
    for d in dirs:
        idmap(d, userns_fd, replace=False)


def act_as(uid: int, gid: int) -> None:
    """File system ids ``uid``/``gid`` with every capability kept effective.

    The overlay is mounted and the root filesystem built this way, so the overlay's
    creator (whose credentials it uses on its layers) and every file made there are
    ids the idmapped layers can store (0 inside is ``uid`` on the host). setfsuid drops
    the file capabilities from the effective set; capset raises them again.
    """
    os.setgroups([])  # only gid; host root's supplementary groups mean nothing on the idmapped layers
    libc = _libc()
    libc.setfsgid(gid)
    libc.setfsuid(uid)
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}
    _check(libc.syscall(ctypes.c_long(_CAPGET_NR[platform.machine()]), header, data), "capget")
    data[0], data[3] = data[1], data[4]
    _check(libc.syscall(ctypes.c_long(_CAPSET_NR[platform.machine()]), header, data), "capset")


def set_net_sysctls(proc: str) -> None:
    """Write NET_SYSCTLS under ``proc``/sys (the container's own netns; before /proc/sys goes read-only)."""
    for key, value in NET_SYSCTLS.items():
        with contextlib.suppress(OSError), open(os.path.join(proc, "sys", key), "w") as f:
            f.write(value)


def chown_tree(path: str, uid: int, gid: int) -> None:
    """Hand a directory the container made as real root (its /dev) to the container's root."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), uid, gid)
    with contextlib.suppress(OSError):
        os.lchown(path, uid, gid)


def foreign_userns_fd(pid: int) -> int:
    """An fd of ``pid``'s user namespace if it is not ours (a container with --userns), else -1."""
    theirs = f"/proc/{pid}/ns/user"
    if os.stat(theirs).st_ino == os.stat("/proc/self/ns/user").st_ino:
        return -1
    return os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)


def join(sys: Syscalls, userns_fd: int) -> None:
    """Enter the container's user namespace and become its root (uid/gid 0 there)."""
    sys.setns(userns_fd, CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def userns_uid_map(base: int) -> str:
    """Container.userns_uid_map: "0 <base> 65536", or "" without a user namespace."""
    return uid_map(base) if base else ""


def claim_empty_dir(path: str, base: int) -> None:
    """An empty directory owned by host root (a new volume) becomes container root's."""
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_uid == 0 and not os.listdir(path):
            os.chown(path, base, base)
