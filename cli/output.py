"""Docker-shaped output: tables, human sizes and durations, JSON for inspect."""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from typing import Any


def short_id(image_or_container_id: str) -> str:
    return image_or_container_id.removeprefix("sha256:")[:12]


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def ago(unix_seconds: float) -> str:
    if not unix_seconds:
        return ""
    return human_duration(time.time() - unix_seconds) + " ago"


def human_size(size: float) -> str:
    """Docker's units.HumanSizeWithPrecision(size, 3): decimal units."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"


def parse_size(text: str) -> int:
    """'32m', '1g', '512k', '100' (bytes), as Docker's --memory accepts."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", text.lower())
    if not m:
        raise ValueError(f"invalid size: {text!r}")
    factor = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * factor)


def rfc3339(unix_nano: int) -> str:
    if not unix_nano:
        return "0001-01-01T00:00:00Z"
    dt = datetime.datetime.fromtimestamp(unix_nano // 1_000_000_000, datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{unix_nano % 1_000_000_000:09d}Z"


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns padded like Docker's tabwriter (three spaces between columns)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    out = sys.stdout
    for row in [headers, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        out.write("   ".join(cells).rstrip() + "\n")


def dump_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=4) + "\n")


_TEMPLATE = re.compile(r"\{\{\s*(json\s+)?\.([\w.]*)\s*\}\}")


def render_format(template: str, value: Any) -> str:
    """The `{{.A.B}}` and `{{json .A}}` subset of Go templates that scripts use."""

    def lookup(match: re.Match[str]) -> str:
        cur = value
        for part in filter(None, match.group(2).split(".")):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                raise ValueError(f"template: can't evaluate field {part}")
        if match.group(1):
            return json.dumps(cur)
        if isinstance(cur, bool):
            return "true" if cur else "false"
        if cur is None:
            return "<no value>"
        if isinstance(cur, list):
            return "[" + " ".join(map(str, cur)) + "]"
        if isinstance(cur, dict):
            return "map[" + " ".join(f"{k}:{v}" for k, v in cur.items()) + "]"
        return str(cur)

    return _TEMPLATE.sub(lookup, template.replace("\\n", "\n"))


def write_stream(chunks: Any, out: str, what: str) -> None:
    """Write a stream of bytes to `out`, or to stdout when `out` is empty (never a terminal).

    A file is written under a temporary name and renamed at the end, so a failed
    `save` or `export` never leaves a truncated archive under the name asked for.
    """
    import contextlib
    import os
    import tempfile
    from pathlib import Path

    from cli.client import CliError

    if not out:
        if sys.stdout.isatty():
            raise CliError(f"berth: cowardly refusing to {what} to a terminal. Use the -o flag or redirect", 1)
        sink = sys.stdout.buffer
        for data in chunks:
            sink.write(data)
        sink.flush()
        return
    target = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            for data in chunks:
                f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
