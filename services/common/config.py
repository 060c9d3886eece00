"""Where Berth keeps its sockets, state and databases.

Defaults follow docs/ARCHITECTURE.md; every value can be overridden by an
environment variable or by a TOML config file (``BERTH_CONFIG``, default
``/etc/berth/berth.toml``). Environment wins over the file so tests can run a
private set of services next to a system one.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG_FILE = "/etc/berth/berth.toml"


@dataclass(frozen=True)
class Config:
    run_dir: Path
    root_dir: Path
    api_socket: Path
    image_socket: Path
    runtime_socket: Path
    image_db_url: str
    runtime_db_url: str
    api_db_url: str
    cgroup_parent: str
    cgroup_root: Path
    socket_group: str
    # Optional TCP listener of the api, served only with mutual TLS (services/common/tls.py).
    tls_listen: str = ""
    tls_cacert: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Largest uncompressed layer the image service unpacks (a gzip bomb stops there); 0: no cap.
    max_layer_size: int = 16 << 30

    @property
    def image_dir(self) -> Path:
        return self.root_dir / "image"

    @property
    def runtime_dir(self) -> Path:
        return self.root_dir / "runtime"

    @property
    def api_dir(self) -> Path:
        return self.root_dir / "api"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def socket_for(self, service: str) -> Path:
        return {"api": self.api_socket, "image": self.image_socket, "runtime": self.runtime_socket}[service]


def _size(text: str, key: str) -> int:
    """A byte count, plain or with a k/m/g/t suffix; a bad value stops the service with one line."""
    m = re.match(r"^\s*(\d+)\s*([kmgt]?)b?\s*$", text, re.IGNORECASE)
    if m is None:
        raise SystemExit(f"berth: invalid {key} {text!r}: expected bytes, e.g. 512m or 16g")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def _file_values(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in data.items()}


def load(environ: dict[str, str] | None = None) -> Config:
    """Build the configuration from the environment and the optional config file."""
    env = dict(os.environ if environ is None else environ)
    values = _file_values(env.get("BERTH_CONFIG", DEFAULT_CONFIG_FILE))

    def get(key: str, default: str) -> str:
        return env.get("BERTH_" + key.upper(), values.get(key, default))

    run_dir = Path(get("run_dir", "/run/berth"))
    root_dir = Path(get("root_dir", "/var/lib/berth"))
    return Config(
        run_dir=run_dir,
        root_dir=root_dir,
        api_socket=Path(get("api_socket", str(run_dir / "api.sock"))),
        image_socket=Path(get("image_socket", str(run_dir / "image.sock"))),
        runtime_socket=Path(get("runtime_socket", str(run_dir / "runtime.sock"))),
        image_db_url=get("image_db_url", f"sqlite:///{root_dir / 'image' / 'image.db'}"),
        runtime_db_url=get("runtime_db_url", f"sqlite:///{root_dir / 'runtime' / 'runtime.db'}"),
        api_db_url=get("api_db_url", f"sqlite:///{root_dir / 'api' / 'api.db'}"),
        cgroup_parent=get("cgroup_parent", "berth"),
        cgroup_root=Path(get("cgroup_root", "/sys/fs/cgroup")),
        socket_group=get("socket_group", "berth"),
        tls_listen=get("tls_listen", ""),
        tls_cacert=get("tls_cacert", ""),
        tls_cert=get("tls_cert", ""),
        tls_key=get("tls_key", ""),
        max_layer_size=_size(get("max_layer_size", str(16 << 30)), "max_layer_size"),
    )
