"""The content store: blobs addressed by their sha256 digest.

A blob becomes visible only by rename after it was hashed and fsynced, so a
crash never leaves a half-written blob under `blobs/sha256/`; the temp files it
leaves in the scratch dir are removed at start-up. Writing is two-phase
(`finish` verifies and syncs, `commit` publishes) so a multi-blob operation
such as a load can verify everything before publishing anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from services.common.errors import InvalidArgument, NotFound

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    """Only well-formed sha256 digests may name a file: never a path."""
    if not DIGEST_RE.match(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    def finish(self) -> str: ...
    def commit(self) -> str: ...
    def abort(self) -> None: ...


class ContentStore(Protocol):
    """What the rest of the image service needs from a content store."""

    def exists(self, digest: str) -> bool: ...
    def open(self, digest: str) -> BinaryIO: ...
    def read(self, digest: str) -> bytes: ...
    def writer(self, expected: str | None = None) -> BlobWriter: ...
    def write_bytes(self, data: bytes, expected: str | None = None) -> str: ...
    def delete(self, digest: str) -> None: ...
    def digests(self) -> Iterator[str]: ...


class LocalBlobWriter:
    """Stream into a temp file, hashing as we go; publish by rename."""

    def __init__(self, store: LocalContentStore, expected: str | None) -> None:
        self._store = store
        self._expected = check_digest(expected) if expected else None
        fd, name = tempfile.mkstemp(prefix="blob-", dir=store.scratch)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest: str | None = None

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def finish(self) -> str:
        """Verify the digest and make the bytes durable; nothing is visible yet."""
        if self.digest is None:
            digest = "sha256:" + self._hash.hexdigest()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._expected is not None and digest != self._expected:
                self.abort()
                raise InvalidArgument(f"digest mismatch for blob {self._expected}: content hashes to {digest}")
            self.digest = digest
        return self.digest

    def commit(self) -> str:
        """Publish the blob; if the same content is already stored, keep that copy."""
        digest = self.finish()
        dest = self._store.path(digest)
        if dest.exists():
            self._tmp.unlink(missing_ok=True)
        else:
            os.chmod(self._tmp, 0o644)
            os.rename(self._tmp, dest)
            fsync_dir(dest.parent)
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalContentStore:
    """Blobs as files under `<root>/sha256/<hex>`; temp files in `scratch` (same fs)."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.scratch = scratch
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / check_digest(digest).split(":", 1)[1]

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def writer(self, expected: str | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self, expected)

    def write_bytes(self, data: bytes, expected: str | None = None) -> str:
        w = self.writer(expected)
        try:
            w.write(data)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for entry in os.scandir(self.root / "sha256"):
            if re.fullmatch(r"[0-9a-f]{64}", entry.name):
                yield "sha256:" + entry.name
