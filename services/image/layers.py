"""Unpacked layers: one directory per chain id, shared by every image using it.

Unpacking is where a hostile image could attack the host, so every entry is
placed relative to the layer root without ever following a symlink: parent
directories are checked with lstat (and created as real directories when
missing), the final component is replaced, never written through, and
hardlinks may only point at entries already inside the layer. OCI whiteouts
become overlayfs whiteouts so the layer dirs can be overlay lowerdirs as-is.

Gzip layers are inflated and hashed (the diff id) on a thread of their own, a
few chunks ahead of the tar parser, with ISA-L's inflate when the `isal`
package is installed (about twice as fast as zlib's), else zlib's; both
release the GIL while they work, so inflating overlaps parsing and the file
system calls. (Writing files from worker threads was measured too: no faster,
since creates in one directory serialize on its lock, and more CPU.)
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import queue
import shutil
import stat
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.image.streams import CHUNK, GZIP_MAGIC, HashingReader, Peekable, Readable, close_quietly, decompressed

try:  # ISA-L inflate: same format and checks as zlib's, about twice the speed
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - depends on the installed packages
    _inflate_lib = zlib  # type: ignore[assignment]

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
TAR_BUFSIZE = 1 << 16
SMALL_FILE = 1 << 20  # read whole and written with one write(2); larger ones are streamed

# Everything a broken or truncated compressed tar can raise while being read.
CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, _inflate_lib.error, gzip.BadGzipFile, lzma.LZMAError,
                  UnicodeError)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False



def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain ids: chain(L0)=diffid(L0), chain(Ln)=sha256(chain(n-1) + " " + diffid(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class UnsafeEntry(InvalidArgument):
    """A tar entry that would write outside the layer or through a symlink."""


def clean_name(name: str) -> str:
    """Make a tar name relative to the layer root; `..` may never climb out of it."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeEntry(f"unsafe path in layer: {name!r} points outside the layer")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


@dataclass
class UnpackResult:
    diff_id: str
    size: int


def _write_file(path: str, data: bytes, info: tarfile.TarInfo) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, info.uid, info.gid)
        os.fchmod(fd, info.mode & 0o7777)  # after chown: chown clears setuid bits
        _xattrs(fd, info)
        os.utime(fd, (info.mtime, info.mtime))
    finally:
        os.close(fd)


def _write_symlink(path: str, info: tarfile.TarInfo) -> None:
    os.symlink(info.linkname, path)
    os.lchown(path, info.uid, info.gid)
    _xattrs(path, info)
    os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)


def _xattrs(target: str | int, info: tarfile.TarInfo) -> None:
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # e.g. security.* on a filesystem without it: not fatal, as in Docker
            with contextlib.suppress(OSError):
                os.setxattr(target, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)


