"""`docker commit`: a snapshot's upper dir becomes one more layer on top of its image.

The new image shares every layer of its parent (same chain ids, same blobs) and
adds one: the upper dir in OCI form (services/image/changes.py), stored as an
uncompressed tar like Docker keeps committed layers locally. The config is the
parent's, or the one the caller passes (the container's), then `changes`
applied; a history entry records the step. Everything goes through `Ingest`, so
a failure or crash publishes nothing.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument, NotFound
from services.image import distribution, reference
from services.image.archive import MT_OCI_CONFIG, MT_OCI_MANIFEST, layer_media_type
from services.image.changes import write_layer
from services.image.imageconfig import now_rfc3339, parse_config
from services.image.ingest import Ingest
from services.image.layers import chain_ids
from services.image.store import ImageRecord, ImageStore, NewImage, SnapshotRecord

# Applies one Dockerfile instruction ("CMD [\"sh\"]") to a config's `config` object.
ChangeApplier = Callable[[dict[str, Any], str], None]


@dataclass
class CommitOptions:
    reference: str = ""
    config: dict[str, Any] | None = None  # fields of the container's config over the parent's
    changes: list[str] = field(default_factory=list)
    comment: str = ""
    author: str = ""
    created_by: str = ""
    empty_layer: bool = False  # a step that changed no files: record history, add no layer


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _parent_layers(store: ImageStore, rec: ImageRecord) -> list[dict[str, Any]]:
    """The parent's layer descriptors as its manifest lists them (shared, not copied)."""
    if not rec.row.manifest_digest:
        return []
    doc = distribution.parse(store.content.read(rec.row.manifest_digest))
    if not isinstance(doc, distribution.Manifest):
        raise InvalidArgument(f"image {rec.row.id} has no single-platform manifest to build on")
    return [{"mediaType": d.media_type, "digest": d.digest, "size": d.size} for d in doc.layers]


def commit_snapshot(store: ImageStore, key: str, opts: CommitOptions,
                    apply_change: ChangeApplier | None = None) -> ImageRecord:
    """Turn snapshot `key` into a new image; see the module docstring."""
    snap = find_snapshot(store, key)
    tags = [str(reference.parse_tag_target(opts.reference))] if opts.reference else []
    parent = store.inspect(snap.image_id)
    raw = copy.deepcopy(parse_config(parent.row.config_json).raw)
    raw["config"] = {**(raw.get("config") or {}), **copy.deepcopy(opts.config or {})}
    for change in opts.changes:
        if apply_change is None:
            raise InvalidArgument("commit: --change is not supported here")
        apply_change(raw["config"], change)
    created = now_rfc3339()
    with Ingest(store) as ingest:
        parent_chains = chain_ids(parent.row.diff_ids)
        for c in parent_chains:
            ingest.hold(c)
        for b in parent.row.blobs:
            ingest.hold(b)
        layers = _parent_layers(store, parent)
        diff_ids = list(parent.row.diff_ids)
        blobs = [b for b in parent.row.blobs if b not in (parent.row.manifest_digest, parent.row.id)]
        if not opts.empty_layer:
            with tempfile.TemporaryFile(dir=store.scratch) as tmp:
                write_layer(snap_upper(snap), tmp)
                tmp.seek(0)
                layer = ingest.add_layer(tmp, parent_chain=parent_chains[-1] if parent_chains else None)
            diff_ids.append(layer.diff_id)
            blobs.append(layer.blob_digest)
            layers.append({"mediaType": layer_media_type(layer.compression), "digest": layer.blob_digest,
                           "size": layer.blob_size})
        raw["created"] = created
        raw["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        entry: dict[str, Any] = {"created": created, "created_by": opts.created_by}
        if opts.comment:
            entry["comment"] = opts.comment
        if opts.author:
            entry["author"] = opts.author
            raw["author"] = opts.author
        if opts.empty_layer:
            entry["empty_layer"] = True
        raw["history"] = [*(raw.get("history") or []), entry]
        raw.pop("container", None)
        raw.pop("container_config", None)
        config_bytes = _json(raw)
        config_digest = ingest.add_blob(config_bytes)
        manifest = _json({"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                          "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest,
                                     "size": len(config_bytes)},
                          "layers": layers})
        manifest_digest = ingest.add_blob(manifest)
        cfg = parse_config(config_bytes)
        new = NewImage(config_json=config_bytes, config_digest=config_digest, manifest_digest=manifest_digest,
                       diff_ids=diff_ids, blobs=[manifest_digest, config_digest, *blobs],
                       created_unix=cfg.created_unix, architecture=cfg.architecture, os=cfg.os, tags=tags)
        (record,) = ingest.publish([new])
        ingest.finish()
    return record


def find_snapshot(store: ImageStore, key: str) -> SnapshotRecord:
    snap = next((s for s in store.list_snapshots() if s.key == key), None)
    if snap is None:
        raise NotFound(f"snapshot {key} not found")
    return snap


def snap_upper(snap: SnapshotRecord) -> Path:
    """The upper dir of a snapshot's overlay mount."""
    if snap.mount.type != "overlay" or not snap.mount.upperdir:
        raise InvalidArgument(f"snapshot {snap.key} has no upper dir")
    return Path(snap.mount.upperdir)
