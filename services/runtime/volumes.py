"""Named volumes: directories under ``<runtime_dir>/volumes/<name>/_data``, recorded in
the runtime's DB. A volume outlives the containers using it; removing one that any
container (running or not) refers to is refused, like Docker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.runtime.models import ContainerRecord
from services.runtime.plumbing_models import VolumeRecord

VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,254}$")  # a directory name: 255 bytes at most


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


class VolumeStore:
    def __init__(self, runtime_dir: Path, sessions: sessionmaker) -> None:
        self.dir = Path(runtime_dir) / "volumes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sessions = sessions

    def path(self, name: str) -> Path:
        return self.dir / name / "_data"

    def create(self, name: str = "", labels: dict[str, str] | None = None, driver: str = "",
               anonymous: bool = False) -> VolumeRecord:
        """Create a volume; an existing one of that name is returned as is (Docker's behaviour)."""
        if driver not in ("", "local"):
            raise errors.InvalidArgument(f"volume driver {driver!r} is not supported: only local")
        if not name:
            name, anonymous = secrets.token_hex(32), True
        if not VOLUME_NAME_RE.match(name):
            raise errors.InvalidArgument(
                f'create {name}: "{name}" includes invalid characters for a local volume name, '
                "only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed")
        with self.sessions() as s:
            rec = s.get(VolumeRecord, name)
            if rec is not None:
                return rec
            self.path(name).mkdir(parents=True, exist_ok=True)
            rec = VolumeRecord(name=name, created_ns=time.time_ns(), labels_json=json.dumps(labels or {}),
                               anonymous=int(anonymous))
            s.add(rec)
            s.commit()
            return rec

    def get(self, name: str) -> VolumeRecord:
        with self.sessions() as s:
            rec = s.get(VolumeRecord, name or "")
            if rec is None:
                raise errors.NotFound(f"get {name}: no such volume")
            return rec

    def list(self) -> list[VolumeRecord]:
        with self.sessions() as s:
            return list(s.scalars(select(VolumeRecord).order_by(VolumeRecord.name)).all())

    def users(self) -> dict[str, list[str]]:
        """Volume name -> ids of the containers whose spec mounts it."""
        out: dict[str, list[str]] = {}
        with self.sessions() as s:
            for rec in s.scalars(select(ContainerRecord)).all():
                spec = json_format.Parse(rec.spec_json, runtime_pb2.ContainerSpec(), ignore_unknown_fields=True)
                for m in spec.mounts:
                    if m.type == "volume" and m.source:
                        out.setdefault(m.source, []).append(rec.id)
        return out

    def remove(self, name: str, force: bool = False) -> None:
        self.get(name)
        users = self.users().get(name, [])
        if users:
            raise errors.FailedPrecondition(
                f"remove {name}: volume is in use - [{', '.join(users)}]")
        with self.sessions() as s:
            rec = s.get(VolumeRecord, name)
            if rec is not None:
                s.delete(rec)
                s.commit()
        shutil.rmtree(self.dir / name, ignore_errors=True)

    def prune(self, all_: bool = False) -> tuple[list[str], int]:
        users = self.users()
        deleted, space = [], 0
        for rec in self.list():
            if rec.name in users or not (all_ or rec.anonymous):
                continue
            space += _dir_size(self.path(rec.name))
            self.remove(rec.name)
            deleted.append(rec.name)
        return deleted, space

    def to_proto(self, rec: VolumeRecord, users: dict[str, list[str]] | None = None):  # noqa: ANN201
        from berth.runtime.v1 import storage_pb2

        return storage_pb2.Volume(name=rec.name, driver="local", mountpoint=str(self.path(rec.name)),
                                  created_unix_nano=rec.created_ns, labels=json.loads(rec.labels_json or "{}"),
                                  anonymous=bool(rec.anonymous), used_by=(users or {}).get(rec.name, []))
