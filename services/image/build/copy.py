"""COPY and ADD: sources matched in the context (or another stage), hashed for the cache, written.

Docker's rules: sources are context-relative (globs allowed), a directory
source copies its contents, several sources need a destination ending in `/`,
a relative destination is relative to WORKDIR, new files are owned by 0:0
unless `--chown`, and ADD unpacks a local tar archive. ADD of a URL is refused:
the builder is offline.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, InvalidArgument
from services.image.build.dockerignore import _compile
from services.image.build.fs import Entry, RootView, clean_rel

_GLOB_CHARS = re.compile(r"[*?\[]")
_URL_RE = re.compile(r"^(https?|git|ssh)://|^git@")


@dataclass
class Source:
    view: RootView
    rel: str  # resolved inside the view
    entry: Entry
    archive: bool = False  # ADD of a local tar: unpacked into the destination


@dataclass
class CopyPlan:
    sources: list[Source]
    dest: str  # absolute in the image, as written (trailing slash kept)
    dest_is_dir: bool
    uid: int
    gid: int
    chmod: int | None
    from_context: bool = False  # sources are the private context dir: files may be hard-linked once


def _walk_all(view: RootView, rel: str = "") -> Iterator[tuple[str, Entry]]:
    """(path, visible entry) below `rel`, depth first in name order; the merged listing already
    holds each entry, so nothing is looked up twice."""
    for name, entry in sorted(view.children(rel).items()):
        child = f"{rel}/{name}" if rel else name
        yield child, entry
        if stat.S_ISDIR(entry.st.st_mode):
            yield from _walk_all(view, child)


def match_sources(view: RootView, patterns: list[str], what: str) -> list[tuple[str, Entry]]:
    out: list[tuple[str, Entry]] = []
    for pattern in patterns:
        rel = clean_rel(pattern)
        if _GLOB_CHARS.search(rel):
            regex = _compile(rel)
            hits = [(p, entry) for p, entry in _walk_all(view) if regex.match(p)]
            out.extend(hits)
            if not hits:
                raise FailedPrecondition(f"lstat {pattern}: no source files were specified ({what})")
            continue
        resolved = view.resolve(rel)
        entry = view.lookup(resolved)
        if entry is None:
            raise FailedPrecondition(f"file not found in {what} or excluded by .dockerignore: stat {pattern}: "
                                     "file does not exist")
        out.append((resolved, entry))
    return out


def is_archive(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def parse_chown(spec: str, target: RootView) -> tuple[int, int]:
    """`user[:group]`, names looked up in the image's /etc/passwd and /etc/group."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")

    def lookup(name: str, file: str) -> int:
        if name.isdigit():
            return int(name)
        data = target.read_small(file) or b""
        for line in data.decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise FailedPrecondition(f"unable to convert uid/gid chown string to host mapping: can't find uid for "
                                 f"user {name}: no such user: {name}" if file == "etc/passwd" else
                                 f"unable to find group {name}: no matching entries in group file")

    uid = lookup(user, "etc/passwd")
    gid = lookup(group, "etc/group") if group else uid
    return uid, gid


def make_plan(keyword: str, words: list[str], source_view: RootView, what: str, target: RootView,
              workdir: str, chown: str, chmod: str, from_context: bool) -> CopyPlan:
    *srcs, dest = words
    if keyword == "ADD":
        for s in srcs:
            if _URL_RE.match(s):
                raise InvalidArgument(f"ADD {s}: downloading from a URL is not supported (the builder works "
                                      "offline); download it into the build context and COPY it")
    matched = match_sources(source_view, srcs, what)
    sources = [Source(source_view, rel, entry,
                      archive=keyword == "ADD" and from_context and stat.S_ISREG(entry.st.st_mode)
                      and is_archive(entry.path)) for rel, entry in matched]
    if not dest.startswith("/"):
        dest = posixpath.join(workdir or "/", dest) + ("/" if dest.endswith("/") else "")
    multiple = len(srcs) > 1 or any(_GLOB_CHARS.search(s) for s in srcs) and len(sources) > 1
    if multiple and not dest.endswith("/"):
        raise FailedPrecondition(f"When using {keyword} with more than one source file, the destination must be "
                                 "a directory and end with a /")
    existing = target.lookup(target.resolve(clean_rel(dest)))
    dest_is_dir = dest.endswith("/") or (existing is not None and stat.S_ISDIR(existing.st.st_mode))
    uid, gid = parse_chown(chown, target)
    mode = None
    if chmod:
        try:
            mode = int(chmod, 8)
        except ValueError:
            raise InvalidArgument(f"invalid --chmod value {chmod!r}: must be octal") from None
    return CopyPlan(sources, dest, dest_is_dir, uid, gid, mode, from_context)


