"""Readers that let one pass over a byte stream hash, store and decompress it.

Layers are large: reading them once (receive → hash → store → decompress → hash →
untar) is what keeps import, load and pull fast, and never needs the whole
layer in memory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol

import grpc

from services.common.errors import InvalidArgument

CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class ChunkStream(io.RawIOBase):
    """A file object over an iterator of byte chunks (a gRPC client stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buf and not self._done:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                self._done = True
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def buffered(raw: io.RawIOBase) -> io.BufferedReader:
    return io.BufferedReader(raw, CHUNK)


class HashingReader:
    """Hash (and optionally copy to `sink`) everything read through it."""

    def __init__(self, src: Readable, sink: Callable[[bytes], object] | None = None) -> None:
        self._src = src
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._hash.update(data)
            self.size += len(data)
            if self._sink is not None:
                self._sink(data)
        return data

    def drain(self) -> None:
        """Read to the end, so the digest covers the whole stream (tar padding too)."""
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class Peekable:
    """Give any reader a peek() so the compression can be sniffed without loss."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._src.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._src.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._src.read(n)


class _ZstdReader:
    """Decompress zstd with the `zstd` tool (no stdlib module on 3.11), fed by a thread."""

    def __init__(self, src: Readable, tool: str) -> None:
        self._proc = subprocess.Popen([tool, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        self._feeder = threading.Thread(target=self._feed, args=(src,), daemon=True)
        self._feeder.start()

    def _feed(self, src: Readable) -> None:
        assert self._proc.stdin is not None
        try:
            while data := src.read(CHUNK):
                self._proc.stdin.write(data)
        except (BrokenPipeError, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def read(self, n: int = -1) -> bytes:
        assert self._proc.stdout is not None
        data = self._proc.stdout.read(n)
        if not data:
            self._feeder.join()
            if self._proc.wait() != 0:
                raise EOFError("corrupt or truncated zstd stream")
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._feeder.join(timeout=5)


def compression_of(head: bytes) -> str:
    """Name the compression from the first bytes of a stream ("" for none)."""
    for magic, name in ((GZIP_MAGIC, "gzip"), (ZSTD_MAGIC, "zstd"), (BZIP2_MAGIC, "bzip2"), (XZ_MAGIC, "xz")):
        if head.startswith(magic):
            return name
    return ""


def decompressed(src: Readable) -> tuple[Readable, str]:
    """Wrap `src` so reads return the uncompressed bytes; also name the compression."""
    peekable = src if isinstance(src, Peekable) else Peekable(src)
    kind = compression_of(peekable.peek(6))
    if kind == "gzip":
        return gzip.GzipFile(fileobj=peekable, mode="rb"), "gzip"  # type: ignore[arg-type]
    if kind == "zstd":
        tool = shutil.which("zstd")
        if tool is None:
            raise InvalidArgument("zstd-compressed layers need the `zstd` tool, which is not installed")
        return _ZstdReader(peekable, tool), "zstd"
    if kind == "bzip2":
        return bz2.BZ2File(peekable, "rb"), "bzip2"  # type: ignore[arg-type]
    if kind == "xz":
        return lzma.LZMAFile(peekable, "rb"), "xz"  # type: ignore[arg-type]
    return peekable, ""


def close_quietly(obj: object) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # closing after an error must not mask it
            close()


def copy(src: Readable, dst: BinaryIO) -> int:
    n = 0
    while data := src.read(CHUNK):
        dst.write(data)
        n += len(data)
    return n


_DONE = object()


def run_streaming(work: Callable[[Callable[[Any], None], threading.Event], Any],
                   context: grpc.ServicerContext) -> Iterator[Any]:
    """Run `work(emit, cancel)` in a thread; yield what it emits, then its result (or raise)."""
    events: queue.Queue = queue.Queue(maxsize=1024)
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def emit(item: Any) -> None:
        if not cancel.is_set():
            events.put(item)

    def runner() -> None:
        try:
            outcome["result"] = work(emit, cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the stream
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    context.add_callback(cancel.set)  # the client hung up
    thread = threading.Thread(target=runner, name="image-op", daemon=True)
    thread.start()
    try:
        while (item := events.get()) is not _DONE:
            yield item
    finally:
        if thread.is_alive():
            cancel.set()
            # Drain so the worker never blocks on a full queue while it winds down.
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    events.get(timeout=0.1)
    if "error" in outcome:
        raise outcome["error"]
    yield outcome.get("result")


class ChunkWriter:
    """A file-like sink that hands `emit` chunks of about `size` bytes (gRPC messages),
    and stops the writer with an error once `cancel` is set (the client went away)."""

    def __init__(self, emit: Callable[[bytes], None], cancel: threading.Event, size: int = CHUNK) -> None:
        self.emit = emit
        self.cancel = cancel
        self.size = size
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        if self.cancel.is_set():
            raise InvalidArgument("cancelled: the client went away")
        self.buf += data
        if len(self.buf) >= self.size:
            self.emit(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None and self.buf:
            self.emit(bytes(self.buf))
            self.buf.clear()
