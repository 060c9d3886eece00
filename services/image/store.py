"""Image records, tags and snapshots: the one place that changes the image state.

Blobs, layers and snapshot dirs are files; the DB says which of them are
reachable. Every mutation of both happens under one lock, and whatever an
in-flight import or load relies on is held by an in-memory lease, so garbage
collection never pulls a layer out from under it. At start-up, anything on
disk that no row reaches (a crash between rename and commit) is collected.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.common.db import open_db
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.mount import Mount
from services.image import reference
from services.image.content import LocalContentStore
from services.image.layers import LayerStore, chain_ids, remove_tree
from services.image.models import Base, ImageRow, LayerRow, RepoDigestRow, SnapshotRow, TagRow
from services.image.snapshots import OverlaySnapshotter, check_key

log = logging.getLogger("berth.image")

_HEX_PREFIX_RE = re.compile(r"^[0-9a-f]{1,64}$")


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


@dataclass
class ImageRecord:
    """An image row with its tags (normalised), as the servicer needs it."""

    row: ImageRow
    tags: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)  # normalised "domain/path@sha256:…"

    @property
    def familiar_tags(self) -> list[str]:
        return sorted(reference.familiar(t) for t in self.tags)

    @property
    def familiar_digests(self) -> list[str]:
        return sorted(reference.familiar(d) for d in self.digests)


@dataclass
class SnapshotRecord:
    key: str
    image_id: str
    mount: Mount


@dataclass
class NewImage:
    """What an import or load produced, ready to be recorded."""

    config_json: bytes
    config_digest: str
    manifest_digest: str
    diff_ids: list[str]
    blobs: list[str]
    created_unix: int
    architecture: str
    os: str
    tags: list[str] = field(default_factory=list)  # normalised
    repo_digests: list[str] = field(default_factory=list)  # normalised "domain/path@sha256:…"


@dataclass
class Removal:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class ImageStore:
    """All image state under one root directory and one database."""

    def __init__(self, root: Path, db_url: str, max_layer_size: int = 0) -> None:
        self.root = root
        self.scratch = root / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        self._sweep_scratch()
        self.content = LocalContentStore(root / "blobs", self.scratch)
        self.layers = LayerStore(root / "layers", self.scratch, max_layer_size)
        self.snapshots = OverlaySnapshotter(root / "snapshots", self.scratch, root / "empty")
        self._sessions = open_db(db_url, Base)
        self.lock = threading.RLock()
        self._leases: Counter[str] = Counter()

    # ---- recovery -----------------------------------------------------------

    def _sweep_scratch(self) -> None:
        """Move a crashed run's scratch dir aside in one rename; delete it in the background."""
        if self.scratch.exists():
            os.rename(self.scratch, self.root / f"trash-{uuid.uuid4().hex}")
        self.scratch.mkdir()
        trash = [p for p in self.root.iterdir() if p.name.startswith("trash-")]
        if trash:
            threading.Thread(target=lambda: [shutil.rmtree(p, ignore_errors=True) for p in trash],
                             name="image-trash", daemon=True).start()

    def reconcile(self) -> list[str]:
        """Collect whatever no row reaches: leftovers of a crash between rename and commit.

        Also the garbage collector at run time (after prune): it holds the store
        lock throughout and spares whatever an in-flight pull or load has leased,
        so it never takes a layer out from under an operation. Returns what went.
        """
        gone: list[str] = []
        with self.lock:
            with self._session() as s, s.begin():
                images = s.scalars(select(ImageRow)).all()
                live_chains = {c for img in images for c in chain_ids(img.diff_ids)} | set(self._leases)
                live_blobs = {b for img in images for b in img.blobs} | set(self._leases)
                s.execute(delete(LayerRow).where(LayerRow.chain_id.not_in(live_chains)))
                snapshot_keys = set(s.scalars(select(SnapshotRow.key)).all())
            for chain in self.layers.chain_ids():
                if chain not in live_chains:
                    log.info("collecting unreferenced layer %s", chain)
                    self.layers.delete(chain)
                    gone.append(chain)
            for digest in self.content.digests():
                if digest not in live_blobs:
                    log.info("collecting unreferenced blob %s", digest)
                    self.content.delete(digest)
                    gone.append(digest)
            for key in self.snapshots.list_keys():
                if key not in snapshot_keys:
                    log.info("collecting snapshot dir without a record: %s", key)
                    remove_tree(self.snapshots.path(key))
        return gone

    # ---- sessions and leases ------------------------------------------------

    def _session(self) -> Session:
        return self._sessions()

    @contextmanager
    def leased(self, names: Iterable[str]) -> Iterator[None]:
        """Keep chain ids / digests out of garbage collection while an operation uses them."""
        names = list(names)
        with self.lock:
            self._leases.update(names)
        try:
            yield
        finally:
            with self.lock:
                self._leases.subtract(names)
                self._leases += Counter()  # drop zero counts

    def lease(self, name: str) -> None:
        with self.lock:
            self._leases[name] += 1

    def release(self, name: str) -> None:
        with self.lock:
            self._leases[name] -= 1
            if self._leases[name] <= 0:
                del self._leases[name]

    def layer_size(self, chain_id: str) -> int | None:
        """Size of a published layer, or None if it is not (fully) there."""
        with self._session() as s:
            row = s.get(LayerRow, chain_id)
            if row is None or not self.layers.exists(chain_id):
                return None
            return row.size

    # ---- lookups ------------------------------------------------------------

    def _tags_of(self, s: Session, image_id: str) -> list[str]:
        return sorted(s.scalars(select(TagRow.name).where(TagRow.image_id == image_id)).all())

    def _digests_of(self, s: Session, image_id: str) -> list[str]:
        return sorted(s.scalars(select(RepoDigestRow.name).where(RepoDigestRow.image_id == image_id)).all())

    def _record_of(self, s: Session, row: ImageRow) -> ImageRecord:
        return ImageRecord(row, self._tags_of(s, row.id), self._digests_of(s, row.id))

    def _by_prefix(self, s: Session, text: str, hexpart: str) -> ImageRow | None:
        rows = s.scalars(select(ImageRow).where(ImageRow.id.like(f"sha256:{hexpart}%")).limit(2)).all()
        if len(rows) > 1:
            raise InvalidArgument(f"ambiguous image id prefix {text!r}: it matches several images")
        return rows[0] if rows else None

    def _find(self, s: Session, text: str) -> tuple[ImageRow, str | None]:
        """Resolve to (image, the normalised tag used or None when found by id)."""
        if text.startswith("sha256:"):
            hexpart = text.removeprefix("sha256:")
            if not _HEX_PREFIX_RE.match(hexpart):
                raise InvalidArgument(f"invalid image id {text!r}")
            row = s.get(ImageRow, text) if len(hexpart) == 64 else self._by_prefix(s, text, hexpart)
            if row is None:
                raise NotFound(f"No such image: {text}")
            return row, None
        if reference.HEX64_RE.match(text):
            row = s.get(ImageRow, "sha256:" + text)
            if row is None:
                raise NotFound(f"No such image: {text}")
            return row, None
        ref = reference.parse(text)
        if ref.digest is not None:
            pinned = s.get(RepoDigestRow, f"{ref.name}@{ref.digest}")
            row = s.get(ImageRow, pinned.image_id) if pinned is not None else s.scalars(select(ImageRow).where(
                (ImageRow.manifest_digest == ref.digest) | (ImageRow.id == ref.digest))).first()
            if row is None:
                raise NotFound(f"No such image: {text}")
            return row, None
        name = str(ref.with_default_tag())
        tag = s.get(TagRow, name)
        if tag is not None:
            return s.get(ImageRow, tag.image_id), name  # type: ignore[return-value]
        if ref.tag is None and _HEX_PREFIX_RE.match(text):
            row = self._by_prefix(s, text, text)
            if row is not None:
                return row, None
        raise NotFound(f"No such image: {text}")

    def inspect(self, text: str) -> ImageRecord:
        with self._session() as s:
            row, _ = self._find(s, text)
            return self._record_of(s, row)

    def list(self, filter_ref: str = "") -> list[ImageRecord]:
        """Newest first; `filter_ref` keeps images with a tag in that repository (and tag)."""
        with self._session() as s:
            rows = s.scalars(select(ImageRow).order_by(ImageRow.created_unix.desc(),
                                                        ImageRow.stored_seq.desc())).all()
            tags: dict[str, list[str]] = {}
            for t in s.scalars(select(TagRow)).all():
                tags.setdefault(t.image_id, []).append(t.name)
            digests: dict[str, list[str]] = {}
            for d in s.scalars(select(RepoDigestRow)).all():
                digests.setdefault(d.image_id, []).append(d.name)
        out = [ImageRecord(r, sorted(tags.get(r.id, [])), sorted(digests.get(r.id, []))) for r in rows]
        if filter_ref:
            out = [rec for rec in out if any(_matches(filter_ref, t) for t in rec.tags)]
        return out

    # ---- mutations ----------------------------------------------------------

    def record(self, new: NewImage, layer_sizes: dict[str, int]) -> ImageRecord:
        """Write the rows for a published image; the caller holds the lock."""
        chains = chain_ids(new.diff_ids)
        with self._session() as s, s.begin():
            for chain, diff_id in zip(chains, new.diff_ids, strict=True):
                if s.get(LayerRow, chain) is None:
                    s.add(LayerRow(chain_id=chain, diff_id=diff_id, size=layer_sizes[chain]))
            s.flush()
            row = s.get(ImageRow, new.config_digest)
            if row is None:
                size = sum(s.get(LayerRow, c).size for c in chains)  # type: ignore[union-attr]
                row = ImageRow(id=new.config_digest, manifest_digest=new.manifest_digest,
                               config_json=new.config_json.decode(), created_unix=new.created_unix,
                               stored_seq=time.time_ns(), architecture=new.architecture, os=new.os, size=size,
                               diff_ids=list(new.diff_ids), blobs=list(new.blobs))
                s.add(row)
                s.flush()
            for name in new.tags:
                self._set_tag(s, name, row.id)
            for name in new.repo_digests:
                self._set_digest(s, name, row.id)
            return self._record_of(s, row)

    def _set_digest(self, s: Session, name: str, image_id: str) -> None:
        pinned = s.get(RepoDigestRow, name)
        if pinned is None:
            s.add(RepoDigestRow(name=name, image_id=image_id))
        else:
            pinned.image_id = image_id
        s.flush()

    def add_names(self, image_id: str, tags: list[str], repo_digests: list[str]) -> ImageRecord:
        """Point tags and repo digests at an image already stored (a pull that found it up to date)."""
        with self.lock, self._session() as s, s.begin():
            row = s.get(ImageRow, image_id)
            if row is None:
                raise NotFound(f"No such image: {image_id}")
            for name in tags:
                self._set_tag(s, name, image_id)
            for name in repo_digests:
                self._set_digest(s, name, image_id)
            return self._record_of(s, row)

    def _set_tag(self, s: Session, name: str, image_id: str) -> None:
        tag = s.get(TagRow, name)
        if tag is None:
            s.add(TagRow(name=name, image_id=image_id))
        else:
            tag.image_id = image_id  # a retag moves the name; the old image keeps its other tags
        s.flush()

    def tag(self, source: str, target: str) -> ImageRecord:
        name = str(reference.parse_tag_target(target))
        with self.lock, self._session() as s, s.begin():
            row, _ = self._find(s, source)
            self._set_tag(s, name, row.id)
            return self._record_of(s, row)

    def remove(self, text: str, force: bool = False) -> Removal:
        """`docker rmi`: untag, and delete the image once no tag and no snapshot holds it."""
        out = Removal()
        with self.lock:
            with self._session() as s, s.begin():
                row, by_tag = self._find(s, text)
                tags = self._tags_of(s, row.id)
                users = sorted(s.scalars(select(SnapshotRow.key).where(SnapshotRow.image_id == row.id)).all())
                if by_tag is not None:
                    if len(tags) == 1 and users and not force:
                        raise FailedPrecondition(
                            f'conflict: unable to remove repository reference "{text}" (must force) - container '
                            f"{users[0][:12]} is using its referenced image {short_id(row.id)}")
                    s.execute(delete(TagRow).where(TagRow.name == by_tag))
                    out.untagged.append(reference.familiar(by_tag))
                    if len(tags) > 1 or users:
                        return out
                else:
                    if len(tags) > 1 and not force:
                        raise FailedPrecondition(
                            f"conflict: unable to delete {short_id(row.id)} (must be forced) - image is referenced "
                            "in multiple repositories")
                    if users and not force:
                        raise FailedPrecondition(
                            f"conflict: unable to delete {short_id(row.id)} (must be forced) - image is being used "
                            f"by stopped container {users[0][:12]}")
                    s.execute(delete(TagRow).where(TagRow.image_id == row.id))
                    out.untagged.extend(reference.familiar(t) for t in tags)
                    if users:
                        return out
                out.untagged.extend(reference.familiar(d) for d in self._digests_of(s, row.id))
                s.execute(delete(RepoDigestRow).where(RepoDigestRow.image_id == row.id))
                s.delete(row)
                out.deleted.append(row.id)
                chains, blobs = self._collectable(s, row)
                s.execute(delete(LayerRow).where(LayerRow.chain_id.in_(chains)))
            for chain in reversed(chains):
                self.layers.delete(chain)
                out.deleted.append(chain)
            for digest in blobs:
                self.content.delete(digest)
        return out

    def _collectable(self, s: Session, gone: ImageRow) -> tuple[list[str], list[str]]:
        """Layers and blobs of `gone` that no other image and no lease still needs."""
        others = s.scalars(select(ImageRow).where(ImageRow.id != gone.id)).all()
        live_chains = {c for img in others for c in chain_ids(img.diff_ids)}
        live_blobs = {b for img in others for b in img.blobs}
        chains = [c for c in chain_ids(gone.diff_ids) if c not in live_chains and c not in self._leases]
        blobs = [b for b in gone.blobs if b not in live_blobs and b not in self._leases]
        return chains, blobs

    # ---- snapshots ----------------------------------------------------------

    def _lowerdirs(self, row: ImageRow) -> list[Path]:
        return [self.layers.path(c) for c in chain_ids(row.diff_ids)]

    def prepare_snapshot(self, key: str, image: str) -> SnapshotRecord:
        check_key(key)
        with self.lock, self._session() as s, s.begin():
            if s.get(SnapshotRow, key) is not None:
                raise AlreadyExists(f"snapshot {key} already exists")
            row, _ = self._find(s, image)
            mount = self.snapshots.prepare(key, self._lowerdirs(row))
            s.add(SnapshotRow(key=key, image_id=row.id, created_unix=int(time.time())))
            return SnapshotRecord(key, row.id, mount)

    def remove_snapshot(self, key: str) -> None:
        check_key(key)
        with self.lock, self._session() as s, s.begin():
            snap = s.get(SnapshotRow, key)
            if snap is None:
                raise NotFound(f"snapshot {key} not found")
            s.delete(snap)
            s.flush()
            try:
                self.snapshots.remove(key)
            except NotFound:
                log.warning("snapshot %s had a record but no directory", key)

    def list_snapshots(self) -> list[SnapshotRecord]:
        with self._session() as s:
            out = []
            for snap in s.scalars(select(SnapshotRow).order_by(SnapshotRow.key)).all():
                img = s.get(ImageRow, snap.image_id)
                lowers = self._lowerdirs(img) if img is not None else []
                out.append(SnapshotRecord(snap.key, snap.image_id, self.snapshots.mounts(snap.key, lowers)))
            return out


def _matches(filter_ref: str, tag: str) -> bool:
    """`docker images busybox` / `busybox:1.36` / `bus*` against one normalised tag."""
    if any(c in filter_ref for c in "*?["):
        fam = reference.parse(tag)
        return fnmatch.fnmatchcase(fam.familiar_name, filter_ref) or fnmatch.fnmatchcase(fam.familiar(), filter_ref)
    try:
        want = reference.parse(filter_ref)
    except InvalidArgument:
        return False
    have = reference.parse(tag)
    return have.name == want.name and (want.tag is None or want.tag == have.tag)
