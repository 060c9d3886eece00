"""Docker's json-file log format: one JSON object per line, written by the supervisor.

``{"log": "hi\\n", "stream": "stdout", "time": "2024-05-01T12:00:00.123456789Z"}``

Files rotate (``<path>.1`` is the newest rotated one, up to ``max_files - 1`` of them)
so a chatty container cannot fill the disk. Readers never scan a whole file: ``tail``
reads backwards from the end and ``since`` bisects on the (ordered) timestamps.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_LINE = 16 * 1024  # like Docker, a partial line is written once it grows this long
STREAMS = ("stdout", "stderr")


def rfc3339nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_rfc3339nano(text: str) -> int:
    """'2024-05-01T12:00:00.123456789Z' -> unix nanoseconds (UTC only, as we write it)."""
    text = text.rstrip("Z")
    base, _, frac = text.partition(".")
    secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])


class LogWriter:
    """Appends lines for one container; partial lines wait for their newline (or flush)."""

    def __init__(self, path: str, max_size: int = 0, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size
        self.partial = {s: b"" for s in STREAMS}
        self.dropped = 0  # bytes of log lost to a full disk

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def _append(self, entries: list[bytes]) -> None:
        """Write whole lines; rotate before a line that would take the file past max_size."""
        batch: list[bytes] = []
        batch_size = 0
        for entry in entries:
            if self.max_size > 0 and self.size + batch_size + len(entry) > self.max_size \
                    and self.size + batch_size > 0:
                if batch:
                    self._write(b"".join(batch))
                    batch, batch_size = [], 0
                self._rotate()
            batch.append(entry)
            batch_size += len(entry)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        """Append whole lines. On a full disk they are dropped, and a half-written line is cut
        off again: the log is truncated, but the supervisor and the container live on."""
        try:
            written = os.write(self.fd, data)
            while written < len(data):  # a short write: the rest fits later or raises ENOSPC
                written += os.write(self.fd, data[written:])
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self.dropped += len(data)
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            return
        self.size += len(data)

    def _rotate(self) -> None:
        """path -> path.1 -> ... -> path.<max_files-1>; the oldest is dropped."""
        os.close(self.fd)
        keep = self.max_files - 1
        if keep == 0:
            os.unlink(self.path)
        else:
            for i in range(keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self.fd = self._open()
        self.size = 0

    def write(self, stream: str, data: bytes, now_ns: int | None = None) -> None:
        now_ns = time.time_ns() if now_ns is None else now_ns
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        out = [self._entry(line + b"\n", stream, now_ns) for line in lines]
        while len(rest) >= MAX_LINE:
            out.append(self._entry(rest[:MAX_LINE], stream, now_ns))
            rest = rest[MAX_LINE:]
        self.partial[stream] = rest
        if out:
            self._append(out)

    def flush(self) -> None:
        now = time.time_ns()
        out = [self._entry(self.partial[s], s, now) for s in STREAMS if self.partial[s]]
        self.partial = {s: b"" for s in STREAMS}
        if out:
            self._append(out)

    def close(self) -> None:
        self.flush()
        os.close(self.fd)

    @staticmethod
    def _entry(data: bytes, stream: str, now_ns: int) -> bytes:
        return (json.dumps({"log": data.decode("utf-8", "replace"), "stream": stream,
                            "time": rfc3339nano(now_ns)}, ensure_ascii=False) + "\n").encode()


@dataclass
class Entry:
    stream: str
    data: bytes
    time_ns: int


def files(path: str) -> list[str]:
    """The log's files, oldest first: path.N ... path.1, path."""
    rotated = []
    i = 1
    while os.path.exists(f"{path}.{i}"):
        rotated.append(f"{path}.{i}")
        i += 1
    return [*reversed(rotated), path]


def _tail_lines(f, n: int, block: int = 64 * 1024, start: int = 0,  # noqa: ANN001
                end: int | None = None) -> list[bytes]:
    """The last n lines of a file in [start, end), reading backwards in blocks."""
    f.seek(0, os.SEEK_END)
    pos = f.tell() if end is None else min(end, f.tell())
    data = b""
    while pos > start and data.count(b"\n") <= n:
        step = min(block, pos - start)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if pos > start and lines:
        lines = lines[1:]  # the first one may be cut
    return lines[-n:] if n else []


_TIME = re.compile(rb'"time":\s*"([^"]+)"')


def _line_time(line: bytes) -> int | None:
    """The timestamp of one json-file line without decoding the whole object (it is the
    last key we write, so search from the end of the line)."""
    key = line.rfind(b'"time"')
    m = _TIME.match(line, key) if key >= 0 else None
    if m is None:
        return None
    try:
        return parse_rfc3339nano(m.group(1).decode())
    except ValueError:
        return None


