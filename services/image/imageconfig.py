"""The OCI/Docker image config: the fields Berth reads from it, and host platform names.

The config blob is kept verbatim (its digest is the image id); this module only
extracts what the API reports and what snapshots and containers need.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.errors import InvalidArgument
from services.image.content import DIGEST_RE

_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}
_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def host_arch() -> str:
    """The host architecture in GOARCH naming, as image configs spell it."""
    machine = os.uname().machine
    return _GOARCH.get(machine, machine)


def parse_created(text: str) -> int:
    """RFC 3339 (with nanoseconds, as Go writes it) to unix seconds; 0 if absent or odd."""
    m = _TIME_RE.match(text or "")
    if m is None:
        return 0
    zone = m.group(3) or "Z"
    stamp = datetime.fromisoformat(m.group(1) + ("+00:00" if zone == "Z" else zone))
    return int(stamp.timestamp())


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ContainerConfig:
    """The runtime defaults an image carries (the config's `config` object)."""

    env: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


@dataclass
class ImageConfig:
    raw: dict[str, Any]
    architecture: str
    os: str
    created_unix: int
    diff_ids: list[str]
    config: ContainerConfig


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def container_config(raw: dict[str, Any] | None) -> ContainerConfig:
    c = raw or {}
    return ContainerConfig(
        env=_strings(c.get("Env")),
        entrypoint=_strings(c.get("Entrypoint")),
        cmd=_strings(c.get("Cmd")),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        labels={str(k): str(v) for k, v in (c.get("Labels") or {}).items()},
        stop_signal=str(c.get("StopSignal") or ""),
        exposed_ports=sorted(str(k) for k in (c.get("ExposedPorts") or {})),
        volumes=sorted(str(k) for k in (c.get("Volumes") or {})),
    )


def parse_config(data: bytes | str) -> ImageConfig:
    """Parse and sanity-check a config blob; malformed configs are InvalidArgument."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"image config is not valid JSON: {exc}") from None
    except RecursionError:  # hostile nesting: Python's parser recurses once per level
        raise InvalidArgument("image config is not valid JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("image config is not a JSON object")
    rootfs = raw.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") or [] if isinstance(rootfs, dict) else []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids):
        raise InvalidArgument("image config has invalid rootfs.diff_ids")
    try:
        cfg = container_config(raw.get("config"))
    except (AttributeError, TypeError) as exc:
        raise InvalidArgument(f"image config has an invalid config section: {exc}") from None
    return ImageConfig(raw=raw, architecture=str(raw.get("architecture") or ""), os=str(raw.get("os") or ""),
                       created_unix=parse_created(str(raw.get("created") or "")), diff_ids=list(diff_ids),
                       config=cfg)
