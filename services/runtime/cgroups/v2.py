"""cgroup v2: one unified tree, <root>/<parent>/<id>, controllers enabled down the path."""

from __future__ import annotations

import contextlib
from pathlib import Path

from services.runtime.cgroups import (
    DEFAULT_CPU_PERIOD_US,
    Limits,
    devices_bpf,
    read_int,
    read_keyed,
    read_pids,
    rmdir_if_empty,
    rmdir_retry,
    wait_for,
    write,
)

WANTED = ("memory", "cpu", "pids", "io")


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] onto v2 cpu.weight [1, 10000]."""
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


class V2Manager:
    version = "v2"

    def __init__(self, root: Path, parent: str) -> None:
        self.root = Path(root)
        self.parent = parent.strip("/")
        # v2 has no devices controller: a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the
        # container's cgroup decides (devices_bpf). A kernel without cgroup BPF leaves
        # ``Limits.devices`` unenforced, and the default seccomp profile then keeps refusing
        # mknod of device nodes instead.
        self.enforces_devices = devices_bpf.supported()

    def _dir(self, cid: str) -> Path:
        return self.root / self.parent / cid

    def dirs(self, cid: str) -> list[Path]:
        return [self._dir(cid)]

    def exists(self, cid: str) -> bool:
        return self._dir(cid).is_dir()

    def _enable_controllers(self) -> None:
        """Enable +memory +cpu +pids in subtree_control from the root down to our parent."""
        node = self.root
        parts = [p for p in self.parent.split("/") if p]
        chain = [node]
        for p in parts:
            node = node / p
            chain.append(node)
        for i, d in enumerate(chain):
            if i > 0:
                d.mkdir(exist_ok=True)
            try:
                available = set((d / "cgroup.controllers").read_text().split())
            except OSError:
                available = set(WANTED)
            try:
                enabled = set((d / "cgroup.subtree_control").read_text().split())
            except OSError:
                enabled = set()
            for c in WANTED:
                if c in available and c not in enabled:
                    with contextlib.suppress(OSError):
                        write(d / "cgroup.subtree_control", "+" + c)

    def create(self, cid: str, limits: Limits) -> list[Path]:
        self._enable_controllers()
        d = self._dir(cid)
        d.mkdir(exist_ok=True)
        try:
            access = limits.devices
            if access is not None and not access.allow_all and self.enforces_devices:
                devices_bpf.attach(d, access.rules)  # before any process joins
            self.apply(cid, limits)
        except OSError:
            self.remove(cid)
            raise
        return [d / "cgroup.procs"]

    def apply(self, cid: str, limits: Limits) -> None:
        d = self._dir(cid)
        if limits.memory_bytes > 0:
            write(d / "memory.max", limits.memory_bytes)
            if (d / "memory.swap.max").exists():
                write(d / "memory.swap.max", 0)
        if limits.cpu_quota_us > 0:
            write(d / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us or DEFAULT_CPU_PERIOD_US}")
        if limits.cpu_shares > 0:
            write(d / "cpu.weight", shares_to_weight(limits.cpu_shares))
        if limits.pids_limit > 0:
            write(d / "pids.max", limits.pids_limit)

    def oom_killed(self, cid: str) -> bool:
        return read_keyed(self._dir(cid) / "memory.events").get("oom_kill", 0) > 0

    def cpu_usage_ns(self, cid: str) -> int:
        return read_keyed(self._dir(cid) / "cpu.stat").get("usage_usec", 0) * 1000

    def memory_usage_bytes(self, cid: str) -> int:
        try:
            return int((self._dir(cid) / "memory.current").read_text())
        except (OSError, ValueError):
            return 0

    def freeze(self, cid: str) -> None:
        d = self._dir(cid)
        write(d / "cgroup.freeze", 1)
        wait_for(lambda: read_keyed(d / "cgroup.events").get("frozen") == 1, "cgroup.freeze")

    def thaw(self, cid: str) -> None:
        write(self._dir(cid) / "cgroup.freeze", 0)

    def frozen(self, cid: str) -> bool:
        return read_int(self._dir(cid) / "cgroup.freeze") == 1

    def pids(self, cid: str) -> list[int]:
        return read_pids(self._dir(cid) / "cgroup.procs")

    def stats(self, cid: str) -> dict[str, int]:
        d = self._dir(cid)
        out = {"memory_limit": read_int(d / "memory.max"), "pids": read_int(d / "pids.current"),
               "block_read": 0, "block_write": 0}
        try:
            text = (d / "io.stat").read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key in ("rbytes", "wbytes") and value.isdigit():
                    out["block_read" if key == "rbytes" else "block_write"] += int(value)
        return out

    def remove(self, cid: str) -> None:
        rmdir_retry(self._dir(cid))

    def remove_parent(self) -> None:
        rmdir_if_empty(self.root / self.parent)
