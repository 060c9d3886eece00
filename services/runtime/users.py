"""Resolve a container's ``user`` ("uid[:gid]" or names) against its /etc/passwd and /etc/group."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class UserError(Exception):
    pass


@dataclass
class ExecUser:
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    home: str = "/root"


def _read(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve(user: str, root: str | Path = "/") -> ExecUser:
    root = Path(root)
    passwd = [e for e in _read(root / "etc/passwd") if len(e) >= 7]
    group = [e for e in _read(root / "etc/group") if len(e) >= 3]
    name, _, grp = (user or "").partition(":")
    result = ExecUser()
    entry = None
    if name:
        for e in passwd:
            if e[0] == name or (name.isdigit() and e[2] == name):
                entry = e
                break
        if entry is None:
            if not name.isdigit():
                raise UserError(f"unable to find user {name}: no matching entries in passwd file")
            result.uid, result.gid, result.home = int(name), 0, "/"
        else:
            result.uid, result.gid, result.home = int(entry[2]), int(entry[3]), entry[5] or "/"
    elif passwd:
        for e in passwd:
            if e[2] == "0":
                entry = e
                result.home = e[5] or "/root"
                break
    if grp:
        for g in group:
            if g[0] == grp or (grp.isdigit() and g[2] == grp):
                result.gid = int(g[2])
                break
        else:
            if not grp.isdigit():
                raise UserError(f"unable to find group {grp}: no matching entries in group file")
            result.gid = int(grp)
    else:
        uname = entry[0] if entry else None
        if uname:
            result.groups = [int(g[2]) for g in group if len(g) > 3 and uname in g[3].split(",")]
    if result.gid not in result.groups:
        result.groups.insert(0, result.gid)
    return result
