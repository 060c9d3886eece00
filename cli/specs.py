"""Docker's short syntaxes for -v, --mount, --tmpfs and -p, parsed into plain dicts.

Parsing happens in the CLI (like Docker's), so a malformed flag fails before any
call, with Docker's one-line message and exit code 125; the runtime still checks
what only it can know (does the bind source exist, is the port free).
"""

from __future__ import annotations

import ipaddress
import re

from cli.client import CliError

PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)b?$", re.IGNORECASE)


def _bad(flag: str, value: str, why: str) -> CliError:
    return CliError(f'berth: invalid argument "{value}" for "{flag}" flag: {why}', 125)


def parse_size(text: str) -> int:
    m = SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"invalid size: '{text}'")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()])


def parse_volume(text: str) -> dict:
    """-v [SRC:]DST[:OPTS]: SRC absolute is a bind, otherwise a volume name; no SRC: anonymous."""
    parts = text.split(":")
    if not text or len(parts) > 3 or any(p == "" for p in parts):
        raise CliError(f"berth: invalid volume specification: '{text}'", 125)
    opts: list[str] = []
    if len(parts) == 1:
        src, dst = "", parts[0]
    elif len(parts) == 2:
        if parts[1].startswith("/"):
            src, dst = parts
        else:
            src, dst, opts = "", parts[0], parts[1].split(",")
    else:
        src, dst, opts = parts[0], parts[1], parts[2].split(",")
    if not dst.startswith("/"):
        raise CliError(f"berth: invalid volume specification: '{text}': invalid mount path: '{dst}' "
                       "mount path must be absolute", 125)
    m = {"type": "bind" if src.startswith("/") else "volume", "source": src, "target": dst}
    if not src:
        m["type"] = "volume"
    for opt in opts:
        if opt in ("ro", "rw"):
            m["read_only"] = opt == "ro"
        elif opt in PROPAGATIONS:
            if m["type"] != "bind":
                raise CliError(f"berth: invalid volume specification: '{text}': propagation only for binds", 125)
            m["propagation"] = opt
        elif opt == "nocopy":
            m["no_copy"] = True
        elif opt in ("z", "Z"):
            continue  # SELinux relabelling: nothing to do without SELinux
        else:
            raise CliError(f"berth: invalid volume specification: '{text}': invalid mode: {opt}", 125)
    return m


