"""One service's keys, checked and brought to a single shape (lists, maps, absolute paths).

The normal form is what `config` prints and what the config hash is computed from, so
two spellings of the same service (a list or a map of environment variables, `80` or
`"80:80"`...) hash the same only when they mean the same container.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cli.client import CliError
from cli.compose.durations import parse_duration_ns
from cli.compose.envfile import read_env_file
from cli.compose.errors import ComposeError

SUPPORTED = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "volumes", "networks",
    "network_mode", "depends_on", "healthcheck", "restart", "labels", "container_name", "working_dir", "user",
    "hostname", "tty", "stdin_open", "stop_signal", "stop_grace_period", "read_only", "tmpfs", "dns",
    "dns_search", "extra_hosts", "mem_limit", "cpus", "pids_limit", "pull_policy", "expose",
}
# Known to compose but not (yet) to Berth: accepted with a warning, never silently.
IGNORED = {
    "deploy", "logging", "profiles", "platform", "ulimits", "cap_add", "cap_drop", "privileged", "security_opt",
    "devices", "init", "shm_size", "sysctls", "ipc", "pid", "userns_mode", "domainname", "mac_address",
    "configs", "secrets", "links", "external_links", "scale", "develop", "oom_score_adj", "group_add",
    "cpu_shares", "cpuset", "mem_reservation", "memswap_limit", "stop_timeout", "annotations", "attach",
}
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
PULL_POLICIES = {"always": "always", "never": "never", "missing": "missing", "if_not_present": "missing",
                 "build": "build", "daily": "always", "weekly": "always"}


class ServiceContext:
    """What normalising a service needs: its name, the project dir and the variables."""

    def __init__(self, name: str, working_dir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.working_dir = working_dir
        self.env = env

    def error(self, message: str) -> ComposeError:
        return ComposeError(f'service "{self.name}": {message}')

    def path(self, text: str) -> str:
        """A host path as compose resolves it: `~` is home, relative is from the project dir."""
        expanded = os.path.expanduser(text)
        return os.path.normpath(self.working_dir / expanded) if not os.path.isabs(expanded) else \
            os.path.normpath(expanded)


def _str(ctx: ServiceContext, key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ctx.error(f"{key} must be a string")
    return str(value)


def _str_list(ctx: ServiceContext, key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or any(isinstance(v, dict | list) or v is None for v in value):
        raise ctx.error(f"{key} must be a string or a list of strings")
    return [str(v) for v in value]


def _bool(ctx: ServiceContext, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(f"{key} must be a boolean")
    return value


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _command(ctx: ServiceContext, key: str, value: Any) -> list[str] | None:
    """A string is split like a shell would; a list is taken as is."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            raise ctx.error(f"invalid {key} {value!r}: {err}") from None
    return _str_list(ctx, key, value)


