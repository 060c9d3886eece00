"""What a test may leave on the host: nothing. Snapshot before, compare after."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
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


# Berth's network objects (services/runtime/network/manager.py): bridges <tag>0 and
# <tag><8 hex>, veths v<tag[-6:]><5 hex><n>, netns <tag>-<12 hex>, nft table <tag>.
# Objects of *other* Berth instances (tests running in parallel) are not ours to judge.
_TAG = r"(berth|b[0-9a-f]{6})"
_BERTH_NAMES = re.compile(rf"^(?:{_TAG}(?:0|[0-9a-f]{{8}})|v(?:berth|[0-9a-f]{{6}})[0-9a-f]{{5}}\d+"
                          rf"|{_TAG}-[0-9a-f]{{12}}|{_TAG})$")


def _instance_tag(cgroup_parent: str) -> str:
    return "berth" if cgroup_parent == "berth" else "b" + hashlib.sha1(cgroup_parent.encode()).hexdigest()[:6]


def _ours(names: set[str], tag: str) -> set[str]:
    """Drop names following Berth's scheme that carry another instance's tag."""
    keep = set()
    for name in names:
        if _BERTH_NAMES.match(name) and not (name.startswith(tag) or name.startswith("v" + tag[-6:])):
            continue
        keep.add(name)
    return keep


def _our_mounts(mounts: set[str], tag: str) -> set[str]:
    """Named netns are bind mounts under /run/netns: another instance's are not ours, and
    /run/netns itself (made a shared mount point on first use, as iproute2 does) stays."""
    keep = set()
    for m in mounts:
        point = m.split(" ", 1)[-1]
        if point == "/run/netns":
            continue
        if point.startswith("/run/netns/") and not _ours({point.rsplit("/", 1)[-1]}, tag):
            continue
        keep.add(m)
    return keep


def _nft_tables() -> set[str]:
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return set()
    return {line.split()[-1] for line in out.splitlines() if line.startswith("table")}


@dataclass
class HostState:
    mounts: set[str]
    cgroups: set[str]
    netns: set[str]
    links: set[str]
    nft: set[str] = field(default_factory=set)

    @classmethod
    def capture(cls, cgroup_parent: str) -> HostState:
        tag = _instance_tag(cgroup_parent)
        return cls(_our_mounts(_mounts(), tag), _cgroups(cgroup_parent), _ours(_netns(), tag), _ours(_links(), tag),
                   _ours(_nft_tables(), tag))

    def leaks_since(self, before: HostState) -> list[str]:
        leaks = []
        for name in ("mounts", "cgroups", "netns", "links", "nft"):
            new = getattr(self, name) - getattr(before, name)
            if new:
                leaks.append(f"{name}: {sorted(new)[:5]}")
        return leaks


def remove_instance_network(cgroup_parent: str) -> list[str]:
    """Safety net for a test instance's end: delete the bridges, veths, netns and nft table
    carrying its tag (left only if its runtime died without a graceful stop). Returns what
    had to be removed, so callers can say so; another instance's objects are never touched."""
    tag = _instance_tag(cgroup_parent)
    if tag == "berth":
        return []  # the system instance's objects are its own business
    removed = []
    for name in sorted(_links()):
        if _BERTH_NAMES.match(name) and (name.startswith(tag) or name.startswith("v" + tag[-6:])):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            removed.append(name)
    for name in sorted(_netns()):
        if name.startswith(tag + "-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    if tag in _nft_tables():
        subprocess.run(["nft", "delete", "table", "ip", tag], capture_output=True)
        removed.append(f"nft table {tag}")
    return removed
