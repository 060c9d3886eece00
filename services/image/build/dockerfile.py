"""The Dockerfile language: parser directives, logical lines, instructions, stages, `$VAR`.

Parsing is purely textual and keeps every instruction's line number so each
error can name it ("Dockerfile:7: unknown instruction: FORM"). Variable
substitution follows Docker's word rules (quotes, the escape character,
`${VAR:-x}`, `${VAR:+x}`) and happens when a step runs, against the env and
build args in effect at that step, which only the executor knows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
# Instructions whose arguments Docker expands with the env in effect (RUN, CMD and
# ENTRYPOINT are left to the shell).
EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ARG"}
FLAGGED = {"FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"}
# Build args every build knows without an ARG line (not recorded in history unless used).
PREDEFINED_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_HEREDOC_RE = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DockerfileError(InvalidArgument):
    """A Dockerfile problem; the message names the file and line."""


def error(line: int, message: str, filename: str = "Dockerfile") -> DockerfileError:
    return DockerfileError(f"{filename}:{line}: {message}" if line else f"{filename}: {message}")


@dataclass
class Heredoc:
    name: str
    content: str
    chomp: bool = False  # `<<-`: leading tabs stripped


@dataclass
class Instruction:
    """One instruction: `keyword` upper-cased, `rest` after the keyword (and its flags)."""

    keyword: str
    rest: str
    line: int
    original: str
    flags: dict[str, str] = field(default_factory=dict)
    heredocs: list[Heredoc] = field(default_factory=list)

    def json_args(self) -> list[str] | None:
        """The exec (JSON array of strings) form, or None for the shell form."""
        return json_array(self.rest)

    def __str__(self) -> str:
        return self.original


@dataclass
class Stage:
    index: int
    base: str
    name: str
    platform: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or str(self.index)


@dataclass
class Dockerfile:
    global_args: list[Instruction]
    stages: list[Stage]
    escape: str = "\\"
    filename: str = "Dockerfile"

    def stage_index(self, name: str) -> int | None:
        """A stage by name (case-insensitive) or by number, as `--from` and `--target` accept."""
        for st in self.stages:
            if st.name and st.name == name.lower():
                return st.index
        if name.isdigit() and int(name) < len(self.stages):
            return int(name)
        return None


def json_array(text: str) -> list[str] | None:
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


# ---- lines --------------------------------------------------------------------


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives at the very top (`# escape=`), and where they end."""
    found: dict[str, str] = {}
    i = 0
    while i < len(lines):
        m = _DIRECTIVE_RE.match(lines[i].strip())
        if not m or not lines[i].lstrip().startswith("#"):
            break
        key = m.group(1).lower()
        if key in found:
            break  # a repeated directive is an ordinary comment, as in Docker
        found[key] = m.group(2)
        i += 1
    return found, i


def _logical_lines(text: str, filename: str) -> tuple[list[tuple[int, str, list[Heredoc]]], str]:
    """Join continuations, drop comments, collect heredocs: [(start line, text, heredocs)]."""
    lines = text.splitlines()
    directives, start = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise error(0, f"invalid escape token {escape!r} does not match ` or \\", filename)
    cont_re = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list[tuple[int, str, list[Heredoc]]] = []
    buf: list[str] = []
    first = 0
    i = start
    while i < len(lines):
        raw = lines[i]
        i += 1
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buf):
            continue  # comments go, even inside a continuation; so do blank lines there
        if not stripped:
            continue
        if not buf:
            first = i
        m = cont_re.search(raw)
        if m:
            buf.append(raw[:m.start()])
            continue
        buf.append(raw)
        logical = "".join(buf).strip()
        buf = []
        heredocs: list[Heredoc] = []
        keyword = logical.split(None, 1)[0].upper()
        if keyword in ("RUN", "COPY", "ADD"):
            for hm in _HEREDOC_RE.finditer(logical):
                chomp, name = hm.group(1) == "-", hm.group(3)
                body: list[str] = []
                while True:
                    if i >= len(lines):
                        raise error(first, f"unterminated heredoc {name}", filename)
                    line = lines[i]
                    i += 1
                    check = line.lstrip("\t") if chomp else line
                    if check == name:
                        break
                    body.append(check)
                heredocs.append(Heredoc(name, "".join(f"{b}\n" for b in body), chomp))
        out.append((first, logical, heredocs))
    if buf:
        out.append((first, "".join(buf).strip(), []))
    return out, escape