def key_value_map(ctx: ServiceContext, key: str, value: Any, sep: str = "=") -> dict[str, str | None]:
    """`["A=1", "B"]` or `{A: 1, B: null}`: a bare key or null has no value (None)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): None if v is None else _scalar_text(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for item in value:
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise ctx.error(f"{key} entries must be strings")
            k, found, v = str(item).partition(sep)
            if not k:
                raise ctx.error(f"invalid {key} entry {item!r}")
            out[k] = v if found else None
        return out
    raise ctx.error(f"{key} must be a mapping or a list")


def _environment(ctx: ServiceContext, svc: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    files = svc.get("env_file")
    entries = [files] if isinstance(files, str | dict) else files or []
    if not isinstance(entries, list):
        raise ctx.error("env_file must be a string or a list")
    for entry in entries:
        if isinstance(entry, dict):
            path, required = entry.get("path"), entry.get("required", True)
        else:
            path, required = entry, True
        if not isinstance(path, str) or not isinstance(required, bool):
            raise ctx.error(f"invalid env_file entry {entry!r}")
        env.update(read_env_file(Path(ctx.path(path)), required, ctx.env))
    for k, v in key_value_map(ctx, "environment", svc.get("environment")).items():
        if v is not None:
            env[k] = v
        elif k in ctx.env:
            env[k] = ctx.env[k]
        else:
            env.pop(k, None)
    return env


def _expand_range(ctx: ServiceContext, text: str) -> list[int]:
    first, dash, last = text.partition("-")
    if not first.isdigit() or (dash and not last.isdigit()):
        raise ctx.error(f"invalid port {text!r}")
    lo, hi = int(first), int(last) if dash else int(first)
    if hi < lo:
        raise ctx.error(f"invalid port range {text!r}")
    return list(range(lo, hi + 1))


def _ports(ctx: ServiceContext, value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.error("ports must be a list")
    out: list[dict] = []
    for item in value:
        if isinstance(item, dict):
            target = item.get("target")
            if not isinstance(target, int) or isinstance(target, bool):
                raise ctx.error(f"ports: target must be a port number in {item!r}")
            parts = [str(item.get("host_ip") or ""), str(item.get("published") or ""), str(target)]
            text = ":".join(parts) + "/" + str(item.get("protocol") or "tcp")
        elif isinstance(item, str | int) and not isinstance(item, bool):
            text = str(item)
        else:
            raise ctx.error(f"invalid port {item!r}")
        out.extend(_short_port(ctx, text))
    return out


def _short_port(ctx: ServiceContext, text: str) -> list[dict]:
    """`[ip:][host[-host]:]container[-container][/proto]`, each port of a range on its own,
    each checked by the same parser as `run -p`."""
    from cli import specs

    body, slash, proto = text.partition("/")
    parts = body.split(":")
    if len(parts) > 3:
        raise ctx.error(f"invalid port {text!r}: too many colons")
    ip, host_part, container_part = [""] * (3 - len(parts)) + parts
    containers = _expand_range(ctx, container_part)
    hosts = _expand_range(ctx, host_part) if host_part else [0] * len(containers)
    if len(hosts) != len(containers):
        raise ctx.error(f"invalid port {text!r}: host range and container range differ")
    out = []
    for h, c in zip(hosts, containers, strict=True):
        single = f"{ip}:{h or ''}:{c}" if ip else (f"{h}:{c}" if h else str(c))
        try:
            out.append(specs.parse_publish(single + (f"/{proto}" if slash else "")))
        except CliError as err:
            raise ctx.error(f"invalid port {text!r}: {str(err).rpartition('flag: ')[2]}") from None
    return out


def _volumes(ctx: ServiceContext, value: Any) -> list[dict]:
    from cli import specs

    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.error("volumes must be a list")
    out = []
    for item in value:
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) >= 2 and parts[0].startswith((".", "~", "/")):
                parts[0] = ctx.path(parts[0])
            try:
                m = specs.parse_volume(":".join(parts))
            except CliError as err:
                raise ctx.error(f"invalid volume {item!r}: {str(err).removeprefix('berth: ')}") from None
            out.append(m)
        elif isinstance(item, dict):
            out.append(_long_volume(ctx, item))
        else:
            raise ctx.error(f"invalid volume {item!r}")
    return out


def _long_volume(ctx: ServiceContext, item: dict) -> dict:
    from cli import specs

    kind = item.get("type", "volume")
    target = item.get("target")
    if kind not in ("volume", "bind", "tmpfs") or not isinstance(target, str) or not target.startswith("/"):
        raise ctx.error(f"invalid volume {item!r}: need type volume|bind|tmpfs and an absolute target")
    m: dict = {"type": kind, "target": target}
    source = item.get("source") or ""
    if kind == "bind":
        if not source:
            raise ctx.error(f"invalid volume {item!r}: a bind needs a source")
        m["source"] = ctx.path(str(source))
    elif kind == "volume" and source:
        m["source"] = str(source)
    if item.get("read_only"):
        m["read_only"] = True
    if kind == "bind" and (item.get("bind") or {}).get("propagation"):
        m["propagation"] = str(item["bind"]["propagation"])
    if kind == "volume" and (item.get("volume") or {}).get("nocopy"):
        m["no_copy"] = True
    if kind == "tmpfs":
        opts = item.get("tmpfs") or {}
        if "size" in opts:
            try:
                m["tmpfs_size"] = int(opts["size"]) if isinstance(opts["size"], int) else specs.parse_size(
                    str(opts["size"]))
            except ValueError:
                raise ctx.error(f"invalid tmpfs size {opts['size']!r}") from None
        if "mode" in opts:
            m["tmpfs_mode"] = int(opts["mode"])
    return m


def _networks(ctx: ServiceContext, svc: dict) -> dict[str, dict]:
    value = svc.get("networks")
    if svc.get("network_mode"):
        if value:
            raise ctx.error("network_mode and networks cannot be combined")
        return {}
    if value is None:
        return {"default": {}}
    if isinstance(value, list):
        return {str(n): {} for n in value}
    if not isinstance(value, dict):
        raise ctx.error("networks must be a list or a mapping")
    out: dict[str, dict] = {}
    for net, conf in value.items():
        conf = conf or {}
        if not isinstance(conf, dict):
            raise ctx.error(f"networks.{net} must be a mapping")
        entry: dict = {}
        if conf.get("aliases"):
            entry["aliases"] = _str_list(ctx, f"networks.{net}.aliases", conf["aliases"])
        if conf.get("ipv4_address"):
            entry["ipv4_address"] = str(conf["ipv4_address"])
        out[str(net)] = entry
    return out


def _depends_on(ctx: ServiceContext, value: Any) -> dict[str, dict]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {str(s): {"condition": "service_started", "required": True} for s in value}
    if not isinstance(value, dict):
        raise ctx.error("depends_on must be a list or a mapping")
    out = {}
    for dep, conf in value.items():
        conf = conf or {}
        condition = conf.get("condition", "service_started")
        if condition not in CONDITIONS:
            raise ctx.error(f"depends_on.{dep}: unknown condition {condition!r} (one of {', '.join(CONDITIONS)})")
        out[str(dep)] = {"condition": condition, "required": bool(conf.get("required", True))}
    return out


def _duration(ctx: ServiceContext, key: str, value: Any) -> str:
    try:
        parse_duration_ns(value)
    except ValueError:
        raise ctx.error(f"invalid duration for {key}: {value!r}") from None
    return str(value) if not isinstance(value, int | float) else f"{value}s"


def _healthcheck(ctx: ServiceContext, value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ctx.error("healthcheck must be a mapping")
    if value.get("disable"):
        return {"test": ["NONE"]}
    out: dict = {}
    test = value.get("test")
    if isinstance(test, str):
        out["test"] = ["CMD-SHELL", test]
    elif isinstance(test, list) and test:
        out["test"] = [str(t) for t in test]
        if out["test"][0] not in ("NONE", "CMD", "CMD-SHELL"):
            raise ctx.error(f"healthcheck.test must start with NONE, CMD or CMD-SHELL: {test!r}")
    elif test is not None:
        raise ctx.error("healthcheck.test must be a string or a list")
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if value.get(key) is not None:
            out[key] = _duration(ctx, f"healthcheck.{key}", value[key])
    if value.get("retries") is not None:
        if not isinstance(value["retries"], int) or isinstance(value["retries"], bool) or value["retries"] < 0:
            raise ctx.error("healthcheck.retries must be a number")
        out["retries"] = value["retries"]
    return out


def _build(ctx: ServiceContext, value: Any) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"context": value}
    if not isinstance(value, dict):
        raise ctx.error("build must be a string or a mapping")
    out = {"context": ctx.path(str(value.get("context", ".") or "."))}
    if value.get("dockerfile"):
        out["dockerfile"] = str(value["dockerfile"])
    args = key_value_map(ctx, "build.args", value.get("args"))
    if args:
        out["args"] = {k: v if v is not None else ctx.env.get(k, "") for k, v in args.items()}
    if value.get("target"):
        out["target"] = str(value["target"])
    if value.get("labels"):
        out["labels"] = {k: v or "" for k, v in key_value_map(ctx, "build.labels", value["labels"]).items()}
    if value.get("no_cache"):
        out["no_cache"] = True
    return out


def normalize_service(name: str, svc: Any, working_dir: Path, env: Mapping[str, str],
                      warnings: list[str]) -> dict:
    """A service's normal form, or a ComposeError naming the service and the key."""
    ctx = ServiceContext(name, working_dir, env)
    if svc is None:
        svc = {}
    if not isinstance(svc, dict):
        raise ctx.error("must be a mapping")
    for key in svc:
        if key in IGNORED:
            warnings.append(f'service "{name}": {key} is not supported by berth compose and is ignored')
        elif key not in SUPPORTED and not str(key).startswith("x-"):
            raise ctx.error(f"additional property {key!r} is not allowed")
    out: dict[str, Any] = {}
    if svc.get("image") is not None:
        out["image"] = _str(ctx, "image", svc["image"])
    build = _build(ctx, svc.get("build"))
    if build:
        out["build"] = build
    if "image" not in out and not build:
        raise ctx.error("has neither an image nor a build context specified")
    for key in ("command", "entrypoint"):
        if key in svc:
            out[key] = _command(ctx, key, svc[key])
    out["environment"] = _environment(ctx, svc)
    out["ports"] = _ports(ctx, svc.get("ports"))
    out["volumes"] = _volumes(ctx, svc.get("volumes"))
    if svc.get("network_mode"):
        mode = _str(ctx, "network_mode", svc["network_mode"])
        if mode not in ("host", "none", "bridge"):
            raise ctx.error(f"network_mode {mode!r} is not supported (host, none or bridge)")
        out["network_mode"] = mode
    out["networks"] = _networks(ctx, svc)
    out["depends_on"] = _depends_on(ctx, svc.get("depends_on"))
    health = _healthcheck(ctx, svc.get("healthcheck"))
    if health is not None:
        out["healthcheck"] = health
    if svc.get("restart") is not None:
        restart = _str(ctx, "restart", svc["restart"])
        if not RESTART.match(restart):
            raise ctx.error(f"invalid restart policy {restart!r}")
        out["restart"] = restart
    out["labels"] = {k: v or "" for k, v in key_value_map(ctx, "labels", svc.get("labels")).items()}
    for key in ("container_name", "working_dir", "user", "hostname", "stop_signal", "mem_limit"):
        if svc.get(key) is not None:
            out[key] = _str(ctx, key, svc[key])
    if out.get("working_dir") and not out["working_dir"].startswith("/"):
        raise ctx.error(f"working_dir must be an absolute path: {out['working_dir']!r}")
    for key in ("tty", "stdin_open", "read_only"):
        if svc.get(key) is not None:
            out[key] = _bool(ctx, key, svc[key])
    if svc.get("stop_grace_period") is not None:
        out["stop_grace_period"] = _duration(ctx, "stop_grace_period", svc["stop_grace_period"])
    for key in ("tmpfs", "dns", "dns_search"):
        if svc.get(key) is not None:
            out[key] = _str_list(ctx, key, svc[key])
    if svc.get("extra_hosts") is not None:
        hosts = svc["extra_hosts"]
        pairs = key_value_map(ctx, "extra_hosts", hosts, sep=":") if isinstance(hosts, dict) else None
        out["extra_hosts"] = [f"{k}:{v}" for k, v in pairs.items()] if pairs is not None else [
            h.replace("=", ":", 1) for h in _str_list(ctx, "extra_hosts", hosts)]
    if svc.get("cpus") is not None:
        try:
            out["cpus"] = float(svc["cpus"])
        except (TypeError, ValueError):
            raise ctx.error(f"invalid cpus {svc['cpus']!r}") from None
    if svc.get("pids_limit") is not None:
        if not isinstance(svc["pids_limit"], int):
            raise ctx.error("pids_limit must be a number")
        out["pids_limit"] = svc["pids_limit"]
    if svc.get("pull_policy") is not None:
        policy = PULL_POLICIES.get(str(svc["pull_policy"]))
        if policy is None:
            raise ctx.error(f"invalid pull_policy {svc['pull_policy']!r}")
        out["pull_policy"] = policy
    return out
