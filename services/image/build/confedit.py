"""Config-changing instructions applied to an image config's `config` object.

Shared by the builder's metadata steps and `commit --change`, so both record
exactly what Docker records (Env, Cmd, Entrypoint, WorkingDir, User,
ExposedPorts, Labels, Volumes, Healthcheck, Shell, OnBuild, StopSignal). Each
application returns the comment Docker's classic builder writes into the
history entry (`CMD ["sh"]`, `WORKDIR /app`).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from services.common.errors import InvalidArgument
from services.image.build.dockerfile import (
    Expander,
    Instruction,
    env_dict,
    error,
    json_array,
    name_values,
    parse_instruction,
)

DEFAULT_SHELL = ["/bin/sh", "-c"]
CHANGE_COMMANDS = {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "USER", "VOLUME", "WORKDIR",
                   "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
          "h": 3_600_000_000_000}
_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?(?:/(\w+))?$")


def go_quote(items: list[str]) -> str:
    """Go's `%q` of a string slice, which is how the classic builder prints commands."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def parse_duration(text: str, line: int, flag: str) -> int:
    """A Go duration ("30s", "1m30s", "500ms") in nanoseconds."""
    if text in ("", "0"):
        return 0
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise error(line, f"invalid duration {text!r} for --{flag}")
    return int(total)


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(), enough for history comments."""
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{ns / size:g}{unit}"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = f"{rest / 1_000_000_000:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def shell_of(config: dict[str, Any]) -> list[str]:
    return list(config.get("Shell") or DEFAULT_SHELL)


def command_of(ins: Instruction, config: dict[str, Any]) -> list[str]:
    """Exec form as written, shell form wrapped in the config's shell."""
    args = ins.json_args()
    if args is not None:
        return args
    return [*shell_of(config), ins.rest]


def set_env(config: dict[str, Any], key: str, value: str) -> None:
    """Replace in place (keeping the order Docker keeps) or append."""
    env = list(config.get("Env") or [])
    for i, item in enumerate(env):
        if item.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    config["Env"] = env


def _ports(words: list[str], line: int) -> list[str]:
    out: list[str] = []
    for w in words:
        m = _PORT_RE.match(w)
        if not m:
            raise error(line, f"invalid containerPort: {w}")
        lo, hi, proto = int(m.group(1)), int(m.group(2) or m.group(1)), (m.group(3) or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise error(line, f"invalid proto: {proto}")
        if not 0 < lo <= hi <= 65535:
            raise error(line, f"invalid port range: {w}")
        out.extend(f"{p}/{proto}" for p in range(lo, hi + 1))
    return out


def healthcheck(ins: Instruction, line: int) -> tuple[dict[str, Any], str]:
    """HEALTHCHECK NONE | [--interval=...] CMD cmd: Docker's Healthcheck object and history text."""
    head, _, tail = ins.rest.partition(" ")
    if head.upper() == "NONE":
        return {"Test": ["NONE"]}, 'HEALTHCHECK &{["NONE"] "0s" "0s" "0s" "0s" \'\\x00\'}'
    if head.upper() != "CMD":
        raise error(line, "HEALTHCHECK requires NONE or CMD")
    tail = tail.strip()
    if not tail:
        raise error(line, "Missing command after HEALTHCHECK CMD")
    args = json_array(tail)
    test = ["CMD", *args] if args is not None else ["CMD-SHELL", tail]
    hc: dict[str, Any] = {"Test": test}
    durations = {}
    for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                      ("start-interval", "StartInterval")):
        ns = parse_duration(ins.flags.get(flag, ""), line, flag)
        if ns and ns < 1_000_000:
            raise error(line, f"--{flag} cannot be less than 1ms")
        durations[key] = ns
        if ns:
            hc[key] = ns
    retries = 0
    if "retries" in ins.flags:
        try:
            retries = int(ins.flags["retries"])
        except ValueError:
            raise error(line, f"invalid --retries value {ins.flags['retries']!r}") from None
        if retries < 0:
            raise error(line, "--retries cannot be negative")
        if retries:
            hc["Retries"] = retries
    comment = (f"HEALTHCHECK &{{{go_quote(test)} \"{go_duration(durations['Interval'])}\" "
               f"\"{go_duration(durations['Timeout'])}\" \"{go_duration(durations['StartPeriod'])}\" "
               f"\"{go_duration(durations['StartInterval'])}\" '\\x{retries:02x}'}}")
    return hc, comment


