""".dockerignore: which context paths the builder never sees.

Docker's rules: one Go `filepath.Match` pattern per line plus `**` for any
number of directories; `#` lines are comments; patterns are cleaned (`./a`,
`/a` and `a/` all mean `a`); a `!` line re-includes what earlier lines
excluded; the last matching line wins; a pattern that matches a directory
excludes everything under it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

_REGEX_SPECIAL = set(".+()|{}$^")


@dataclass
class Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]

    def match(self, path: str) -> bool:
        return self.regex.match(path) is not None


def clean(pattern: str) -> str:
    """Go's filepath.Clean, then a leading slash dropped (patterns are context-relative)."""
    cleaned = posixpath.normpath(pattern) if pattern else "."
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 < n:
                out.append(re.escape(pattern[i + 1]))
                i += 1
            else:
                out.append(r"\\")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"syntax error in pattern {pattern!r}")
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            out.append(f"[{body}]")
            i = end
        elif ch in _REGEX_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
        i += 1
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


def parse(text: str) -> list[Pattern]:
    """The lines of a .dockerignore file as patterns, in order."""
    patterns: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
            if not line:
                raise ValueError("illegal exclusion pattern: \"!\"")
        line = clean(line)
        patterns.append(Pattern(line, exclusion, _compile(line)))
    return patterns


class Matcher:
    """Decides for a context-relative path (slash separated) whether it is excluded."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)

    @classmethod
    def from_text(cls, text: str) -> Matcher:
        return cls(parse(text))

    def excluded(self, path: str) -> bool:
        path = clean(path)
        if path in (".", "/"):
            return False
        parent = posixpath.dirname(path)
        parents = parent.split("/") if parent else []
        matched = False
        for p in self.patterns:
            if p.exclusion != matched:
                continue  # an include that already matched, or an exception with nothing to undo
            hit = p.match(path)
            if not hit:
                for i in range(len(parents)):
                    if p.match("/".join(parents[:i + 1])):
                        hit = True
                        break
            if hit:
                matched = not p.exclusion
        return matched

    def may_include_below(self, directory: str) -> bool:
        """Whether an excluded directory may still hold re-included paths (so it must be walked)."""
        directory = clean(directory)
        prefix = directory + "/"
        for p in self.patterns:
            if p.exclusion and (p.text.startswith(prefix) or "*" in p.text or "?" in p.text or "[" in p.text):
                return True
        return False