def _time_at(f, pos: int, size: int) -> tuple[int, int | None]:  # noqa: ANN001
    """(offset of the first whole line at or after pos, its time)."""
    f.seek(pos)
    if pos > 0:
        f.readline()
    start = f.tell()
    if start >= size:
        return start, None
    return start, _line_time(f.readline())


def offset_since(f, since_ns: int) -> int:  # noqa: ANN001
    """Offset of the first line with time >= since_ns, by bisection on offsets: O(log n) reads."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    lo, hi = 0, size
    while hi - lo > 4096:
        mid = (lo + hi) // 2
        start, t = _time_at(f, mid, size)
        if t is None or t >= since_ns:
            hi = mid
        else:
            lo = start
    f.seek(lo)
    if lo > 0:
        f.readline()
    while True:
        here = f.tell()
        line = f.readline()
        if not line:
            return here
        t = _line_time(line)
        if t is not None and t >= since_ns:
            return here


def parse(line: bytes) -> Entry | None:
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    try:
        ts = parse_rfc3339nano(obj.get("time", ""))
    except ValueError:
        ts = 0
    return Entry(obj.get("stream", "stdout"), obj.get("log", "").encode(), ts)


def read(path: str, tail: int = -1, since_ns: int = 0, until_ns: int = 0,
         end: int | None = None) -> Iterator[Entry]:
    """Entries of a json-file log (with its rotated files): all, those in [since, until),
    and of those the last ``tail``; the current file only up to offset ``end`` (where a
    ``follow`` takes over). Both bounds are found by bisection, the tail backwards."""
    chosen: list[tuple[str, int, int | None, list[bytes] | None]] = []  # (file, start, stop, tail lines)
    needed = tail
    for name in reversed(files(path)):  # newest first: stop as soon as tail or since is met
        try:
            f = open(name, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue
        with f:
            stop = end if name == path else None
            if until_ns:
                stop = offset_since(f, until_ns) if stop is None else min(stop, offset_since(f, until_ns))
                if stop == 0:
                    continue  # this whole file is after `until`
            start = offset_since(f, since_ns) if since_ns else 0
            if stop is not None and start >= stop:
                if start > 0:
                    break
                continue
            if tail >= 0:
                lines = _tail_lines(f, needed, start=start, end=stop)
                chosen.append((name, start, stop, lines))
                needed -= len(lines)
                if needed <= 0:
                    break
            else:
                chosen.append((name, start, stop, None))
            if start > 0:
                break  # older files are all before `since`
    for name, start, stop, lines in reversed(chosen):
        if lines is not None:
            yield from _entries(iter(lines), 0)
            continue
        try:
            f = open(name, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue
        with f:
            f.seek(start)
            yield from _entries(f if stop is None else _until_offset(f, stop), 0)


def _until_offset(f, end: int) -> Iterator[bytes]:  # noqa: ANN001
    while f.tell() < end:
        line = f.readline()
        if not line:
            return
        yield line


def _entries(lines: Iterator[bytes], until_ns: int) -> Iterator[Entry]:
    for line in lines:
        entry = parse(line)
        if entry is None:
            continue
        if until_ns and entry.time_ns >= until_ns:
            return
        yield entry


def position(path: str) -> tuple[int, int]:
    """(inode, size) of the current file: where ``read(end=size)`` stops and ``follow`` starts."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0, 0
    return st.st_ino, st.st_size


def follow(path: str, running: Callable[[], bool], start: tuple[int, int] | None = None, poll: float = 0.1,
           is_active: Callable[[], bool] = lambda: True) -> Iterator[Entry]:
    """Entries appended to the log after ``start`` (default: now), across rotations, until
    ``running()`` is false and the file is drained (or the caller goes away)."""
    f = None
    ino = None
    buf = b""
    try:
        while is_active():
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed in finally
                    ino = os.fstat(f.fileno()).st_ino
                    if start is not None and start[0] == ino:
                        f.seek(start[1])
                    elif start is None:
                        f.seek(0, os.SEEK_END)
                except FileNotFoundError:
                    if not running():
                        return
                    time.sleep(poll)
                    continue
            alive = running()  # read *before* draining: output written before the exit is seen
            chunk = f.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    entry = parse(line)
                    if entry is not None:
                        yield entry
                continue
            try:
                rotated = os.stat(path).st_ino != ino
            except FileNotFoundError:
                rotated = True
            if rotated:
                f.close()
                try:
                    f = open(path, "rb")  # noqa: SIM115
                    ino = os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    f = None
                continue
            if not alive:
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