def _split_flags(rest: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        if not name:
            break
        flags[name.lower()] = value if eq else "true"
        rest = tail.lstrip()
    return flags, rest


def parse_instruction(line: int, logical: str, heredocs: list[Heredoc] | None = None,
                      filename: str = "Dockerfile") -> Instruction:
    parts = logical.split(None, 1)
    keyword = parts[0].upper()
    rest = parts[1].strip() if len(parts) > 1 else ""
    if keyword not in INSTRUCTIONS:
        raise error(line, f"unknown instruction: {parts[0]}", filename)
    flags: dict[str, str] = {}
    if keyword in FLAGGED:
        flags, rest = _split_flags(rest)
    return Instruction(keyword, rest, line, logical, flags, heredocs or [])


_ALLOWED_FLAGS = {"FROM": {"platform"}, "RUN": {"network", "mount", "security"},
                  "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
                  "ADD": {"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"},
                  "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"}}


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile into global ARGs and stages; errors name the line."""
    logical, escape = _logical_lines(text, filename)
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for line, body, heredocs in logical:
        ins = parse_instruction(line, body, heredocs, filename)
        unknown = set(ins.flags) - _ALLOWED_FLAGS.get(ins.keyword, set())
        if unknown:
            raise error(line, f"unknown flag: --{sorted(unknown)[0]} for {ins.keyword}", filename)
        if ins.keyword == "FROM":
            words = ins.rest.split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise error(line, "FROM requires either one or three arguments: FROM <image> [AS <name>]",
                            filename)
            name = words[2].lower() if len(words) == 3 else ""
            if name and not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
                raise error(line, f"invalid name for build stage: {words[2]!r}, name can't start with a number "
                                  "or contain symbols", filename)
            if name and any(s.name == name for s in stages):
                raise error(line, f"duplicate stage name {name!r}", filename)
            stages.append(Stage(len(stages), words[0], name, ins.flags.get("platform", ""), line))
            continue
        if not stages:
            if ins.keyword != "ARG":
                raise error(line, f"{ins.keyword} before the first FROM: only ARG may come before FROM", filename)
            global_args.append(ins)
            continue
        _check(ins, filename)
        stages[-1].instructions.append(ins)
    if not stages:
        raise error(0, "file with no instructions" if not logical else "no FROM instruction", filename)
    return Dockerfile(global_args, stages, escape, filename)


def _check(ins: Instruction, filename: str) -> None:
    """Argument checks that need no variables, so a bad file fails before any step runs."""
    kw, rest = ins.keyword, ins.rest
    if kw in ("RUN", "CMD", "ENTRYPOINT", "SHELL", "WORKDIR", "USER", "STOPSIGNAL", "EXPOSE", "VOLUME",
              "ENV", "LABEL", "ARG", "ONBUILD", "MAINTAINER") and not rest and not ins.heredocs:
        if kw not in ("CMD", "ENTRYPOINT", "RUN"):
            raise error(ins.line, f"{kw} requires at least one argument", filename)
        if kw == "RUN":
            raise error(ins.line, "RUN requires at least one argument", filename)
    if kw in ("COPY", "ADD") and len(rest.split()) < 2 and not (ins.heredocs and rest):
        raise error(ins.line, f"{kw} requires at least two arguments, but only {len(rest.split())} provided",
                    filename)
    if kw == "SHELL" and json_array(rest) is None:
        raise error(ins.line, "SHELL requires the arguments to be in JSON form", filename)
    if kw == "ONBUILD":
        inner = rest.split(None, 1)[0].upper() if rest else ""
        if inner in ("ONBUILD", "FROM", "MAINTAINER"):
            raise error(ins.line, f"{inner} isn't allowed as an ONBUILD trigger", filename)
        if inner not in INSTRUCTIONS:
            raise error(ins.line, f"unknown instruction: {rest.split(None, 1)[0]}", filename)
    if kw == "HEALTHCHECK":
        head = rest.split(None, 1)[0].upper() if rest else ""
        if head not in ("NONE", "CMD"):
            raise error(ins.line, "HEALTHCHECK requires NONE or CMD", filename)
        if head == "NONE" and (ins.flags or rest.split(None, 1)[1:]):
            raise error(ins.line, "HEALTHCHECK NONE takes no arguments", filename)


# ---- words and variables --------------------------------------------------------


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Whitespace-separated words; quotes and escapes stay in the word (expanded later)."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if not quote and ch in " \t\n":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == escape and quote != "'" and i + 1 < len(text):
            cur.append(ch + text[i + 1])
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        cur.append(ch)
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


class Expander:
    """Docker's word processing: quote removal, escapes and `$VAR` substitution."""

    def __init__(self, env: Mapping[str, str], escape: str = "\\") -> None:
        self.env = env
        self.escape = escape

    def word(self, text: str) -> str:
        out, _ = self._process(text, 0, "")
        return out

    def words(self, text: str) -> list[str]:
        return [self.word(w) for w in split_words(text, self.escape)]

    def _process(self, text: str, i: int, stop: str) -> tuple[str, int]:
        out: list[str] = []
        while i < len(text):
            ch = text[i]
            if stop and ch == stop:
                return "".join(out), i
            if ch == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise InvalidArgument(f"unexpected end of statement while looking for matching ' in {text!r}")
                out.append(text[i + 1:end])
                i = end + 1
            elif ch == '"':
                i += 1
                while True:
                    if i >= len(text):
                        raise InvalidArgument(f'unexpected end of statement while looking for matching " in {text!r}')
                    c = text[i]
                    if c == '"':
                        i += 1
                        break
                    if c == self.escape and i + 1 < len(text) and text[i + 1] in ('"', "$", self.escape):
                        out.append(text[i + 1])
                        i += 2
                    elif c == "$":
                        value, i = self._dollar(text, i + 1)
                        out.append(value)
                    else:
                        out.append(c)
                        i += 1
            elif ch == self.escape:
                if i + 1 < len(text):
                    out.append(text[i + 1])
                    i += 2
                else:
                    out.append(ch)
                    i += 1
            elif ch == "$":
                value, i = self._dollar(text, i + 1)
                out.append(value)
            else:
                out.append(ch)
                i += 1
        return "".join(out), i

    def _dollar(self, text: str, i: int) -> tuple[str, int]:
        """After a `$`: the value and the index after the reference."""
        if i < len(text) and text[i] == "{":
            m = _NAME_RE.match(text, i + 1)
            if not m:
                raise InvalidArgument(f"bad substitution in {text!r}")
            name, j = m.group(0), m.end()
            if j < len(text) and text[j] == "}":
                return self.env.get(name, ""), j + 1
            colon = j < len(text) and text[j] == ":"
            if colon:
                j += 1
            if j >= len(text) or text[j] not in "-+?":
                raise InvalidArgument(f"unsupported modifier in ${{{name}...}} in {text!r}")
            mod = text[j]
            word, end = self._process(text, j + 1, "}")
            if end >= len(text):
                raise InvalidArgument(f"missing '}}' in {text!r}")
            value = self.env.get(name)
            is_set = value is not None and (value != "" or not colon)
            if mod == "-":
                result = value if is_set else word  # type: ignore[assignment]
            elif mod == "+":
                result = word if is_set else ""
            else:
                if not is_set:
                    raise InvalidArgument(f"{name}: {word or 'is not allowed to be unset'}")
                result = value  # type: ignore[assignment]
            return result or "", end + 1
        m = _NAME_RE.match(text, i)
        if not m:
            return "$", i
        return self.env.get(m.group(0), ""), m.end()


