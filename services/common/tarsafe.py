"""Checks for extracting an untrusted tar member, on every Python 3.11.

tarfile's extraction filters (`tar_filter`, `filter=`) arrived in 3.11.4, and
Debian 12 ships 3.11.2, so Berth checks members itself: no absolute or `..`
names landing outside the destination (resolved through symlinks already on
disk, so `a -> /etc` then `a/passwd` is refused), no hard links to outside.
Symlinks themselves are kept verbatim, never followed, and so are modes
(setuid included): `cp` must copy them as they are.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any

# On Pythons with filters, tell tarfile we checked (and silence its 3.12+ warning).
EXTRACT_KWARGS: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def _inside(dest: str, path: str) -> bool:
    return os.path.commonpath([dest, path]) == dest


def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """The member, with leading slashes stripped, if extracting it under `dest` is safe;
    tarfile.TarError naming the member otherwise."""
    dest = os.path.realpath(dest)
    name = member.name.lstrip("/")
    # Only the parent is resolved: the member itself may be a symlink, kept verbatim.
    target = os.path.join(os.path.realpath(os.path.join(dest, os.path.dirname(name))), os.path.basename(name))
    if not name or not _inside(dest, target):
        raise tarfile.TarError(f"{member.name!r} would be extracted outside {dest}")
    if member.islnk():
        link_target = os.path.realpath(os.path.join(dest, member.linkname.lstrip("/")))
        if not _inside(dest, link_target):
            raise tarfile.TarError(f"{member.name!r} links outside {dest} ({member.linkname})")
    member.name = name
    return member


def extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    """Extract one member after `check`, keeping numeric owners."""
    tar.extract(check(member, dest), dest, numeric_owner=True, **EXTRACT_KWARGS)