def _entries(src: Source) -> Iterator[tuple[str, Entry]]:
    """(path below the source, entry), the source itself first as ""."""
    yield "", src.entry
    if stat.S_ISDIR(src.entry.st.st_mode):
        for p, entry in _walk_all(src.view, src.rel):
            yield p[len(src.rel) + 1:] if src.rel else p, entry


def _target_of(plan: CopyPlan, src: Source, sub: str) -> str:
    base = clean_rel(plan.dest)
    if stat.S_ISDIR(src.entry.st.st_mode) or src.archive:
        return f"{base}/{sub}".strip("/") if sub else base
    if plan.dest_is_dir:
        return f"{base}/{posixpath.basename(src.rel)}".strip("/")
    return base


def content_hash(plan: CopyPlan) -> str:
    """What the cache key needs: every copied entry's target, type, mode, owner and content."""
    h = hashlib.sha256()
    h.update(f"{plan.dest}|{plan.dest_is_dir}|{plan.uid}:{plan.gid}|{plan.chmod}\n".encode())
    for src in plan.sources:
        for sub, entry in _entries(src):
            st = entry.st
            h.update(f"{_target_of(plan, src, sub)}|{st.st_mode:o}|{src.archive}|".encode())
            if stat.S_ISREG(st.st_mode):
                fh = hashlib.sha256()
                with open(entry.path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        fh.update(chunk)
                h.update(fh.hexdigest().encode())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(entry.path).encode())
            h.update(b"\n")
    return h.hexdigest()


def history_source(plan: CopyPlan, digest: str) -> str:
    """`file:<hex>`, `dir:<hex>` or `multi:<hex>` as Docker's classic builder records it."""
    if len(plan.sources) > 1:
        return f"multi:{digest}"
    return ("dir:" if stat.S_ISDIR(plan.sources[0].entry.st.st_mode) else "file:") + digest


def execute(plan: CopyPlan, target: RootView) -> None:
    """Write every source into the target's upper dir."""
    for src in plan.sources:
        if src.archive:
            _extract(src.entry.path, clean_rel(plan.dest), target)
            continue
        if stat.S_ISDIR(src.entry.st.st_mode):
            target.ensure_dir(clean_rel(plan.dest), plan.uid, plan.gid)
        for sub, entry in _entries(src):
            dest = _target_of(plan, src, sub)
            st = entry.st
            mode = plan.chmod if plan.chmod is not None else stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                if sub == "":
                    continue  # the destination itself: made above, keeps its own metadata
                target.put_dir(dest, plan.uid, plan.gid, mode, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode) and plan.from_context and plan.chmod is None and st.st_nlink == 1:
                target.link_file(dest, entry.path, plan.uid, plan.gid, mode, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                target.put_file(dest, entry.path, plan.uid, plan.gid, mode, st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                target.put_symlink(dest, os.readlink(entry.path), plan.uid, plan.gid, st.st_mtime_ns)
            elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                target.put_special(dest, st, plan.uid, plan.gid)


def _extract(archive: str, dest: str, target: RootView) -> None:
    """ADD of a local tar: its entries under `dest`, owners and modes as in the archive."""
    dest = target.ensure_dir(dest)
    with tarfile.open(archive, mode="r:*") as tar:
        for member in tar:
            rel = clean_rel(member.name)
            if not rel:
                continue
            path = f"{dest}/{rel}" if dest else rel
            mtime = int(member.mtime) * 1_000_000_000
            if member.isdir():
                target.put_dir(path, member.uid, member.gid, member.mode & 0o7777, mtime)
            elif member.isreg() or member.islnk():
                f = tar.extractfile(member)
                if f is None:
                    continue
                target.put_stream(path, f, member.uid, member.gid, member.mode & 0o7777, mtime)
            elif member.issym():
                target.put_symlink(path, member.linkname, member.uid, member.gid, mtime)