def env_dict(env_list: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env_list:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def name_values(ins: Instruction, expand: Expander, kind: str) -> list[tuple[str, str]]:
    """`ENV a=b c=d` / `ENV a b` (and LABEL): pairs, values expanded with the env before the step."""
    words = split_words(ins.rest, expand.escape)
    if not words:
        raise error(ins.line, f"{kind} requires at least one argument")
    if "=" not in words[0]:
        parts = ins.rest.split(None, 1)
        if len(parts) < 2:
            raise error(ins.line, f"{kind} must have two arguments")
        return [(parts[0], expand.word(parts[1]))]
    out = []
    for w in words:
        if "=" not in w:
            raise error(ins.line, f"{kind} names can not be blank and must be name=value: {w!r}")
        k, _, v = w.partition("=")
        key = expand.word(k)
        if not key:
            raise error(ins.line, f"{kind} names can not be blank")
        out.append((key, expand.word(v)))
    return out


def arg_pairs(ins: Instruction, expand: Expander) -> list[tuple[str, str | None]]:
    """`ARG a`, `ARG a=1 b=2`: names with their defaults (None: no default)."""
    out: list[tuple[str, str | None]] = []
    for w in split_words(ins.rest, expand.escape):
        k, eq, v = w.partition("=")
        if not _NAME_RE.fullmatch(k):
            raise error(ins.line, f"invalid ARG name {k!r}")
        out.append((k, expand.word(v) if eq else None))
    return out


def apply_config_instruction(config: dict, change: str) -> None:
    """`commit --change`: one config-changing instruction applied to a config's `config` object
    (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL, HEALTHCHECK, SHELL)."""
    from services.image.build.confedit import apply_config_instruction as apply

    apply(config, change)
