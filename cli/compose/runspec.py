"""A service in normal form -> the api's RunSpec, its labels and its config hash.

The hash covers everything that shapes the container (not depends_on or build, which
shape the order and the image); `up` recreates a container when its hash or its
image's id changed, and leaves it alone otherwise.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from cli.compose.durations import parse_duration_ns
from cli.compose.loader import Project

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_HASH = "com.docker.compose.config-hash"
LABEL_IMAGE = "com.docker.compose.image"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_WORKDIR = "com.docker.compose.project.working_dir"
LABEL_FILES = "com.docker.compose.project.config_files"
LABEL_NETWORK = "com.docker.compose.network"
LABEL_VOLUME = "com.docker.compose.volume"
LABEL_DEPENDS = "com.docker.compose.depends_on"

HASH_EXCLUDED = ("depends_on", "build", "pull_policy")


def container_name(project: Project, service: str, number: int = 1) -> str:
    return project.services[service].get("container_name") or f"{project.name}-{service}-{number}"


def config_hash(project: Project, service: str) -> str:
    """sha256 of the service's normal form plus the real names of its networks and volumes."""
    svc = project.services[service]
    doc = {k: v for k, v in svc.items() if k not in HASH_EXCLUDED}
    doc["image"] = project.image_of(service)
    doc["_networks"] = {n: project.networks[n]["name"] for n in svc["networks"]}
    doc["_volumes"] = {m["source"]: project.volumes[m["source"]]["name"]
                       for m in svc["volumes"] if m["type"] == "volume" and m.get("source")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def labels(project: Project, service: str, image_id: str, number: int = 1) -> dict[str, str]:
    svc = project.services[service]
    return {**svc.get("labels", {}), LABEL_PROJECT: project.name, LABEL_SERVICE: service,
            LABEL_NUMBER: str(number), LABEL_HASH: config_hash(project, service), LABEL_IMAGE: image_id,
            LABEL_ONEOFF: "False", LABEL_WORKDIR: str(project.working_dir),
            LABEL_FILES: ",".join(str(p) for p in project.config_files),
            LABEL_DEPENDS: ",".join(f"{d}:{c['condition']}:{str(c['required']).lower()}"
                                    for d, c in svc["depends_on"].items())}


def healthcheck(types: Any, health: dict) -> Any:
    """The compose healthcheck -> berth.types.v1.HealthCheck."""
    hc = types.HealthCheck(test=health.get("test", []), retries=health.get("retries", 0))
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if key in health:
            setattr(hc, f"{key}_ns", parse_duration_ns(health[key]))
    return hc


def run_spec(client: Any, project: Project, service: str, image_id: str, number: int = 1) -> tuple[Any, list]:
    """The RunSpec to create the service's container, and the (network, ConnectRequest fields)
    to connect it to after creation: RunSpec carries one network, compose services may have more."""
    from cli import output, specs
    from cli.client import CliError
    from cli.commands.containers import restart_policy

    svc = project.services[service]
    resources = client.runtime.Resources()
    if svc.get("mem_limit"):
        try:
            resources.memory_bytes = output.parse_size(svc["mem_limit"])
        except ValueError:
            raise CliError(f'service "{service}": invalid mem_limit {svc["mem_limit"]!r}') from None
    if svc.get("cpus"):
        resources.cpu_period_us = 100_000
        resources.cpu_quota_us = int(svc["cpus"] * 100_000)
    if svc.get("pids_limit"):
        resources.pids_limit = svc["pids_limit"]
    grace = svc.get("stop_grace_period")
    spec = client.api.RunSpec(
        image=project.image_of(service), command=svc.get("command") or [],
        env=[f"{k}={v}" for k, v in svc["environment"].items()], workdir=svc.get("working_dir", ""),
        user=svc.get("user", ""), hostname=svc.get("hostname", ""), name=container_name(project, service, number),
        resources=resources, labels=labels(project, service, image_id, number), detach=True,
        tty=svc.get("tty", False), interactive=svc.get("stdin_open", False),
        stop_timeout=math.ceil(parse_duration_ns(grace) / 1e9) if grace else -1,
        stop_signal=svc.get("stop_signal", ""), restart_policy=restart_policy(client, svc.get("restart", "")),
        read_only=svc.get("read_only", False))
    if svc.get("entrypoint") is not None:
        spec.entrypoint_set = True
        spec.entrypoint.extend(svc["entrypoint"])
    for m in svc["volumes"]:
        m = dict(m)
        if m["type"] == "volume" and m.get("source"):
            m["source"] = project.volumes[m["source"]]["name"]
        spec.mounts.add(**m)
    for item in svc.get("tmpfs", []):
        spec.mounts.add(**specs.parse_tmpfs(item))
    if "healthcheck" in svc:
        spec.healthcheck.CopyFrom(healthcheck(client.types, svc["healthcheck"]))
    net = spec.network
    for port in svc["ports"]:
        net.ports.add(**port)
    net.dns.extend(svc.get("dns", []))
    net.dns_search.extend(svc.get("dns_search", []))
    net.extra_hosts.extend(svc.get("extra_hosts", []))
    extra: list[dict] = []
    if svc.get("network_mode"):
        net.mode = svc["network_mode"]
    for i, (name, conf) in enumerate(svc["networks"].items()):
        aliases = [service, *conf.get("aliases", [])]
        if i == 0:
            net.mode = project.networks[name]["name"]
            net.aliases.extend(aliases)
            net.ipv4_address = conf.get("ipv4_address", "")
        else:
            extra.append({"network": project.networks[name]["name"], "aliases": aliases,
                          "ipv4_address": conf.get("ipv4_address", "")})
    return spec, extra