def _bool(value: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise ValueError(value)


def parse_mount(text: str) -> dict:
    """--mount type=bind|volume|tmpfs,source=...,target=...,readonly,bind-propagation=...,..."""
    flag = "--mount"
    m: dict = {"type": "volume"}
    for field in text.split(","):
        key, sep, value = field.partition("=")
        key = key.strip().lower()
        try:
            if key == "type":
                if value not in ("bind", "volume", "tmpfs"):
                    raise _bad(flag, text, f"unknown mount type '{value}'")
                m["type"] = value
            elif key in ("source", "src"):
                m["source"] = value
            elif key in ("target", "destination", "dst"):
                m["target"] = value
            elif key in ("readonly", "ro"):
                m["read_only"] = _bool(value)
            elif key == "bind-propagation":
                if value not in PROPAGATIONS:
                    raise _bad(flag, text, f"invalid bind propagation: '{value}'")
                m["propagation"] = value
            elif key == "volume-nocopy":
                m["no_copy"] = _bool(value)
            elif key == "tmpfs-size":
                m["tmpfs_size"] = parse_size(value)
            elif key == "tmpfs-mode":
                m["tmpfs_mode"] = int(value, 8)
            elif key in ("consistency", "volume-driver") or key.startswith("volume-opt") or key == "bind-nonrecursive":
                continue
            else:
                raise _bad(flag, text, f"unexpected key '{key}' in '{field}'")
        except ValueError:
            raise _bad(flag, text, f"invalid value for '{key}': {value}") from None
        if not sep and key not in ("readonly", "ro", "volume-nocopy"):
            raise _bad(flag, text, f"invalid field '{field}' must be a key=value pair")
    if not m.get("target"):
        raise _bad(flag, text, "target is required")
    if m["type"] == "bind" and not m.get("source"):
        raise _bad(flag, text, "source is required when specifying bind mount")
    if m["type"] == "tmpfs" and m.get("source"):
        raise _bad(flag, text, "source is not allowed for tmpfs mounts")
    if m["type"] != "bind" and "propagation" in m:
        raise _bad(flag, text, "bind-propagation is only for bind mounts")
    return m


def parse_tmpfs(text: str) -> dict:
    """--tmpfs /path[:size=16m,mode=1777,exec,...]."""
    target, _, opts = text.partition(":")
    if not target.startswith("/"):
        raise _bad("--tmpfs", text, f"invalid mount path: '{target}' mount path must be absolute")
    m: dict = {"type": "tmpfs", "target": target, "tmpfs_options": []}
    for opt in filter(None, opts.split(",")):
        key, sep, value = opt.partition("=")
        try:
            if key == "size":
                m["tmpfs_size"] = parse_size(value)
            elif key == "mode":
                m["tmpfs_mode"] = int(value, 8)
            elif opt in ("ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev") and not sep:
                m["tmpfs_options"].append(opt)
            else:
                raise _bad("--tmpfs", text, f"unknown option '{opt}'")
        except ValueError:
            raise _bad("--tmpfs", text, f"invalid value for '{key}': {value}") from None
    return m


def _port(value: str, text: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 65535:
        raise _bad("-p, --publish", text, f"invalid port: '{value}'")
    return int(value)


def parse_publish(text: str) -> dict:
    """-p [ip:][hostPort:]containerPort[/tcp|udp]; hostPort empty or absent: a random one."""
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise _bad("-p, --publish", text, f"invalid proto: '{proto}'")
    parts = body.split(":")
    if len(parts) == 1:
        host_ip, host_port, cport = "", "", parts[0]
    elif len(parts) == 2:
        host_ip, host_port, cport = "", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, host_port, cport = parts
    else:
        raise _bad("-p, --publish", text, "too many colons")
    if host_ip:
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise _bad("-p, --publish", text, f"invalid IP address: '{host_ip}'") from None
    return {"protocol": proto, "host_ip": host_ip, "host_port": _port(host_port, text) if host_port else 0,
            "container_port": _port(cport, text)}


def apply_to_run_spec(spec, *, volume: list[str], mount: list[str], tmpfs: list[str], read_only: bool,  # noqa: ANN001
                      publish: list[str], network: str, network_alias: list[str], ip: str, dns: list[str],
                      dns_search: list[str], add_host: list[str]) -> None:
    """Fill a RunSpec's mounts, read_only and network from `run`/`create` flags."""
    for item in volume:
        spec.mounts.add(**parse_volume(item))
    for item in mount:
        spec.mounts.add(**parse_mount(item))
    for item in tmpfs:
        spec.mounts.add(**parse_tmpfs(item))
    spec.read_only = read_only
    net = spec.network
    net.mode = network
    for item in publish:
        net.ports.add(**parse_publish(item))
    net.aliases.extend(network_alias)
    net.ipv4_address = ip
    net.dns.extend(dns)
    net.dns_search.extend(dns_search)
    for item in add_host:
        host, sep, addr = item.partition(":")
        if not sep or not host or not addr:
            raise CliError(f'berth: invalid argument "{item}" for "--add-host" flag: bad format for add-host', 125)
        net.extra_hosts.append(item)


def parse_health_duration(flag: str, text: str) -> int:
    """A --health-* duration ('1s', '500ms', '1m30s'; a bare '0' too) in nanoseconds."""
    from cli.timeparse import parse_duration

    if text.strip() == "0":
        return 0
    try:
        return round(parse_duration(text.strip()) * 1_000_000_000)
    except ValueError:
        raise _bad(flag, text, f'time: invalid duration "{text}"') from None


def apply_health(spec, *, cmd: str | None, interval: str, timeout: str, retries: int, start_period: str,  # noqa: ANN001
                 start_interval: str, no_healthcheck: bool) -> None:
    """Fill a RunSpec's healthcheck from the --health-* flags (Docker's: only what was set;
    the api takes the rest from the image's HEALTHCHECK)."""
    durations = {"interval_ns": ("--health-interval", interval), "timeout_ns": ("--health-timeout", timeout),
                 "start_period_ns": ("--health-start-period", start_period),
                 "start_interval_ns": ("--health-start-interval", start_interval)}
    given = any(v for _, v in durations.values()) or cmd is not None or retries
    if no_healthcheck:
        if given:
            raise CliError("berth: --no-healthcheck conflicts with --health-* options", 125)
        spec.healthcheck.test.append("NONE")
        return
    if retries < 0:
        raise CliError("berth: --health-retries cannot be negative", 125)
    hc = spec.healthcheck
    for field, (flag, text) in durations.items():
        if text:
            value = parse_health_duration(flag, text)
            if value < 0:
                raise CliError(f"berth: {flag} cannot be negative", 125)
            if 0 < value < 1_000_000:
                raise CliError(f"berth: {flag} cannot be less than 1ms", 125)
            setattr(hc, field, value)
    if cmd:
        hc.test.extend(["CMD-SHELL", cmd])
    if retries:
        hc.retries = retries


# ---- confinement (issue 7) ---------------------------------------------------------------
SECURITY_OPT_KEYS = ("seccomp", "apparmor", "no-new-privileges", "label")


def parse_device(text: str) -> dict:
    """--device HOST[:CONTAINER][:PERMISSIONS] (Docker's: a lone "rwm"-like last part is permissions)."""
    parts = text.split(":")
    if not parts[0] or len(parts) > 3:
        raise _bad("--device", text, "want /dev/HOST[:/dev/CONTAINER[:rwm]]")
    host, container, perms = parts[0], "", ""
    if len(parts) == 2:
        if parts[1] and set(parts[1]) <= set("rwm") and not parts[1].startswith("/"):
            perms = parts[1]
        else:
            container = parts[1]
    elif len(parts) == 3:
        container, perms = parts[1], parts[2]
    if perms and not set(perms) <= set("rwm"):
        raise _bad("--device", text, f'invalid device mode "{perms}"')
    return {"host_path": host, "container_path": container, "permissions": perms}


def parse_security_opt(text: str) -> tuple[str, str]:
    """("seccomp", "unconfined"), ("no-new-privileges", "true"), ...; `key:value` is accepted too."""
    key, sep, value = text.partition("=")
    if not sep and ":" in text:
        key, _, value = text.partition(":")
    if key == "no-new-privileges":
        value = value or "true"
        if value not in ("true", "false"):
            raise CliError(f'berth: invalid --security-opt: "{text}": no-new-privileges takes true or false', 125)
    elif key not in SECURITY_OPT_KEYS or not value:
        raise CliError(f'berth: invalid --security-opt: "{text}"', 125)
    return key, value


def _seccomp_value(value: str) -> str:
    """'unconfined' stays; anything else is a profile file, sent as its JSON text."""
    if value == "unconfined":
        return value
    import json

    try:
        with open(value) as f:
            text = f.read((1 << 20) + 1)
    except OSError as err:
        raise CliError(f"berth: opening seccomp profile ({value}) failed: {err.strerror}", 125) from None
    try:
        json.loads(text)
    except ValueError as err:
        raise CliError(f"berth: decoding seccomp profile ({value}) failed: {err}", 125) from None
    return text


def apply_security(sec, *, privileged: bool, cap_add: list[str], cap_drop: list[str], device: list[str],  # noqa: ANN001
                   security_opt: list[str], userns: str) -> None:
    """Fill a runtime Security message from the run/create flags (the runtime checks names and paths)."""
    sec.privileged = privileged
    sec.cap_add.extend(c for item in cap_add for c in item.split(",") if c)
    sec.cap_drop.extend(c for item in cap_drop for c in item.split(",") if c)
    for item in device:
        sec.devices.add(**parse_device(item))
    for item in security_opt:
        key, value = parse_security_opt(item)
        if key == "seccomp":
            sec.seccomp = _seccomp_value(value)
        elif key == "apparmor":
            sec.apparmor = value
        elif key == "no-new-privileges":
            sec.no_new_privileges = value == "true"
    if userns not in ("", "host", "auto"):
        raise CliError(f'berth: invalid argument "{userns}" for "--userns" flag: want host or auto', 125)
    sec.userns = userns


def security_json(sec) -> dict:  # noqa: ANN001 - a runtime Security message
    """Docker's HostConfig keys for `inspect`."""
    opts = []
    if sec.seccomp:
        opts.append("seccomp=unconfined" if sec.seccomp == "unconfined" else "seccomp=<profile>")
    if sec.apparmor:
        opts.append(f"apparmor={sec.apparmor}")
    if sec.no_new_privileges:
        opts.append("no-new-privileges")
    return {
        "Privileged": sec.privileged,
        "CapAdd": list(sec.cap_add) or None,
        "CapDrop": list(sec.cap_drop) or None,
        "SecurityOpt": opts or None,
        "UsernsMode": sec.userns,
        "Devices": [{"PathOnHost": d.host_path, "PathInContainer": d.container_path or d.host_path,
                     "CgroupPermissions": d.permissions or "rwm"} for d in sec.devices],
    }
