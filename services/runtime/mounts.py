"""Bind, volume and tmpfs mounts made inside the container's mount namespace, before pivot_root.

These functions run in the container's init (child B of the supervisor), after the
rootfs is mounted and before ``pivot_root``. Every mount lives in the container's own
mount namespace, so none of them is ever visible on the host, and all vanish with it.

Targets are resolved with :func:`secure_join`: a symlink in the image (say
``/data -> /etc`` or ``-> ../../../host``) is followed *inside* the container's root,
never out of it, the way runc's securejoin does; otherwise an image could make Berth
mount a volume over a host path.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from services.runtime.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    Syscalls,
)

MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
PROPAGATION = {
    "": MS_REC | MS_PRIVATE, "rprivate": MS_REC | MS_PRIVATE, "private": MS_PRIVATE,
    "rshared": MS_REC | MS_SHARED, "shared": MS_SHARED, "rslave": MS_REC | MS_SLAVE, "slave": MS_SLAVE,
}
TMPFS_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "ro": MS_RDONLY}
TMPFS_UNFLAGS = {"suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC, "rw": MS_RDONLY}
MAX_SYMLINKS = 40


class MountError(Exception):
    """A mount the container asked for cannot be made; the message names it."""


def secure_join(root: str, path: str) -> str:
    """``path`` inside ``root`` with every symlink resolved as if ``root`` were ``/``.

    ``..`` never climbs above ``root`` and an absolute symlink target restarts at
    ``root``; components that do not exist yet are kept as they are (they will be
    created as directories, which cannot be symlinks).
    """
    root = os.path.abspath(root)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise MountError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _make_target(target: str, is_dir: bool) -> None:
    if os.path.lexists(target):
        return
    if is_dir:
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        with open(target, "a"):
            pass


def seed_volume(image_dir: str, volume_dir: str) -> None:
    """Docker's copy-up: an empty volume gets the image's content at the mount point,
    owners, modes and symlinks included, so e.g. a database image's default files
    and permissions survive being mounted over."""
    if not os.path.isdir(image_dir) or os.path.islink(image_dir) or os.listdir(volume_dir):
        return
    st = os.stat(image_dir)
    os.chown(volume_dir, st.st_uid, st.st_gid)
    os.chmod(volume_dir, stat.S_IMODE(st.st_mode))
    for entry in os.listdir(image_dir):
        src, dst = os.path.join(image_dir, entry), os.path.join(volume_dir, entry)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(image_dir):
        rel = os.path.relpath(dirpath, image_dir)
        for name in dirnames + filenames:
            s = os.lstat(os.path.join(dirpath, name))
            os.lchown(os.path.join(volume_dir, rel, name), s.st_uid, s.st_gid)


def tmpfs_options(m: dict) -> tuple[int, str]:
    """Mount flags and data for a tmpfs: Docker's defaults are nosuid, nodev, noexec."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    data = [f"mode={int(m.get('tmpfs_mode') or 0o1777):o}"]
    if int(m.get("tmpfs_size") or 0):
        data.append(f"size={int(m['tmpfs_size'])}")
    for opt in m.get("tmpfs_options") or []:
        if opt in TMPFS_FLAGS:
            flags |= TMPFS_FLAGS[opt]
        elif opt in TMPFS_UNFLAGS:
            flags &= ~TMPFS_UNFLAGS[opt]
        else:
            data.append(opt)
    if m.get("read_only"):
        flags |= MS_RDONLY
    return flags, ",".join(data)


def apply(sys: Syscalls, root: str, mounts: list[dict]) -> None:
    """Make each mount under ``root`` (the container's future /), in the order given."""
    for m in mounts:
        kind, target = m.get("type", ""), m.get("target", "")
        try:
            dest = secure_join(root, target)
            if kind == "tmpfs":
                _make_target(dest, True)
                flags, data = tmpfs_options(m)
                sys.mount("tmpfs", dest, "tmpfs", flags, data)
                continue
            source = m.get("source", "")
            try:
                st = os.stat(source)
            except FileNotFoundError:
                raise MountError(f"bind source path does not exist: {source}") from None
            if kind == "volume" and m.get("seed"):
                seed_volume(dest, source)
            _make_target(dest, stat.S_ISDIR(st.st_mode))
            sys.mount(source, dest, None, MS_BIND | MS_REC)
            sys.mount(None, dest, None, PROPAGATION.get(m.get("propagation", ""), MS_REC | MS_PRIVATE))
            if m.get("read_only"):
                sys.mount(None, dest, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        except MountError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.EISDIR):
                raise MountError(f"cannot mount {kind} on {target}: not a directory/file mismatch") from exc
            raise MountError(f"cannot mount {kind} on {target}: {exc.strerror or exc}") from exc


def make_workdir(root: str, workdir: str) -> None:
    """Create the working directory before a read-only remount makes that impossible."""
    if workdir and workdir != "/":
        os.makedirs(secure_join(root, workdir), mode=0o755, exist_ok=True)


def readonly_root(sys: Syscalls) -> None:
    """--read-only: remount / read-only after pivot_root (volumes, tmpfs, /dev stay writable)."""
    sys.mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