class _Extractor:
    """Places tar entries under `root` without following symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.dirs: set[str] = {""}  # relative paths known to be real directories we may use
        self.dir_times: list[tuple[str, int]] = []
        self.size = 0

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def ensure_dir(self, rel: str) -> None:
        """Make every component of `rel` a real directory, refusing symlinks."""
        if rel in self.dirs:
            return
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):  # iterative: a hostile name may have thousands of parts
            sub = "/".join(parts[:i])
            if sub in self.dirs:
                continue
            path = self._abs(sub)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    raise UnsafeEntry(f"unsafe path in layer: {sub!r} is not a directory (symlinks are not followed)")
            self.dirs.add(sub)

    def _forget(self, rel: str) -> None:
        prefix = rel + "/"
        self.dirs = {d for d in self.dirs if d != rel and not d.startswith(prefix)}

    def _clear(self, rel: str, keep_dir: bool) -> bool:
        """Remove what is at `rel` unless it is a dir we keep; True if a dir stays."""
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(path)
            self._forget(rel)
        else:
            os.unlink(path)
        return False

    def _metadata(self, path: str, info: tarfile.TarInfo, is_link: bool = False) -> None:
        os.lchown(path, info.uid, info.gid)
        if not is_link:
            os.chmod(path, info.mode & 0o7777)  # after chown: chown clears setuid bits
        _xattrs(path, info)

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        rel = clean_name(info.name)
        parent, _, base = rel.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base, info)
            return
        self.ensure_dir(parent)
        path = self._abs(rel)
        if info.isdir():
            if rel and not self._clear(rel, keep_dir=True):
                os.mkdir(path, 0o700)
            self.dirs.add(rel)
            self._metadata(path, info)
            self.dir_times.append((path, int(info.mtime)))
            return
        if not rel:
            raise UnsafeEntry(f"unsafe entry in layer: {info.name!r} replaces the layer root")
        self._clear(rel, keep_dir=False)
        if info.isreg():
            src = tar.extractfile(info)
            assert src is not None
            self.size += info.size
            if info.size <= SMALL_FILE:
                _write_file(path, src.read(), info)
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        elif info.issym():
            _write_symlink(path, info)
            return
        elif info.islnk():
            self._hardlink(rel, info)
            return
        elif info.ischr() or info.isblk():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(info.devmajor, info.devminor))
        elif info.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise InvalidArgument(f"unsupported tar entry type {info.type!r} for {info.name!r}")
        self._metadata(path, info)
        os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)

    def _hardlink(self, rel: str, info: tarfile.TarInfo) -> None:
        target = clean_name(info.linkname)
        tparent, _, tbase = target.rpartition("/")
        if not tbase:
            raise UnsafeEntry(f"unsafe hardlink in layer: {info.name!r} -> {info.linkname!r}")
        self.ensure_dir(tparent)
        tpath = self._abs(target)
        try:
            st = os.lstat(tpath)
        except FileNotFoundError:
            raise UnsafeEntry(f"hardlink {info.name!r} points to {info.linkname!r}, not in the layer") from None
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeEntry(f"hardlink {info.name!r} points to a directory")
        os.link(tpath, self._abs(rel), follow_symlinks=False)

    def _whiteout(self, parent: str, base: str, info: tarfile.TarInfo) -> None:
        """OCI whiteout files become what overlayfs understands natively."""
        self.ensure_dir(parent)
        if base == WHITEOUT_OPAQUE:
            os.setxattr(self._abs(parent), OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk etc.) has no overlay meaning
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise UnsafeEntry(f"invalid whiteout {info.name!r}")
        rel = f"{parent}/{name}" if parent else name
        self._clear(rel, keep_dir=False)
        path = self._abs(rel)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.lchown(path, info.uid, info.gid)

    def finish(self) -> None:
        """Directory times last: creating children would have changed them."""
        for path, mtime in reversed(self.dir_times):
            os.utime(path, (mtime, mtime), follow_symlinks=False)


_END = b""


class _GzipInflater:
    """Inflate (and hash) a gzip stream on a worker thread, a few chunks ahead of the reader.

    Multi-member streams and zero padding after the last member are accepted,
    like gzip(1) and Python's gzip module; a truncated stream, a bad CRC or
    length, or trailing garbage raise in `read`, as a corrupt layer.
    """

    def __init__(self, src: Readable, ahead: int = 16) -> None:
        self._src = src
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._done = False
        self.size = 0
        self._thread = threading.Thread(target=self._run, name="inflate", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            d = _inflate_lib.decompressobj(31)
            started = False  # inside a member
            while not self._stop.is_set():
                data = self._src.read(CHUNK)
                if not data and not started:
                    break
                at_end = not data
                while data or started:
                    if not started:
                        data = data.lstrip(b"\0")  # padding between or after members
                        if not data:
                            break
                        if data[:len(GZIP_MAGIC)] != GZIP_MAGIC[:len(data)]:
                            raise zlib.error("trailing garbage after the gzip stream")
                        d = _inflate_lib.decompressobj(31)
                        started = True
                    # Bounded output (1 MB of a gzip bomb inflates to 1 GB); a full buffer
                    # may leave output pending in the decompressor, so call again until
                    # it returns less than a full buffer.
                    out = d.decompress(data, CHUNK)
                    if out:
                        self._hash.update(out)
                        self.size += len(out)
                        if not self._put(out):
                            return
                    if d.eof:
                        started = False
                        data = d.unused_data
                    elif d.unconsumed_tail or len(out) == CHUNK:
                        data = d.unconsumed_tail
                    else:
                        break  # needs more input
                if at_end:
                    if started:
                        raise EOFError("compressed file ended before the end-of-stream marker was reached")
                    break
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(exc)

    def read(self, n: int = -1) -> bytes:
        while not self._buf:
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if item is _END or not item:
                self._done = True
                self._thread.join()
                return b""
            self._buf = memoryview(item)
        if n is None or n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, memoryview(b"")
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out.tobytes()

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        """Stop the worker (after an error the reader gives up early) and wait for it."""
        self._stop.set()
        self._thread.join()


def _uncompressed(src: Readable) -> tuple[HashingReader | _GzipInflater, object]:
    """The uncompressed, hashing stream over `src`, and what to close afterwards."""
    peekable = src if isinstance(src, Peekable) else Peekable(src)
    if peekable.peek(2) == GZIP_MAGIC:
        inflater = _GzipInflater(peekable)
        return inflater, inflater
    stream, _ = decompressed(peekable)
    return HashingReader(stream), stream


class LayerTooLarge(InvalidArgument):
    """More uncompressed bytes than `max_layer_size` allows: a gzip bomb, or just too big."""


class _Capped:
    """Count what is read from the uncompressed stream; past `limit` bytes, stop the unpack."""

    def __init__(self, src: Readable, limit: int) -> None:
        self.src = src
        self.limit = limit
        self.seen = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.seen += len(data)
        if self.seen > self.limit:
            raise LayerTooLarge(f"layer exceeds the size cap of {self.limit} bytes uncompressed "
                                "(max_layer_size in the configuration)")
        return data


def unpack(src: Readable, dest: Path | None, max_size: int = 0) -> UnpackResult:
    """Decompress, hash and (unless `dest` is None) extract a layer tar.

    The diff id covers the whole uncompressed stream, tar padding included, so
    it matches what `sha256sum` of the uncompressed tar prints. With `max_size`,
    more uncompressed bytes than that abort the unpack (a gzip bomb stops early).
    """
    hashed, stream = _uncompressed(src)
    reader: Readable = _Capped(hashed, max_size) if max_size > 0 else hashed
    try:
        if dest is None:
            while reader.read(CHUNK):
                pass
            return UnpackResult(hashed.digest, 0)
        ex = _Extractor(dest)
        with tarfile.open(fileobj=reader, mode="r|", bufsize=TAR_BUFSIZE) as tar:  # type: ignore[call-overload]
            for info in tar:
                try:
                    ex.add(tar, info)
                except OSError as exc:
                    if exc.errno == errno.ENAMETOOLONG:
                        raise InvalidArgument(f"invalid layer tar: name too long: {info.name[:80]}…") from None
                    raise
        ex.finish()
        while reader.read(CHUNK):
            pass
        return UnpackResult(hashed.digest, ex.size)
    except CORRUPT_ERRORS as exc:
        raise InvalidArgument(f"invalid layer tar: {exc}") from None
    finally:
        close_quietly(stream)


def remove_tree(path: Path) -> None:
    """rmtree that also copes with overlay work dirs (mode 000) and plain files."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class StagedLayer:
    """A layer unpacked into scratch space, not yet visible under `layers/`."""

    tmp: Path
    diff_id: str
    size: int


