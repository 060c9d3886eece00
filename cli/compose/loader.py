"""Find, read, interpolate and check a compose project: files, `.env`, name, services,
networks and volumes, ready for the engine (or for `config` to print)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.compose import graph
from cli.compose.envfile import read_env_file
from cli.compose.errors import ComposeError
from cli.compose.interpolate import interpolate_tree
from cli.compose.service import normalize_service
from cli.compose.yamlfile import read_yaml

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
TOP_LEVEL = {"version", "name", "services", "networks", "volumes"}
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class Project:
    """A loaded project: every service in normal form, networks and volumes with real names."""

    name: str
    working_dir: Path
    config_files: list[Path]
    services: dict[str, dict]
    networks: dict[str, dict]
    volumes: dict[str, dict]
    warnings: list[str] = field(default_factory=list)

    def check_services(self, names: list[str]) -> None:
        for name in names:
            if name not in self.services:
                raise ComposeError(f"no such service: {name}")

    def image_of(self, service: str) -> str:
        """The image a service runs: its `image`, else `<project>-<service>` (what build tags)."""
        svc = self.services[service]
        return svc.get("image") or f"{self.name}-{service}"

    def as_config(self) -> dict:
        """The resolved file, as `config` prints it."""
        out: dict[str, Any] = {"name": self.name, "services": {}}
        for name in sorted(self.services):
            svc = {k: v for k, v in self.services[name].items() if v not in ({}, [], None) or k == "command"}
            out["services"][name] = svc
        if self.networks:
            out["networks"] = {k: dict(v) for k, v in sorted(self.networks.items())}
        if self.volumes:
            out["volumes"] = {k: dict(v) for k, v in sorted(self.volumes.items())}
        return out


def normalize_project_name(text: str) -> str:
    """Compose's rule: lower case, only letters, digits, `_` and `-`, starting with a letter or digit."""
    return re.sub(r"[^a-z0-9_-]", "", text.lower()).lstrip("_-")


def find_files(files: list[str], cwd: Path) -> list[Path]:
    if files:
        paths = [Path(f) if os.path.isabs(f) else cwd / f for f in files]
        for p in paths:
            if not p.is_file():
                raise ComposeError(f"open {p}: no such file or directory")
        return paths
    for name in DEFAULT_FILES:
        if (cwd / name).is_file():
            return [cwd / name]
    raise ComposeError("no configuration file provided: not found")


def _merge(base: Any, override: Any) -> Any:
    """A later file (-f a -f b) overrides: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return override


def _project_env(working_dir: Path, environ: Mapping[str, str], env_file: str | None) -> dict[str, str]:
    """Variables for interpolation: the `.env` next to the file, overridden by the environment."""
    path = Path(env_file) if env_file else working_dir / ".env"
    env = read_env_file(path, required=bool(env_file), lookup=environ) if env_file or path.is_file() else {}
    env.update(environ)
    return env


def _resources(kind: str, value: Any, project: str) -> dict[str, dict]:
    """Top-level networks or volumes: real names `<project>_<key>` unless `name:` or `external:`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ComposeError(f"{kind} must be a mapping")
    out = {}
    for key, conf in value.items():
        conf = conf or {}
        if not isinstance(conf, dict):
            raise ComposeError(f'{kind[:-1]} "{key}" must be a mapping')
        external = conf.get("external", False)
        if isinstance(external, dict):  # the old `external: {name: x}` spelling
            conf = {**conf, "name": external.get("name", conf.get("name"))}
            external = True
        entry: dict[str, Any] = {"name": str(conf.get("name") or (key if external else f"{project}_{key}"))}
        if external:
            entry["external"] = True
        driver = conf.get("driver")
        if driver and driver not in (("bridge",) if kind == "networks" else ("local",)):
            raise ComposeError(f'{kind[:-1]} "{key}": driver {driver!r} is not supported')
        if conf.get("labels"):
            labels = conf["labels"]
            entry["labels"] = dict(labels) if isinstance(labels, dict) else dict(
                str(x).partition("=")[::2] for x in labels)
        if kind == "networks":
            if conf.get("internal"):
                entry["internal"] = True
            ipam = (conf.get("ipam") or {}).get("config") or []
            if ipam:
                entry["subnet"] = str(ipam[0].get("subnet", "") or "")
                if ipam[0].get("gateway"):
                    entry["gateway"] = str(ipam[0]["gateway"])
        out[str(key)] = entry
    return out


