"""`docker history`, `docker image prune` and the image half of `docker system df`.

Built only on the store's public operations (list, remove, reconcile), so the
reachability rules stay in one place: a layer or blob lives while some image
or lease needs it, and `reconcile` collects the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from services.image.imageconfig import parse_created
from services.image.layers import chain_ids
from services.image.store import ImageRecord, ImageStore


@dataclass
class HistoryEntry:
    id: str
    created_unix: int
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    tags: list[str] = field(default_factory=list)


def history(store: ImageStore, text: str) -> list[HistoryEntry]:
    """Newest first, as Docker prints it; sizes are the unpacked layer sizes."""
    rec = store.inspect(text)
    raw = json.loads(rec.row.config_json)
    entries = raw.get("history") if isinstance(raw, dict) else None
    chains = chain_ids(rec.row.diff_ids)
    sizes = [store.layer_size(c) or 0 for c in chains]
    out: list[HistoryEntry] = []
    layer = 0
    if isinstance(entries, list) and entries:
        for h in entries:
            h = h if isinstance(h, dict) else {}
            empty = bool(h.get("empty_layer"))
            size = 0
            if not empty and layer < len(sizes):
                size = sizes[layer]
                layer += 1
            out.append(HistoryEntry("<missing>", parse_created(str(h.get("created") or "")),
                                    str(h.get("created_by") or ""), size, str(h.get("comment") or ""), empty))
    else:
        out = [HistoryEntry("<missing>", rec.row.created_unix, "", s, "", False) for s in sizes]
    out.reverse()
    if out:
        out[0].id = rec.row.id
        out[0].tags = rec.familiar_tags
    return out


def _in_use(store: ImageStore) -> Counter[str]:
    return Counter(s.image_id for s in store.list_snapshots())


def _footprint(store: ImageStore) -> int:
    """Bytes of every published layer plus every blob: what prune can give back."""
    total = 0
    seen: set[str] = set()
    for rec in store.list():
        for chain in chain_ids(rec.row.diff_ids):
            if chain not in seen:
                seen.add(chain)
                total += store.layer_size(chain) or 0
    return total + blobs_size(store)


def blobs_size(store: ImageStore) -> int:
    total = 0
    for digest in store.content.digests():
        with contextlib.suppress(FileNotFoundError):
            total += store.content.path(digest).stat().st_size
    return total


@dataclass
class PruneResult:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    space_reclaimed: int = 0


def _dangling(rec: ImageRecord) -> bool:
    return not rec.tags and not rec.digests


def prune(store: ImageStore, all_: bool = False) -> PruneResult:
    """Remove dangling images (with `all_`, every image no container uses), then collect garbage."""
    before = _footprint(store)
    used = _in_use(store)
    out = PruneResult()
    for rec in store.list():
        if used[rec.row.id] or not (all_ or _dangling(rec)):
            continue
        removal = store.remove(rec.row.id, force=True)
        out.untagged.extend(removal.untagged)
        out.deleted.extend(removal.deleted)
    out.deleted.extend(store.reconcile())
    out.space_reclaimed = max(0, before - _footprint(store))
    return out


@dataclass
class ImageUsage:
    record: ImageRecord
    shared_size: int
    unique_size: int
    containers: int


@dataclass
class SnapshotUsage:
    key: str
    image_id: str
    size: int


@dataclass
class Usage:
    images: list[ImageUsage]
    snapshots: list[SnapshotUsage]
    layers_size: int
    blobs_size: int
    reclaimable: int


def dir_size(path: Path) -> int:
    """Bytes of regular files under `path`, never following symlinks."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def disk_usage(store: ImageStore) -> Usage:
    records = store.list()
    used = _in_use(store)
    users: Counter[str] = Counter()
    size_of: dict[str, int] = {}
    for rec in records:
        for chain in chain_ids(rec.row.diff_ids):
            users[chain] += 1
            if chain not in size_of:
                size_of[chain] = store.layer_size(chain) or 0
    images = []
    active_chains: set[str] = set()
    for rec in records:
        chains = chain_ids(rec.row.diff_ids)
        shared = sum(size_of[c] for c in chains if users[c] > 1)
        unique = sum(size_of[c] for c in chains if users[c] == 1)
        images.append(ImageUsage(rec, shared, unique, used[rec.row.id]))
        if used[rec.row.id]:
            active_chains.update(chains)
    layers_total = sum(size_of.values())
    reclaimable = layers_total - sum(size_of[c] for c in active_chains)
    snaps = [SnapshotUsage(s.key, s.image_id, dir_size(Path(s.mount.upperdir)) if s.mount.upperdir else 0)
             for s in store.list_snapshots()]
    return Usage(images, snaps, layers_total, blobs_size(store), reclaimable)