class LayerStore:
    """Unpacked layers under `<root>/<chain-hex>/`; staging dirs live in `scratch`."""

    def __init__(self, root: Path, scratch: Path, max_layer_size: int = 0) -> None:
        self.root = root
        self.scratch = scratch
        self.max_layer_size = max_layer_size  # uncompressed bytes; 0: no cap
        root.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)

    def path(self, chain_id: str) -> Path:
        return self.root / chain_id.split(":", 1)[1]

    def exists(self, chain_id: str) -> bool:
        return self.path(chain_id).is_dir()

    def stage(self, src: Readable) -> StagedLayer:
        """Unpack into a fresh scratch dir; on any error nothing stays behind."""
        tmp = Path(tempfile.mkdtemp(prefix="layer-", dir=self.scratch))
        try:
            os.chmod(tmp, 0o755)  # a tar without a "./" entry still gives a usable root
            result = unpack(src, tmp, self.max_layer_size)
        except BaseException:
            remove_tree(tmp)
            raise
        return StagedLayer(tmp, result.diff_id, result.size)

    def commit(self, staged: StagedLayer, chain_id: str) -> None:
        """Publish by rename; if another writer won the race, keep theirs."""
        dest = self.path(chain_id)
        if dest.exists():
            remove_tree(staged.tmp)
            return
        os.rename(staged.tmp, dest)

    def discard(self, staged: StagedLayer) -> None:
        remove_tree(staged.tmp)

    def delete(self, chain_id: str) -> None:
        """Move out of sight first (one rename), then delete at leisure."""
        dest = self.path(chain_id)
        if not dest.exists():
            return
        trash = Path(tempfile.mkdtemp(prefix="gc-", dir=self.scratch))
        os.rename(dest, trash / "layer")
        remove_tree(trash)

    def chain_ids(self) -> list[str]:
        return ["sha256:" + e.name for e in os.scandir(self.root) if e.is_dir() and len(e.name) == 64]
