"""The build context: a tar stream received into a private directory, .dockerignore applied.

The tar is read in stream mode and each member goes straight to disk through
the layer unpacker's extractor (services/image/layers.py): it never follows a
symlink, checks every parent with lstat (remembering the directories it made or
checked), refuses `..` out of the root and hard links to outside, and writes a
small file with one open, write and close. A context of many files or large
files never sits in memory, and no file is fsynced: the directory lives in the
image service's scratch space, which a crash leaves for the next start to sweep.
Names that look like OCI whiteouts (`.wh.*`) are ordinary files in a context,
so they are written under a neutral name and renamed.

The .dockerignore file (or `<Dockerfile>.dockerignore`) is honoured while
extracting once it has arrived, and once more at the end for what came before
it. The Dockerfile and the ignore file itself always arrive so the builder can
read them; if they are excluded, they are removed before any COPY can see them.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.image.build.dockerignore import Matcher
from services.image.layers import CORRUPT_ERRORS, WHITEOUT_PREFIX, UnsafeEntry, _Extractor, clean_name
from services.image.streams import ChunkStream, buffered

IGNORE_FILE = ".dockerignore"
# What a name in the tar (not the host) can cause: too long, or a file where a dir must be.
_BAD_NAME_ERRNOS = (errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.EINVAL)
IGNORE_LIMIT = 1 << 20


@dataclass
class Context:
    root: Path
    matcher: Matcher | None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _rel(name: str) -> str:
    rel = posixpath.normpath("/" + name).lstrip("/")
    return "" if rel == "." else rel


def ignore_candidates(dockerfile: str) -> list[str]:
    """Where the ignore file may be, most specific first (BuildKit's `<Dockerfile>.dockerignore`)."""
    df = _rel(dockerfile or "Dockerfile")
    out = [df + IGNORE_FILE] if df and posixpath.basename(df) != "Dockerfile" else []
    return [*out, IGNORE_FILE]


def _read_ignore(path: Path) -> Matcher | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        if path.stat().st_size > IGNORE_LIMIT:
            raise InvalidArgument(f"{path.name} is too large")
        return Matcher.from_text(path.read_text(errors="replace"))
    except ValueError as exc:
        raise InvalidArgument(f"invalid .dockerignore: {exc}") from None


def receive(chunks: Iterator[bytes], scratch: Path, dockerfile: str = "Dockerfile") -> Context:
    """Extract the context tar from `chunks` into a new dir under `scratch`."""
    root = Path(tempfile.mkdtemp(prefix="build-ctx-", dir=scratch))
    os.chmod(root, 0o700)
    candidates = ignore_candidates(dockerfile)
    keep = {*candidates, _rel(dockerfile or "Dockerfile")}
    matcher: Matcher | None = None
    matcher_from: str | None = None
    try:
        stream = buffered(ChunkStream(chunks))
        try:
            extractor = _Extractor(root)
            with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    rel = _rel(member.name)
                    if not rel:
                        continue
                    if rel not in keep and matcher is not None and matcher.excluded(rel):
                        continue
                    _place(extractor, tar, member)
                    if rel in candidates and (matcher_from is None
                                              or candidates.index(rel) < candidates.index(matcher_from)):
                        found = _read_ignore(root / rel)
                        if found is not None:
                            matcher, matcher_from = found, rel
            extractor.finish()
        except CORRUPT_ERRORS as exc:
            raise InvalidArgument(f"invalid build context: not a tar stream ({exc})") from None
        except UnsafeEntry as exc:
            raise InvalidArgument("invalid build context: " + str(exc).replace(" in layer", "")
                                  .replace("the layer", "the context")) from None
        except OSError as exc:
            if exc.errno not in _BAD_NAME_ERRNOS:
                raise  # e.g. ENOSPC: the engine's trouble, not the context's
            name = os.path.relpath(exc.filename, root) if isinstance(exc.filename, str) else "?"
            raise InvalidArgument(f"invalid build context: {exc.strerror}: "
                                  f"{name[:80] + '...' if len(name) > 80 else name}") from None
        for name in candidates:  # what arrived before the ignore file: prune it now
            found = _read_ignore(root / name)
            if found is not None:
                matcher = found
                prune(root, matcher, keep)
                break
        else:
            matcher = None
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Context(root, matcher)


def _place(extractor: _Extractor, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """One member under the root; a `.wh.` name is written as `.berth-ctx-<n>` and renamed,
    in the same (already checked) directory, so it stays an ordinary file."""
    rel = clean_name(member.name)
    parent, _, base = rel.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX):
        extractor.add(tar, member)
        return
    if member.isdir():  # made in place: a rename would leave the extractor's records behind
        extractor.ensure_dir(parent)
        path = os.path.join(extractor.root, rel)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
            os.unlink(path)
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)
        os.lchown(path, member.uid, member.gid)
        os.chmod(path, member.mode & 0o7777)
        extractor.dirs.add(rel)
        extractor.dir_times.append((path, int(member.mtime)))
        return
    real = member.name
    member.name = f"{parent}/.berth-ctx-{uuid.uuid4().hex}" if parent else f".berth-ctx-{uuid.uuid4().hex}"
    extractor.add(tar, member)
    target = os.path.join(extractor.root, parent, base)
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    extractor._forget(rel)  # noqa: SLF001 - no longer a directory later names may go through
    os.rename(os.path.join(extractor.root, member.name), target)
    member.name = real


def prune(root: Path, matcher: Matcher, keep: set[str]) -> None:
    """Delete whatever the ignore rules exclude (walking into excluded dirs only when needed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = os.path.relpath(dirpath, root)
        base = "" if base == "." else base
        for name in list(dirnames):
            rel = f"{base}/{name}" if base else name
            full = os.path.join(dirpath, name)
            if (matcher.excluded(rel) and not any(k.startswith(rel + "/") for k in keep)
                    and (os.path.islink(full) or not matcher.may_include_below(rel))):
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    shutil.rmtree(full, ignore_errors=True)
                dirnames.remove(name)
        for name in filenames:
            rel = f"{base}/{name}" if base else name
            if rel not in keep and matcher.excluded(rel):
                os.unlink(os.path.join(dirpath, name))


def hide_build_files(ctx: Context, dockerfile: str) -> None:
    """After the Dockerfile was read: an excluded Dockerfile or ignore file is not copyable."""
    if ctx.matcher is None:
        return
    for name in {*ignore_candidates(dockerfile), _rel(dockerfile or "Dockerfile")}:
        if ctx.matcher.excluded(name):
            path = ctx.root / name
            if path.is_file() or path.is_symlink():
                path.unlink()