def load_project(files: list[str] | None = None, project_name: str | None = None,
                 environ: Mapping[str, str] | None = None, cwd: Path | None = None,
                 env_file: str | None = None) -> Project:
    """Read the project; any problem is a ComposeError with one line naming it."""
    environ = os.environ if environ is None else environ
    paths = find_files(list(files or []), cwd or Path.cwd())
    working_dir = paths[0].resolve().parent
    env = _project_env(working_dir, environ, env_file)
    unset: list[str] = []
    doc: Any = {}
    for path in paths:
        part = read_yaml(path)
        if part is None:
            part = {}
        if not isinstance(part, dict):
            raise ComposeError(f"{path}: top-level object must be a mapping")
        for key in part:
            if key not in TOP_LEVEL and not str(key).startswith("x-"):
                raise ComposeError(f"{path}: additional property {key!r} is not allowed")
        doc = _merge(doc, interpolate_tree(part, env, warn=lambda n: None if n in unset else unset.append(n)))
    warnings = [f'The "{n}" variable is not set. Defaulting to a blank string.' for n in unset]
    if "version" in doc:
        warnings.append("the attribute `version` is obsolete, it will be ignored")
    name = project_name or environ.get("COMPOSE_PROJECT_NAME") or doc.get("name")
    if name:
        if not PROJECT_NAME.match(str(name)):
            raise ComposeError(f"invalid project name {name!r}: must consist only of lowercase alphanumeric "
                               "characters, hyphens, and underscores as well as start with a letter or number")
        name = str(name)
    else:
        name = normalize_project_name(working_dir.name)
        if not name:
            raise ComposeError(f"cannot derive a project name from {working_dir}: use -p NAME")
    services_doc = doc.get("services")
    if not isinstance(services_doc, dict) or not services_doc:
        raise ComposeError(f"{paths[0]}: no services defined" if not services_doc else
                           f"{paths[0]}: services must be a mapping")
    services = {}
    for sname, svc in services_doc.items():
        sname = str(sname)
        if not SERVICE_NAME.match(sname):
            raise ComposeError(f'invalid service name "{sname}"')
        services[sname] = normalize_service(sname, svc, working_dir, env, warnings)
    networks = _resources("networks", doc.get("networks"), name)
    volumes = _resources("volumes", doc.get("volumes"), name)
    _check_references(services, networks, volumes)
    if any("default" in s["networks"] for s in services.values()) and "default" not in networks:
        networks["default"] = {"name": f"{name}_default"}
    graph.check(services)
    return Project(name, working_dir, paths, services, networks, volumes, warnings)


def _check_references(services: dict[str, dict], networks: dict[str, dict], volumes: dict[str, dict]) -> None:
    names = {s.get("container_name") for s in services.values() if s.get("container_name")}
    if len(names) != sum(1 for s in services.values() if s.get("container_name")):
        raise ComposeError("two services have the same container_name")
    for sname, svc in services.items():
        for net in svc["networks"]:
            if net != "default" and net not in networks:
                raise ComposeError(f'service "{sname}" refers to undefined network {net}')
        for m in svc["volumes"]:
            if m["type"] == "volume" and m.get("source") and m["source"] not in volumes:
                raise ComposeError(f'service "{sname}" refers to undefined volume {m["source"]}')


def print_warnings(project: Project) -> None:
    for w in project.warnings:
        sys.stderr.write(f"WARN: {w}\n")
