"""`.env` and `env_file` files: KEY=VALUE lines, `#` comments, optional `export `, quotes.

Single quotes keep the text as is; double quotes understand \\n, \\t, \\" and \\\\; an
unquoted value ends at ` #` (an inline comment) and is stripped. A bare `KEY` line takes
KEY from the environment, or is skipped when it is not set there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from cli.compose.errors import ComposeError

LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=(.*))?$")
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def _unquote(raw: str, path: Path, lineno: int) -> str:
    raw = raw.strip()
    if raw[:1] == "'":
        end = raw.find("'", 1)
        if end < 0:
            raise ComposeError(f"{path}: line {lineno}: unterminated single quote")
        return raw[1:end]
    if raw[:1] == '"':
        out, i = [], 1
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                out.append(ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
                continue
            if ch == '"':
                return "".join(out)
            out.append(ch)
            i += 1
        raise ComposeError(f"{path}: line {lineno}: unterminated double quote")
    value = re.split(r"\s#", raw, maxsplit=1)[0]
    return value.strip()


def parse_env_text(text: str, path: Path, lookup: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse the text of an env file (path only names it in errors)."""
    env: dict[str, str] = {}
    lookup = os.environ if lookup is None else lookup
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            raise ComposeError(f"{path}: line {lineno}: unexpected character in variable name: {line.strip()!r}")
        key, raw = m.group(1), m.group(2)
        if raw is None:
            if key in lookup:
                env[key] = lookup[key]
            continue
        env[key] = _unquote(raw, path, lineno)
    return env


def read_env_file(path: Path, required: bool = True, lookup: Mapping[str, str] | None = None) -> dict[str, str]:
    """An env file's variables; a missing optional file is empty, a missing required one an error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ComposeError(f"env file {path} not found: stat {path}: no such file or directory") from None
        return {}
    except OSError as err:
        raise ComposeError(f"env file {path}: {err.strerror}") from None
    return parse_env_text(text, path, lookup)
