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

from services.image.layers import OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX

# Overlayfs bookkeeping that must never travel inside a layer.
_OVERLAY_XATTR_PREFIX = "trusted.overlay."
ADDED, MODIFIED, DELETED = "A", "C", "D"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


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


def write_layer(upper: Path, out: BinaryIO) -> None:
    """Write `upper` as an OCI layer tar: whiteout devices and opaque dirs translated."""
    w = _TarWriter(out)
    root = str(upper)
    for rel, st in _walk(root):
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


class LowerView:
    """Lookups in an image's layers (overlay lower dirs, topmost first), whiteouts honoured."""

    def __init__(self, lowerdirs: list[str]) -> None:
        self.lowers = lowerdirs

    def exists(self, rel: str) -> bool:
        parts = rel.split("/")
        for lower in self.lowers:
            found = self._lookup(lower, parts)
            if found is not None:
                return found
        return False

    @staticmethod
    def _lookup(lower: str, parts: list[str]) -> bool | None:
        """True: present here; False: hidden here (whiteout or opaque parent); None: look lower."""
        path = lower
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if is_whiteout(st):
                return False
            if i < len(parts) - 1:
                if not stat.S_ISDIR(st.st_mode):
                    return False  # a file here shadows a directory below
                if is_opaque(path):
                    # Nothing below this directory shows through; only this layer counts.
                    rest = os.path.join(path, *parts[i + 1:])
                    return os.path.lexists(rest) and not is_whiteout(os.lstat(rest))
        return True


@dataclass
class Change:
    kind: str  # A, C or D
    path: str  # absolute, inside the container


def diff(upper: Path, lowerdirs: list[str]) -> list[Change]:
    """`docker diff`: what the upper dir adds, changes and deletes, sorted by path."""
    lower = LowerView(lowerdirs)
    out: list[Change] = []
    root = str(upper)
    hidden: list[str] = []  # opaque dirs: their children are new even if the name existed below
    for rel, st in _walk(root):
        if is_whiteout(st):
            out.append(Change(DELETED, "/" + rel))
            continue
        under_opaque = any(rel.startswith(h + "/") for h in hidden)
        existed = not under_opaque and lower.exists(rel)
        out.append(Change(MODIFIED if existed else ADDED, "/" + rel))
        if stat.S_ISDIR(st.st_mode) and is_opaque(os.path.join(root, rel)):
            hidden.append(rel)
    return out


# ---- export ---------------------------------------------------------------------


def write_merged(layers: list[str], out: BinaryIO) -> None:
    """Write the union of `layers` (topmost first, the upper dir included) as one tar.

    The same rules overlayfs applies when it mounts them: the topmost entry of a
    name wins, whiteouts hide a name, a non-directory hides everything below it,
    and an opaque directory hides the directories of the same name below it.
    """
    w = _TarWriter(out)
    _merge_dir(w, layers, "")
    w.close()


def _merge_dir(w: _TarWriter, layers: list[str], rel: str) -> None:
    """Emit the children of directory `rel`, as seen through `layers` (topmost first)."""
    chosen: dict[str, tuple[str, os.stat_result]] = {}
    dir_layers: dict[str, list[str]] = {}
    hidden: set[str] = set()
    for layer in layers:
        base = os.path.join(layer, rel) if rel else layer
        try:
            names = os.listdir(base)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            if name in hidden:
                continue
            path = os.path.join(base, name)
            st = os.lstat(path)
            if is_whiteout(st):
                hidden.add(name)
                continue
            if name not in chosen:
                chosen[name] = (path, st)
                if stat.S_ISDIR(st.st_mode):
                    dir_layers[name] = [layer]
                    if is_opaque(path):
                        hidden.add(name)  # no lower directory of this name contributes
                else:
                    hidden.add(name)
            elif stat.S_ISDIR(st.st_mode) and name in dir_layers:
                dir_layers[name].append(layer)
                if is_opaque(path):
                    hidden.add(name)
            else:
                hidden.add(name)  # a file below a directory of the same name: hidden
    for name in sorted(chosen):
        path, st = chosen[name]
        child = f"{rel}/{name}" if rel else name
        w.add(path, child, st)
        if name in dir_layers:
            _merge_dir(w, dir_layers[name], child)
