"""Docker's json-file log format: one JSON object per line, written by the supervisor.

``{"log": "hi\\n", "stream": "stdout", "time": "2024-05-01T12:00:00.123456789Z"}``
"""

from __future__ import annotations

import calendar
import json
import os
import time
from collections.abc import Iterator
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

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self.partial = {s: b"" for s in STREAMS}

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
            os.write(self.fd, b"".join(out))

    def flush(self) -> None:
        now = time.time_ns()
        out = [self._entry(self.partial[s], s, now) for s in STREAMS if self.partial[s]]
        self.partial = {s: b"" for s in STREAMS}
        if out:
            os.write(self.fd, b"".join(out))

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


def _tail_lines(f, n: int, block: int = 64 * 1024) -> list[bytes]:  # noqa: ANN001
    """The last n lines of a file, reading backwards in blocks (never the whole file)."""
    f.seek(0, os.SEEK_END)
    pos = f.tell()
    data = b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines[-n:] if n else []


def read(path: str, tail: int = -1) -> Iterator[Entry]:
    """Entries of a json-file log, all of them or the last ``tail``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        lines = f if tail < 0 else iter(_tail_lines(f, tail))
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            try:
                ts = parse_rfc3339nano(obj.get("time", ""))
            except ValueError:
                ts = 0
            yield Entry(obj.get("stream", "stdout"), obj.get("log", "").encode(), ts)
