"""What a container changed: its snapshot's upper dir read as a layer, a diff, a tree.

An overlay upper dir already is a layer in overlayfs's dialect: a deleted file is
a character device 0/0 and a directory that hides everything below it carries
the `trusted.overlay.opaque` xattr. `commit` and the builder need it in the OCI
dialect (`.wh.<name>` and `.wh..wh..opq` entries), `diff` needs it compared with
the image's layers, and `export` needs the merged view, which is computed here
from the directories rather than by mounting: the image service never mounts.

Owners, modes, times, symlinks and hard links are kept as found; uid/gid names
are left empty because the host's /etc/passwd says nothing about the image's.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.image.build.fs import RootView
from services.image.layers import WHITEOUT_OPAQUE, WHITEOUT_PREFIX, is_opaque, is_whiteout

# Overlayfs bookkeeping that must never travel inside a layer.
_OVERLAY_XATTR_PREFIX = "trusted.overlay."
ADDED, MODIFIED, DELETED = "A", "C", "D"


def _walk(root: str, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below `root` as (relative path, lstat), parents before children, sorted."""
    base = os.path.join(root, rel) if rel else root
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return
    for name in names:
        child = f"{rel}/{name}" if rel else name
        st = os.lstat(os.path.join(root, child))
        yield child, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, child)


class _TarWriter:
    """tarfile with entries made from lstat, without host user names, hard links kept."""

    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed by close()
        self._inodes: dict[tuple[int, int], str] = {}

    def add(self, path: str, arcname: str, st: os.stat_result) -> None:
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in self._inodes:
            info.type, info.linkname = tarfile.LNKTYPE, self._inodes[key]
            self.tar.addfile(info)
            return
        if stat.S_ISREG(st.st_mode):
            info.type, info.size = tarfile.REGTYPE, st.st_size
            if st.st_nlink > 1:
                self._inodes[key] = arcname
            with open(path, "rb") as f:
                self.tar.addfile(info, f)
            return
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            return  # sockets have no tar form; Docker skips them too
        xattrs = _xattrs(path)
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        self.tar.addfile(info)

    def add_whiteout(self, arcname: str, st: os.stat_result) -> None:
        info = tarfile.TarInfo(arcname)
        info.mode, info.uid, info.gid, info.mtime = 0o600, 0, 0, int(st.st_mtime)
        self.tar.addfile(info)

    def close(self) -> None:
        self.tar.close()


def _xattrs(path: str) -> dict[str, str]:
    """Extended attributes worth keeping in a layer (file capabilities, mostly)."""
    out: dict[str, str] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name.startswith(_OVERLAY_XATTR_PREFIX):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False).decode("latin-1")
        except OSError:
            continue
    return out


# What the runtime leaves in an upper dir as mount points (Docker keeps these in an
# "init layer" below the container's): empty, they are no change of the container's own.
MOUNT_POINTS = frozenset({"etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "proc", "sys", "dev"})


def is_mount_point(root: str, rel: str, st: os.stat_result) -> bool:
    if rel not in MOUNT_POINTS:
        return False
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    return stat.S_ISDIR(st.st_mode) and not os.listdir(os.path.join(root, rel))


def drop_mount_points(upper: Path) -> None:
    """Remove the runtime's empty mount points from an upper dir no container uses any more
    (a finished RUN step), so the layer dir matches the layer tar written from it."""
    root = str(upper)
    for rel in sorted(MOUNT_POINTS, reverse=True):
        path = os.path.join(root, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if is_mount_point(root, rel, st):
            (os.rmdir if stat.S_ISDIR(st.st_mode) else os.unlink)(path)


def write_layer(upper: Path, out: BinaryIO) -> None:
    """Write `upper` as an OCI layer tar: whiteout devices and opaque dirs translated,
    the runtime's empty mount points left out."""
    w = _TarWriter(out)
    root = str(upper)
    for rel, st in _walk(root):
        if is_mount_point(root, rel, st):
            continue
        path = os.path.join(root, rel)
        parent, _, name = rel.rpartition("/")
        if is_whiteout(st):
            w.add_whiteout(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name, st)
            continue
        w.add(path, rel, st)
        if stat.S_ISDIR(st.st_mode) and is_opaque(path):
            w.add_whiteout(f"{rel}/{WHITEOUT_OPAQUE}", st)
    w.close()


# ---- diff -----------------------------------------------------------------------


@dataclass
class Change:
    kind: str  # A, C or D
    path: str  # absolute, inside the container


def diff(upper: Path, lowerdirs: list[str]) -> list[Change]:
    """`docker diff`: what the upper dir adds, changes and deletes, sorted by path."""
    lower = RootView(lowerdirs)
    out: list[Change] = []
    root = str(upper)
    hidden: list[str] = []  # opaque dirs: their children are new even if the name existed below
    skipped: list[str] = []
    for rel, st in _walk(root):
        if is_whiteout(st):
            out.append(Change(DELETED, "/" + rel))
            continue
        if is_mount_point(root, rel, st):
            skipped.append("/" + rel)
            continue
        under_opaque = any(rel.startswith(h + "/") for h in hidden)
        existed = not under_opaque and lower.lookup(rel) is not None
        out.append(Change(MODIFIED if existed else ADDED, "/" + rel))
        if stat.S_ISDIR(st.st_mode) and is_opaque(os.path.join(root, rel)):
            hidden.append(rel)
    # A directory copied up only to hold a mount point (/etc for /etc/hosts) changed nothing.
    return [c for c in out if not (c.kind == MODIFIED and any(p.startswith(c.path + "/") for p in skipped)
                                   and not any(o.path.startswith(c.path + "/") for o in out))]


# ---- export ---------------------------------------------------------------------


def write_merged(layers: list[str], out: BinaryIO) -> None:
    """Write the union of `layers` (topmost first, the upper dir included) as one tar,
    by overlayfs's rules (services/image/build/fs.py's RootView applies them)."""
    w = _TarWriter(out)
    view = RootView(layers)

    def walk(rel: str) -> None:
        children = view.children(rel)
        for name in sorted(children):
            entry = children[name]
            child = f"{rel}/{name}" if rel else name
            w.add(entry.path, child, entry.st)
            if stat.S_ISDIR(entry.st.st_mode):
                walk(child)

    walk("")
    w.close()
