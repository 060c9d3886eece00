"""cgroup v1: one directory per controller hierarchy, <root>/<controller>/<parent>/<id>."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from services.runtime.cgroups import (
    DEFAULT_CPU_PERIOD_US,
    DeviceAccess,
    Limits,
    read_int,
    read_keyed,
    read_pids,
    rmdir_if_empty,
    rmdir_retry,
    wait_for,
    write,
)

# cpuset is left out: a new cpuset cgroup needs cpus/mems copied in before it accepts tasks.
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "blkio", "devices")
UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-rounded number


class V1Manager:
    version = "v1"

    def __init__(self, root: Path, parent: str) -> None:
        self.root = Path(root)
        self.parent = parent.strip("/")
        # On many hosts cpu and cpuacct share one hierarchy (cpu,cpuacct with symlinks): dedupe.
        self.controllers: dict[str, Path] = {}
        for c in CONTROLLERS:
            base = self.root / c
            if (base / "cgroup.procs").exists():
                self.controllers[c] = base
        self._unique: list[str] = []
        seen: set[str] = set()
        for c, base in self.controllers.items():
            real = os.path.realpath(base)
            if real not in seen:
                seen.add(real)
                self._unique.append(c)
        self.enforces_devices = "devices" in self.controllers

    def _dir(self, controller: str, cid: str) -> Path:
        return self.controllers[controller] / self.parent / cid

    def dirs(self, cid: str) -> list[Path]:
        return [self._dir(c, cid) for c in self._unique]

    def exists(self, cid: str) -> bool:
        return any(d.is_dir() for d in self.dirs(cid))

    def create(self, cid: str, limits: Limits) -> list[Path]:
        for d in self.dirs(cid):
            d.mkdir(parents=True, exist_ok=True)
        try:
            if limits.devices is not None and self.enforces_devices:
                self._set_devices(self._dir("devices", cid), limits.devices)
            self.apply(cid, limits)
        except OSError:
            self.remove(cid)
            raise
        return [d / "cgroup.procs" for d in self.dirs(cid)]

    @staticmethod
    def _set_devices(d: Path, access: DeviceAccess) -> None:
        """Deny everything, then allow each rule; a new cgroup starts with its parent's list.

        Before any process joins: no window where the container runs unconfined. A rule the
        parent itself does not grant (Berth nested in a confined cgroup) is refused with EPERM
        by the kernel; that device stays denied, which is what the container would get anyway.
        """
        if access.allow_all:
            with contextlib.suppress(PermissionError):
                write(d / "devices.allow", "a")
            return
        write(d / "devices.deny", "a")
        for rule in access.rules:
            try:
                write(d / "devices.allow", rule)
            except PermissionError:
                continue

    def apply(self, cid: str, limits: Limits) -> None:
        if "memory" in self.controllers and limits.memory_bytes > 0:
            self._set_memory(self._dir("memory", cid), limits.memory_bytes)
        if "cpu" in self.controllers:
            cpu = self._dir("cpu", cid)
            if limits.cpu_quota_us > 0:
                write(cpu / "cpu.cfs_period_us", limits.cpu_period_us or DEFAULT_CPU_PERIOD_US)
                write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us)
            if limits.cpu_shares > 0:
                write(cpu / "cpu.shares", limits.cpu_shares)
        if "pids" in self.controllers and limits.pids_limit > 0:
            write(self._dir("pids", cid) / "pids.max", limits.pids_limit)

    @staticmethod
    def _set_memory(d: Path, value: int) -> None:
        """memory.limit_in_bytes <= memory.memsw.limit_in_bytes must hold at every step:
        lowering sets the memory limit first, raising sets memsw first. Same value: no swap."""
        memsw = d / "memory.memsw.limit_in_bytes"
        limit = d / "memory.limit_in_bytes"
        if not memsw.exists():
            write(limit, value)
            return
        try:
            write(limit, value)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            write(memsw, value)
            write(limit, value)
            return
        write(memsw, value)

    def oom_killed(self, cid: str) -> bool:
        if "memory" not in self.controllers:
            return False
        return read_keyed(self._dir("memory", cid) / "memory.oom_control").get("oom_kill", 0) > 0

    def cpu_usage_ns(self, cid: str) -> int:
        if "cpuacct" not in self.controllers:
            return 0
        try:
            return int((self._dir("cpuacct", cid) / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return 0

    def memory_usage_bytes(self, cid: str) -> int:
        try:
            return int((self._dir("memory", cid) / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError, KeyError):
            return 0

    def _freezer(self, cid: str) -> Path:
        if "freezer" not in self.controllers:
            raise OSError(errno.ENOTSUP, "the freezer cgroup controller is not mounted")
        return self._dir("freezer", cid) / "freezer.state"

    def freeze(self, cid: str) -> None:
        state = self._freezer(cid)
        write(state, "FROZEN")
        wait_for(lambda: state.read_text().strip() == "FROZEN", "the freezer")

    def thaw(self, cid: str) -> None:
        write(self._freezer(cid), "THAWED")

    def frozen(self, cid: str) -> bool:
        if "freezer" not in self.controllers:
            return False
        try:
            return self._freezer(cid).read_text().strip() in ("FROZEN", "FREEZING")
        except OSError:
            return False

    def pids(self, cid: str) -> list[int]:
        for c in ("pids", "memory", "freezer", "cpu"):
            if c in self.controllers:
                return read_pids(self._dir(c, cid) / "cgroup.procs")
        return []

    def stats(self, cid: str) -> dict[str, int]:
        out = {"memory_limit": 0, "pids": 0, "block_read": 0, "block_write": 0}
        if "memory" in self.controllers:
            limit = read_int(self._dir("memory", cid) / "memory.limit_in_bytes")
            out["memory_limit"] = 0 if limit >= UNLIMITED else limit
        if "pids" in self.controllers:
            out["pids"] = read_int(self._dir("pids", cid) / "pids.current")
        if "blkio" in self.controllers:
            try:
                text = (self._dir("blkio", cid) / "blkio.throttle.io_service_bytes").read_text()
            except OSError:
                text = ""
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in ("Read", "Write"):
                    out["block_read" if parts[1] == "Read" else "block_write"] += int(parts[2])
        return out

    def remove(self, cid: str) -> None:
        for d in self.dirs(cid):
            rmdir_retry(d)

    def remove_parent(self) -> None:
        for path in self.controllers.values():
            rmdir_if_empty(path / self.parent)
