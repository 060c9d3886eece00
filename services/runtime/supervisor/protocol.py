"""The supervisor's wire protocol: JSON objects, one per line, over a unix socket.

Requests carry ``op``; replies carry ``ok`` (and ``error`` when false); events pushed
to subscribers carry ``ev``: ``out`` (id, stream 1|2, data base64, time ns) and
``exit`` (id, pid, exit_code, finished_at ns).
"""

from __future__ import annotations

import json


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    return json.loads(line)


class LineBuffer:
    """Accumulates bytes and yields complete lines."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        if b"\n" not in self.buf:
            return []
        *lines, self.buf = self.buf.split(b"\n")
        return [line for line in lines if line]
