"""cgroups: detect the host's hierarchy and give one Manager interface over v1 and v2.

The runtime server creates a container's cgroups and writes its limits before the
spawn; the container's first process joins them by writing its own pid into each
``procs_files`` entry (before it unshares its cgroup namespace).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class DeviceAccess:
    """The device nodes a container may open or create (the devices cgroup, like OCI's
    ``linux.resources.devices``): everything (``--privileged``) or only ``rules``.

    Rules use cgroup v1's syntax, "TYPE MAJOR:MINOR ACCESS" ("c 1:3 rwm", "b *:* m");
    ``services/runtime/security/devices.py`` builds them from Docker's defaults and ``--device``.
    """

    allow_all: bool = False
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 0       # 0: unlimited
    cpu_quota_us: int = 0       # 0: unlimited
    cpu_period_us: int = 0      # 0: default (100 ms)
    pids_limit: int = 0         # 0: unlimited
    cpu_shares: int = 0         # 0: default
    # Written once, at create (not by ``apply``: narrowing a live allow-list would race the
    # container's opens). None: not confined, the parent's (the host's) access is inherited.
    devices: DeviceAccess | None = None


DEFAULT_CPU_PERIOD_US = 100_000


class Manager(Protocol):
    version: str
    # True where ``Limits.devices`` is enforced by the kernel (v1's devices controller, v2's
    # BPF device program); the default seccomp profile then allows mknod, as Docker's does
    # (opening a node off the list stays refused).
    enforces_devices: bool

    def create(self, cid: str, limits: Limits) -> list[Path]:
        """Create the container's cgroups, apply limits, return the procs files to join."""

    def dirs(self, cid: str) -> list[Path]: ...

    def exists(self, cid: str) -> bool: ...

    def oom_killed(self, cid: str) -> bool: ...

    def cpu_usage_ns(self, cid: str) -> int: ...

    def memory_usage_bytes(self, cid: str) -> int: ...

    def apply(self, cid: str, limits: Limits) -> None:
        """Write the limits that are set (> 0) to an existing container's cgroups (update)."""

    def freeze(self, cid: str) -> None:
        """Freeze every process of the container (pause); returns once they are frozen."""

    def thaw(self, cid: str) -> None: ...

    def frozen(self, cid: str) -> bool: ...

    def pids(self, cid: str) -> list[int]:
        """Host pids of every process in the container's cgroup."""

    def stats(self, cid: str) -> dict[str, int]:
        """memory_limit, pids, block_read, block_write (0 where unknown)."""

    def remove(self, cid: str) -> None:
        """Remove the container's cgroups (all its processes must be gone or going)."""

    def remove_parent(self) -> None:
        """Remove Berth's parent cgroup(s) if no container is left in them."""


def detect(root: Path) -> str:
    """"v2" on a pure unified host, "v1" where per-controller hierarchies are mounted (incl. hybrid)."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if any((root / c / "cgroup.procs").exists() for c in ("memory", "cpu", "pids")):
        return "v1"
    raise RuntimeError(f"no usable cgroup hierarchy under {root}")


def new_manager(root: Path, parent: str) -> Manager:
    from services.runtime.cgroups.v1 import V1Manager
    from services.runtime.cgroups.v2 import V2Manager

    return V2Manager(root, parent) if detect(root) == "v2" else V1Manager(root, parent)


def write(path: Path, value: str | int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def read_keyed(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, memory.oom_control, cpu.stat)."""
    out = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def rmdir_if_empty(path: Path) -> None:
    """rmdir that leaves a cgroup still holding children or processes alone."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            raise


def rmdir_retry(path: Path, timeout: float = 2.0) -> None:
    """rmdir a cgroup, retrying briefly while its last processes drain (EBUSY)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise OSError(errno.EBUSY, f"timed out waiting for {what}")
        time.sleep(0.005)


def read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


def read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except OSError:
        return default
    if text == "max":
        return default
    try:
        return int(text)
    except ValueError:
        return default