def apply(config: dict[str, Any], ins: Instruction, expand: Expander, *, cmd_set: bool = False) -> str:
    """Apply one metadata instruction to `config` (the image config's `config` object).

    `expand` carries the env and build args in effect before the step. Returns
    the history comment. `cmd_set` says whether this stage already set CMD
    (ENTRYPOINT resets an inherited CMD, as in Docker).
    """
    kw, line = ins.keyword, ins.line
    if kw in ("CMD", "ENTRYPOINT"):
        args = ins.json_args()
        value = args if args is not None else ([*shell_of(config), ins.rest] if ins.rest else [])
        key = "Cmd" if kw == "CMD" else "Entrypoint"
        config[key] = value or None
        if kw == "ENTRYPOINT" and not cmd_set:
            config["Cmd"] = None
        return f"{kw} {go_quote(value)}"
    if kw == "ENV":
        pairs = name_values(ins, expand, "ENV")
        for k, v in pairs:
            set_env(config, k, v)
        return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    if kw == "LABEL":
        pairs = name_values(ins, expand, "LABEL")
        labels = dict(config.get("Labels") or {})
        labels.update(pairs)
        config["Labels"] = labels
        return "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
    if kw == "EXPOSE":
        words = expand.words(ins.rest)
        ports = dict(config.get("ExposedPorts") or {})
        for p in _ports(words, line):
            ports[p] = {}
        config["ExposedPorts"] = ports
        return "EXPOSE " + " ".join(words)
    if kw == "VOLUME":
        args = json_array(ins.rest)
        vols = [expand.word(v) for v in args] if args is not None else expand.words(ins.rest)
        if not vols or any(not v.strip() for v in vols):
            raise error(line, "VOLUME specified can not be an empty string")
        volumes = dict(config.get("Volumes") or {})
        for v in vols:
            volumes[v] = {}
        config["Volumes"] = volumes
        return f"VOLUME [{' '.join(vols)}]"
    if kw == "USER":
        user = expand.word(ins.rest.strip())
        config["User"] = user
        return f"USER {user}"
    if kw == "WORKDIR":
        path = expand.word(ins.rest.strip())
        config["WorkingDir"] = workdir_join(config.get("WorkingDir") or "", path)
        return f"WORKDIR {config['WorkingDir']}"
    if kw == "STOPSIGNAL":
        sig = expand.word(ins.rest.strip())
        check_signal(sig, line)
        config["StopSignal"] = sig
        return f"STOPSIGNAL {sig}"
    if kw == "SHELL":
        args = json_array(ins.rest)
        if not args:
            raise error(line, "SHELL requires the arguments to be in JSON form")
        config["Shell"] = args
        return f"SHELL [{' '.join(args)}]"
    if kw == "HEALTHCHECK":
        hc, comment = healthcheck(ins, line)
        config["Healthcheck"] = hc
        return comment
    if kw == "ONBUILD":
        trigger = ins.rest.strip()
        inner = trigger.split(None, 1)[0].upper() if trigger else ""
        if inner in ("ONBUILD", "FROM", "MAINTAINER"):
            raise error(line, f"{inner} isn't allowed as an ONBUILD trigger")
        config["OnBuild"] = [*(config.get("OnBuild") or []), trigger]
        return f"ONBUILD {trigger}"
    raise error(line, f"{kw} does not change the image config")


def workdir_join(current: str, path: str) -> str:
    if not path:
        raise InvalidArgument("WORKDIR requires a path")
    joined = path if path.startswith("/") else posixpath.join(current or "/", path)
    return posixpath.normpath(joined).replace("//", "/")


_SIGNALS = {"HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
            "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU",
            "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS"}


def check_signal(sig: str, line: int) -> None:
    name = sig.upper().removeprefix("SIG")
    if sig.isdigit() and 0 < int(sig) < 65:
        return
    if re.fullmatch(r"RTMIN(\+\d+)?|RTMAX(-\d+)?", name) or name in _SIGNALS:
        return
    raise error(line, f"invalid signal: {sig}")


def apply_config_instruction(config: dict[str, Any], change: str) -> None:
    """`commit --change "CMD [\\"sh\\"]"`: one instruction applied to a config's `config` object."""
    text = change.strip()
    if not text:
        raise InvalidArgument("empty --change")
    ins = parse_instruction(1, text, filename="change")
    if ins.keyword not in CHANGE_COMMANDS:
        raise InvalidArgument(f"{ins.keyword} is not a valid change command")
    try:
        apply(config, ins, Expander(env_dict(list(config.get("Env") or []))))
    except InvalidArgument as exc:
        raise InvalidArgument(str(exc).replace("change:1: ", "")) from None
