"""What a container is plugged into: volumes, bind/tmpfs mounts and networks.

``Containers`` (containers.py) calls these hooks at a few points of a container's
life, so all of the storage and network logic lives here and in ``network/``:

- ``on_create``: validate mounts, ports and the network mode, create named (and
  anonymous) volumes, record network memberships. Nothing is half-made on error.
- ``prepare``: at start, the mount list for the init and the prepared network
  namespace (veth, address, routes, NAT rules), and the /etc/hosts and resolv.conf.
- ``release``: when a run ends (or never began): veths, netns, rules, leases go.
- ``removed``: the container is gone: its memberships (and, with --rm, its anonymous
  volumes) go too.
- ``renamed``: other containers' /etc/hosts learn the new name.

``NoPlumbing`` is the default: a ``Containers`` built without it (unit tests) behaves
as before this existed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from google.protobuf import json_format

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.runtime.volumes import VOLUME_NAME_RE, VolumeStore

log = logging.getLogger("berth.runtime")

MOUNT_TYPES = ("bind", "volume", "tmpfs")
PROPAGATIONS = ("", "rprivate", "private", "rshared", "shared", "rslave", "slave")


class NoPlumbing:
    """The hooks doing nothing: containers without volumes or networks (host netns unshared)."""

    def on_create(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec) -> None:
        return None

    def prepare(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec, cdir: Path,
                files: dict[str, str], hostname: str) -> dict:
        return {}

    def release(self, cid: str) -> None:
        return None

    def removed(self, cid: str, spec: runtime_pb2.ContainerSpec | None = None) -> None:
        return None

    def renamed(self, cid: str) -> None:
        return None


def validate_mounts(spec: runtime_pb2.ContainerSpec) -> None:
    """Refuse what cannot be mounted, before anything is recorded."""
    seen: set[str] = set()
    for m in spec.mounts:
        if m.type not in MOUNT_TYPES:
            raise errors.InvalidArgument(f"invalid mount config for type \"{m.type}\": mount type unknown")
        if not m.target.startswith("/"):
            raise errors.InvalidArgument(f"invalid mount config for type \"{m.type}\": "
                                         f"invalid mount path: '{m.target}' mount path must be absolute")
        target = os.path.normpath(m.target)
        if target == "/":
            raise errors.InvalidArgument(f"invalid mount config for type \"{m.type}\": "
                                         "invalid specification: destination can't be '/'")
        if target in seen:
            raise errors.InvalidArgument(f"Duplicate mount point: {target}")
        seen.add(target)
        if m.propagation not in PROPAGATIONS:
            raise errors.InvalidArgument(f"invalid propagation mode: {m.propagation}")
        if m.type == "bind":
            if not m.source.startswith("/"):
                raise errors.InvalidArgument(f"invalid mount config for type \"bind\": "
                                             f"invalid mount path: '{m.source}' mount path must be absolute")
            if not os.path.exists(m.source):
                raise errors.InvalidArgument(f"invalid mount config for type \"bind\": "
                                             f"bind source path does not exist: {m.source}")
        elif m.type == "volume" and m.source and not VOLUME_NAME_RE.match(m.source):
            raise errors.InvalidArgument(
                f'create {m.source}: "{m.source}" includes invalid characters for a local volume name, '
                "only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed")
        elif m.type == "tmpfs" and m.source:
            raise errors.InvalidArgument("invalid mount config for type \"tmpfs\": source must be empty")


class Plumbing(NoPlumbing):
    """Volumes and mounts here; networks delegated to ``network`` (a NetworkManager) if given."""

    def __init__(self, volumes: VolumeStore, network=None) -> None:  # noqa: ANN001 - NetworkManager | None
        self.volumes = volumes
        self.network = network

    def on_create(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec) -> None:
        validate_mounts(spec)
        if self.network is not None:
            self.network.validate(spec)
        for m in spec.mounts:
            if m.type == "volume":
                # Anonymous volumes get their random name now, so the spec records it.
                m.source = self.volumes.create(m.source, anonymous=not m.source).name
        if self.network is not None:
            self.network.on_create(cid, spec)

    def mount_list(self, spec: runtime_pb2.ContainerSpec) -> list[dict]:
        """The init's mount dicts: volumes resolved to their directories (re-created if
        deleted behind our back), seeded from the image unless ``nocopy``."""
        out = []
        for m in spec.mounts:
            d = json_format.MessageToDict(m, preserving_proto_field_name=True)
            if m.type == "volume":
                self.volumes.create(m.source)
                d["source"] = str(self.volumes.path(m.source))
                d["seed"] = not m.no_copy
            elif m.type == "bind" and not os.path.exists(m.source):
                raise errors.InvalidArgument(f"invalid mount config for type \"bind\": "
                                             f"bind source path does not exist: {m.source}")
            out.append(d)
        return out

    def prepare(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec, cdir: Path,
                files: dict[str, str], hostname: str) -> dict:
        extra: dict = {"mounts": self.mount_list(spec), "read_only": spec.read_only}
        if self.network is not None:
            extra.update(self.network.prepare(cid, name, spec, cdir, files, hostname))
        return extra

    def release(self, cid: str) -> None:
        if self.network is not None:
            try:
                self.network.release(cid)
            except Exception:  # noqa: BLE001 - a teardown must never block an exit being recorded
                log.exception("%s: cannot release its network", cid)

    def removed(self, cid: str, spec: runtime_pb2.ContainerSpec | None = None) -> None:
        """Memberships go; with --rm, so do the container's anonymous volumes (like Docker)."""
        if self.network is not None:
            self.network.removed(cid)
        if spec is not None and spec.auto_remove:
            users = self.volumes.users()
            for m in spec.mounts:
                if m.type != "volume" or m.source in users:
                    continue
                try:
                    if self.volumes.get(m.source).anonymous:
                        self.volumes.remove(m.source)
                except errors.BerthError as exc:
                    log.warning("%s: cannot remove anonymous volume %s: %s", cid, m.source, exc)

    def renamed(self, cid: str) -> None:
        if self.network is not None:
            self.network.refresh_names(cid)
