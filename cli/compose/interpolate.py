"""Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a literal `$`.

Values come from the process environment over the `.env` file next to the compose file;
defaults may themselves hold variables (`${A:-${B}}`), so they are interpolated in turn.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from cli.compose.errors import ComposeError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` that closes the `${` whose body starts at `start` (nesting allowed)."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unset_warning(name: str) -> None:
    sys.stderr.write(f'WARN: The "{name}" variable is not set. Defaulting to a blank string.\n')


def interpolate(text: str, env: Mapping[str, str], where: str = "",
                warn: Callable[[str], None] = _unset_warning) -> str:
    """Substitute variables in one string; an unset variable without a default is "" (and a warning)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            if end < 0:
                raise ComposeError(f"invalid interpolation format for {where or 'value'}: {text!r}: missing '}}'")
            out.append(_expand(text[i + 2:end], env, where, text, warn))
            i = end + 1
        else:
            m = NAME.match(text, i + 1)
            if not m:
                out.append("$")  # a lone `$` is kept, as compose does
                i += 1
                continue
            value = env.get(m.group())
            if value is None:
                warn(m.group())
            out.append(value or "")
            i = m.end()
    return "".join(out)


def _expand(body: str, env: Mapping[str, str], where: str, text: str, warn: Callable[[str], None]) -> str:
    m = NAME.match(body)
    if not m:
        raise ComposeError(f"invalid interpolation format for {where or 'value'}: {text!r}")
    name, rest = m.group(), body[m.end():]
    value = env.get(name)
    if not rest:
        if value is None:
            warn(name)
        return value or ""
    for op in (":-", "-", ":?", "?", ":+", "+"):
        if rest.startswith(op):
            arg = rest[len(op):]
            break
    else:
        raise ComposeError(f"invalid interpolation format for {where or 'value'}: {text!r}")
    missing = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env, where, warn) if missing else value or ""
    if op in (":+", "+"):
        return "" if missing else interpolate(arg, env, where, warn)
    if missing:  # :? and ?
        message = interpolate(arg, env, where, warn) or f"variable {name} is not set"
        raise ComposeError(f"required variable {name} is missing a value: {message}")
    return value or ""


def interpolate_tree(node: Any, env: Mapping[str, str], path: str = "",
                     warn: Callable[[str], None] = _unset_warning) -> Any:
    """Interpolate every string value (not key) of a parsed YAML document."""
    if isinstance(node, str):
        return interpolate(node, env, path, warn)
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, f"{path}.{k}" if path else str(k), warn) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, f"{path}[{i}]", warn) for i, v in enumerate(node)]
    return node
