"""What a test may leave on the host: nothing. Snapshot before, compare after."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _mounts() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {" ".join(line.split()[3:5]) for line in f}


def _cgroups(parent: str) -> set[str]:
    found = set()
    for base in [CGROUP_ROOT, *[p for p in CGROUP_ROOT.iterdir() if p.is_dir()]]:
        d = base / parent
        if d.is_dir():
            found |= {str(p) for p in d.iterdir() if p.is_dir()}
    return found


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@dataclass
class HostState:
    mounts: set[str]
    cgroups: set[str]
    netns: set[str]
    links: set[str]

    @classmethod
    def capture(cls, cgroup_parent: str) -> HostState:
        return cls(_mounts(), _cgroups(cgroup_parent), _netns(), _links())

    def leaks_since(self, before: HostState) -> list[str]:
        leaks = []
        for field in ("mounts", "cgroups", "netns", "links"):
            new = getattr(self, field) - getattr(before, field)
            if new:
                leaks.append(f"{field}: {sorted(new)[:5]}")
        return leaks
