"""An image's root file system seen through its layer dirs, and writes into a snapshot's upper dir.

The image service never mounts (services/image/changes.py), so COPY, ADD and
WORKDIR compute what overlayfs would show: the topmost entry of a name wins,
whiteouts (char 0/0) hide it, a non-directory hides what is below it, and an
opaque directory hides the lower directories of its name. Symlinks in a
destination are resolved inside the image's root, never on the host. Writes go
into the upper dir exactly as overlayfs would have left them, so the upper dir
becomes the step's layer unchanged (services/image/changes.write_layer).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from dataclasses import dataclass
from typing import BinaryIO

from services.common.errors import InvalidArgument
from services.image.layers import OPAQUE_XATTR, is_opaque, is_whiteout

MAX_LINKS = 40


@dataclass
class Entry:
    path: str  # on the host, in the layer that provides it
    st: os.stat_result


class RootView:
    """Lookups in `layers` (topmost first); `layers[0]` is the writable upper dir when writable."""

    def __init__(self, layers: list[str], writable: bool = False) -> None:
        self.layers = layers
        self.writable = writable
        # ensure_dir's answers (asked path -> resolved path, a real dir in the upper dir): a COPY
        # of many files asks for the same few parents thousands of times. Forgotten whenever a
        # write replaces a directory or a symlink, the only changes that could alter them.
        self._dirs: dict[str, str] = {}

    @property
    def upper(self) -> str:
        if not self.writable:
            raise InvalidArgument("read-only view")
        return self.layers[0]

    # ---- reading ------------------------------------------------------------

    def lookup(self, rel: str) -> Entry | None:
        """The visible entry at `rel` (no symlinks followed), or None."""
        if not rel:
            return Entry(self.layers[0], os.lstat(self.layers[0]))
        parts = rel.split("/")
        for layer in self.layers:
            found = self._in_layer(layer, parts)
            if found is False:
                return None
            if found is not None:
                return found
        return None

    @staticmethod
    def _in_layer(layer: str, parts: list[str]) -> Entry | bool | None:
        """Entry: found here; False: hidden here; None: look in the next layer down."""
        path = layer
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if is_whiteout(st):
                return False
            if i == len(parts) - 1:
                return Entry(path, st)
            if not stat.S_ISDIR(st.st_mode):
                return False
            if is_opaque(path):
                rest = os.path.join(path, *parts[i + 1:])
                try:
                    rst = os.lstat(rest)
                except (FileNotFoundError, NotADirectoryError):
                    return False
                return False if is_whiteout(rst) else Entry(rest, rst)
        return None

    def children(self, rel: str) -> dict[str, Entry]:
        """The merged listing of directory `rel`."""
        chosen: dict[str, Entry] = {}
        hidden: set[str] = set()
        parts = rel.split("/") if rel else []
        for layer in self.layers:
            base, last, blocked = layer, False, False
            for part in parts:
                base = os.path.join(base, part)
                try:
                    st = os.lstat(base)
                except (FileNotFoundError, NotADirectoryError):
                    base = ""
                    break
                if is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                    blocked = True
                    break
                last = last or is_opaque(base)
            if blocked:
                break
            if not base:
                continue
            for name in os.listdir(base):
                if name in hidden or name in chosen:
                    continue
                path = os.path.join(base, name)
                st = os.lstat(path)
                if is_whiteout(st):
                    hidden.add(name)
                    continue
                chosen[name] = Entry(path, st)
            if last:
                break
        return chosen

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """A path inside the root with every symlink resolved inside the root (relative, no leading /)."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        links = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join([*done, part])
            entry = self.lookup(cand)
            if entry is not None and stat.S_ISLNK(entry.st.st_mode) and (todo or follow_last):
                links += 1
                if links > MAX_LINKS:
                    raise InvalidArgument(f"too many levels of symbolic links: {path}")
                target = os.readlink(entry.path)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            done.append(part)
        return "/".join(done)

    def read_small(self, rel: str, limit: int = 1 << 20) -> bytes | None:
        try:
            entry = self.lookup(self.resolve(rel))
        except InvalidArgument:
            return None
        if entry is None or not stat.S_ISREG(entry.st.st_mode):
            return None
        with open(entry.path, "rb") as f:
            return f.read(limit)

    # ---- writing (into the upper dir) --------------------------------------------

    def _upper_path(self, rel: str) -> str:
        return os.path.join(self.upper, rel)

    def _clear_upper(self, rel: str) -> bool:
        """Remove what the upper dir has at `rel`; True if that was a whiteout."""
        path = self._upper_path(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            return False
        os.unlink(path)
        return is_whiteout(st)

    def ensure_dir(self, rel: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> str:
        """Make `rel` (symlinks resolved) a directory in the merged view; returns the resolved path."""
        asked = rel
        if asked in self._dirs:
            return self._dirs[asked]
        rel = self.resolve(rel)
        done: list[str] = []
        for part in rel.split("/") if rel else []:
            done.append(part)
            cur = "/".join(done)
            upath = self._upper_path(cur)
            entry = self.lookup(cur)
            if entry is not None and not stat.S_ISDIR(entry.st.st_mode):
                raise InvalidArgument(f"/{cur} is not a directory")
            try:
                ust = os.lstat(upath)
            except FileNotFoundError:
                ust = None
            if ust is not None and stat.S_ISDIR(ust.st_mode):
                continue
            was_whiteout = ust is not None and is_whiteout(ust)
            if ust is not None:
                os.unlink(upath)
            if entry is not None:  # a lower directory: copy its metadata up, as overlayfs does
                os.mkdir(upath)
                os.chown(upath, entry.st.st_uid, entry.st.st_gid)
                os.chmod(upath, stat.S_IMODE(entry.st.st_mode))
                os.utime(upath, ns=(entry.st.st_atime_ns, entry.st.st_mtime_ns))
            else:
                os.mkdir(upath)
                os.chown(upath, uid, gid)
                os.chmod(upath, mode)
                if was_whiteout:
                    os.setxattr(upath, OPAQUE_XATTR, b"y")
        self._dirs[asked] = rel
        return rel

    def _prepare_target(self, rel: str, is_dir: bool) -> tuple[str, bool]:
        """Parent made a directory; old upper content at `rel` removed. (upper path, needs opaque)."""
        parent, _, name = rel.rpartition("/")
        if not name:
            raise InvalidArgument("cannot replace the root directory")
        parent = self.ensure_dir(parent) if parent else ""
        rel = f"{parent}/{name}" if parent else name
        entry = self.lookup(rel)
        if is_dir and entry is not None and stat.S_ISDIR(entry.st.st_mode):
            return self._upper_path(rel), False  # merge into the existing directory
        if entry is not None and (stat.S_ISDIR(entry.st.st_mode) or stat.S_ISLNK(entry.st.st_mode)):
            self._dirs.clear()  # a directory or symlink goes: paths through it may resolve anew
        was_whiteout = self._clear_upper(rel)
        lower_dir_below = entry is None and was_whiteout
        return self._upper_path(rel), is_dir and lower_dir_below

    def put_dir(self, rel: str, uid: int, gid: int, mode: int, mtime_ns: int | None = None) -> None:
        path, opaque = self._prepare_target(rel, True)
        if not os.path.isdir(path) or os.path.islink(path):
            if os.path.lexists(path):
                os.unlink(path)
            os.mkdir(path)
            if opaque:
                os.setxattr(path, OPAQUE_XATTR, b"y")
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def put_file(self, rel: str, src: str, uid: int, gid: int, mode: int, mtime_ns: int) -> None:
        with open(src, "rb") as fin:
            self.put_stream(rel, fin, uid, gid, mode, mtime_ns)

    def link_file(self, rel: str, src: str, uid: int, gid: int, mode: int, mtime_ns: int) -> None:
        """Hard-link a private file (a build context's, used once) instead of copying its bytes:
        creating files dominates a large COPY, and a link is several times cheaper."""
        path, _ = self._prepare_target(rel, False)
        os.link(src, path)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def put_stream(self, rel: str, fin: BinaryIO, uid: int, gid: int, mode: int, mtime_ns: int) -> None:
        path, _ = self._prepare_target(rel, False)
        with open(path, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))

    def put_symlink(self, rel: str, target: str, uid: int, gid: int, mtime_ns: int) -> None:
        path, _ = self._prepare_target(rel, False)
        os.symlink(target, path)
        os.lchown(path, uid, gid)
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def put_special(self, rel: str, st: os.stat_result, uid: int, gid: int) -> None:
        path, _ = self._prepare_target(rel, False)
        if stat.S_ISFIFO(st.st_mode):
            os.mkfifo(path, stat.S_IMODE(st.st_mode))
        else:
            os.mknod(path, st.st_mode, st.st_rdev)
        os.lchown(path, uid, gid)


def clean_rel(path: str) -> str:
    rel = posixpath.normpath("/" + path).lstrip("/")
    return "" if rel == "." else rel
