"""Go-style durations (`1m30s`, `500ms`, `10s`), as compose files write intervals and grace periods."""

from __future__ import annotations

import re

UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
         "h": 3_600_000_000_000}
PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_duration_ns(value: object) -> int:
    """Nanoseconds of a duration string; a bare number is seconds. ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration: {value!r}")
    if isinstance(value, int | float):
        return int(value * 1_000_000_000)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return int(float(text) * 1_000_000_000)
    pos, total = 0, 0.0
    for m in PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration: {value!r}")
    return int(total)
