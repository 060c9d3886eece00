"""Durations in compose files: Go-style strings (`1m30s`, `500ms`) or bare numbers of seconds."""

from __future__ import annotations

import re

from cli.timeparse import parse_duration


def parse_duration_ns(value: object) -> int:
    """Nanoseconds of a duration; a bare number is seconds. ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration: {value!r}")
    if isinstance(value, int | float):
        return int(value * 1_000_000_000)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return int(float(text) * 1_000_000_000)
    try:
        return round(parse_duration(text) * 1_000_000_000)
    except ValueError:
        raise ValueError(f"invalid duration: {value!r}") from None
