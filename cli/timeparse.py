"""Docker's time arguments (--since, --until): RFC 3339, unix seconds, or a duration ago."""

from __future__ import annotations

import datetime
import re
import time

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration subset: '10s', '1m30s', '1.5h' -> seconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def parse_time(text: str, now: float | None = None) -> int:
    """A point in time as unix nanoseconds; ValueError if it is none of Docker's forms."""
    text = text.strip()
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        secs, _, frac = text.partition(".")
        return int(secs) * 1_000_000_000 + int((frac + "000000000")[:9])
    try:
        return int((now - parse_duration(text)) * 1_000_000_000)
    except ValueError:
        pass
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2})?)(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?", text)
    if not m:
        raise ValueError(f"invalid time: {text!r}")
    clock = m.group(2) or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    tz = m.group(4)
    stamp = datetime.datetime.fromisoformat(f"{m.group(1)}T{clock}" + ("+00:00" if tz in (None, "Z") else tz))
    frac = (m.group(3) or ".")[1:]
    return int(stamp.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9])
