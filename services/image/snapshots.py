"""Snapshots: a writable overlay (upper + work dir) on top of an image's layers.

The snapshotter only manages directories and computes mount specs; the runtime
service does the mounting inside the container's mount namespace. Keys become
directory names, so they are validated to never be paths.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.mount import Mount
from services.image.layers import remove_tree

KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise InvalidArgument(f"invalid snapshot key {key!r}: must match {KEY_RE.pattern}")
    return key


class Snapshotter(Protocol):
    def prepare(self, key: str, lowerdirs: list[Path]) -> Mount: ...
    def mounts(self, key: str, lowerdirs: list[Path]) -> Mount: ...
    def remove(self, key: str) -> None: ...
    def list_keys(self) -> list[str]: ...


class OverlaySnapshotter:
    """`<root>/<key>/{upper,work}`; an image without layers gets `empty` as its lower dir."""

    def __init__(self, root: Path, scratch: Path, empty_dir: Path) -> None:
        self.root = root
        self.scratch = scratch
        self.empty_dir = empty_dir
        root.mkdir(parents=True, exist_ok=True)
        empty_dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def mounts(self, key: str, lowerdirs: list[Path]) -> Mount:
        """`lowerdirs` bottom first in, topmost first out, as overlayfs wants them."""
        base = self.path(key)
        lowers = [str(p) for p in reversed(lowerdirs)] or [str(self.empty_dir)]
        return Mount(type="overlay", lowerdirs=lowers, upperdir=str(base / "upper"), workdir=str(base / "work"))

    def prepare(self, key: str, lowerdirs: list[Path]) -> Mount:
        """Build the dirs in scratch space and rename, so a crash leaves no half snapshot."""
        dest = self.path(key)
        if dest.exists():
            raise AlreadyExists(f"snapshot {key} already exists")
        tmp = Path(tempfile.mkdtemp(prefix="snap-", dir=self.scratch))
        try:
            os.chmod(tmp, 0o711)
            (tmp / "upper").mkdir(0o755)
            (tmp / "work").mkdir(0o700)
            os.rename(tmp, dest)
        except BaseException:
            remove_tree(tmp)
            raise
        return self.mounts(key, lowerdirs)

    def remove(self, key: str) -> None:
        dest = self.path(key)
        if not dest.exists():
            raise NotFound(f"snapshot {key} not found")
        trash = Path(tempfile.mkdtemp(prefix="gc-", dir=self.scratch))
        os.rename(dest, trash / "snapshot")
        remove_tree(trash)

    def list_keys(self) -> list[str]:
        return [e.name for e in os.scandir(self.root) if e.is_dir() and KEY_RE.match(e.name)]
