"""`docker import` and `docker load`: turn a rootfs tar or an image archive into images.

Both stream: import unpacks while the bytes arrive; load spools the archive to
a scratch file (archives put manifest.json last, so we need random access) and
never holds it in memory. Every digest is checked before anything is
published, so a bad archive leaves the store exactly as it was.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from services.common.errors import InvalidArgument
from services.image import reference
from services.image.content import check_digest, sha256_digest
from services.image.imageconfig import host_arch, now_rfc3339, parse_config
from services.image.ingest import Ingest, LayerResult
from services.image.layers import CORRUPT_ERRORS, UnsafeEntry, clean_name
from services.image.store import ImageRecord, ImageStore, NewImage
from services.image.streams import ChunkStream, buffered, copy

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = {MT_OCI_INDEX, MT_DOCKER_LIST}
MANIFEST_TYPES = {MT_OCI_MANIFEST, MT_DOCKER_MANIFEST}
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
JSON_LIMIT = 16 << 20
NOT_AN_IMAGE = "archive is not a docker-save or OCI image-layout archive"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def layer_media_type(compression: str) -> str:
    return MT_OCI_LAYER + (f"+{compression}" if compression in ("gzip", "zstd") else "")


def oci_manifest(config_digest: str, config_size: int, layers: list[LayerResult]) -> bytes:
    """An OCI manifest for images that arrived without one (import, docker-save)."""
    return _json_bytes({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer_media_type(layer.compression), "digest": layer.blob_digest,
                    "size": layer.blob_size} for layer in layers],
    })


def _new_image(config_bytes: bytes, config_digest: str, manifest_digest: str, layers: list[LayerResult],
               tags: list[str]) -> NewImage:
    cfg = parse_config(config_bytes)
    return NewImage(config_json=config_bytes, config_digest=config_digest, manifest_digest=manifest_digest,
                    diff_ids=[layer.diff_id for layer in layers],
                    blobs=[manifest_digest, config_digest, *(layer.blob_digest for layer in layers)],
                    created_unix=cfg.created_unix, architecture=cfg.architecture, os=cfg.os, tags=tags)


# ---- import -------------------------------------------------------------------


def import_rootfs(store: ImageStore, chunks: Iterator[bytes], ref: str = "", message: str = "") -> ImageRecord:
    """`docker import`: one layer (stored as an uncompressed tar) and an empty container config."""
    tags = [str(reference.parse_tag_target(ref))] if ref else []
    with Ingest(store) as ingest:
        layer = ingest.add_layer(buffered(ChunkStream(chunks)), parent_chain=None, store_uncompressed=True)
        created = now_rfc3339()
        config = _json_bytes({
            "architecture": host_arch(),
            "os": "linux",
            "created": created,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            "history": [{"created": created, "created_by": "berth import",
                         "comment": message or "Imported from -"}],
        })
        config_digest = ingest.add_blob(config)
        manifest_digest = ingest.add_blob(oci_manifest(config_digest, len(config), [layer]))
        (record,) = ingest.publish([_new_image(config, config_digest, manifest_digest, [layer], tags)])
        ingest.finish()
    return record


# ---- load ---------------------------------------------------------------------


@dataclass
class Loaded:
    lines: list[str]
    images: list[ImageRecord]


class _Archive:
    """Random access to the members of a spooled archive, by cleaned path."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        try:
            self.tar = tarfile.open(fileobj=fileobj, mode="r:*")  # noqa: SIM115 - lives as long as the spool
            members = self.tar.getmembers()
        except CORRUPT_ERRORS:
            raise InvalidArgument(f"{NOT_AN_IMAGE}: not a (complete) tar file") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            try:
                self.members[clean_name(m.name)] = m
            except UnsafeEntry:
                continue  # never looked up, never extracted

    def has(self, name: str) -> bool:
        return name in self.members

    def _member(self, name: str) -> tarfile.TarInfo | None:
        """The member a manifest names; a name that climbs out of the archive is refused."""
        try:
            return self.members.get(clean_name(name))
        except UnsafeEntry:
            raise InvalidArgument(f"invalid image archive: {name!r} points outside the archive") from None

    def open(self, name: str) -> IO[bytes]:
        member = self._member(name)
        if member is None:
            raise InvalidArgument(f"invalid image archive: {name} is missing")
        try:
            f = self.tar.extractfile(member)
        except (KeyError, tarfile.TarError):
            f = None
        if f is None:
            raise InvalidArgument(f"invalid image archive: {name} is not a regular file")
        return f

    def read(self, name: str) -> bytes:
        member = self._member(name)
        if member is not None and member.size > JSON_LIMIT:
            raise InvalidArgument(f"invalid image archive: {name} is too large")
        try:
            with self.open(name) as f:
                return f.read(JSON_LIMIT + 1)
        except CORRUPT_ERRORS as exc:
            raise InvalidArgument(f"invalid image archive: {name}: {exc}") from None

    def json(self, name: str, data: bytes | None = None) -> Any:
        try:
            return json.loads(self.read(name) if data is None else data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"invalid image archive: {name} is not valid JSON") from None
        except RecursionError:  # hostile nesting: Python's parser recurses once per level
            raise InvalidArgument(f"invalid image archive: {name} is nested too deeply") from None


def load_archive(store: ImageStore, chunks: Iterator[bytes]) -> Loaded:
    """`docker load` of a docker-save or OCI image-layout archive."""
    with tempfile.TemporaryFile(dir=store.scratch) as spool:
        copy(buffered(ChunkStream(chunks)), spool)  # type: ignore[arg-type]
        spool.seek(0)
        archive = _Archive(spool)
        with Ingest(store) as ingest:
            if archive.has("manifest.json"):
                news = _docker_save(archive, ingest)
            elif archive.has("index.json"):
                news = _oci_layout(archive, ingest)
            else:
                raise InvalidArgument(f"{NOT_AN_IMAGE} (it has no manifest.json or index.json)")
            records = ingest.publish(news)
            ingest.finish()
    lines: list[str] = []
    for new, record in zip(news, records, strict=True):
        if new.tags:
            lines.extend(f"Loaded image: {reference.familiar(t)}" for t in new.tags)
        else:
            lines.append(f"Loaded image ID: {record.row.id}")
    return Loaded(lines, records)


def _load_layers(archive: _Archive, ingest: Ingest, paths: list[str], diff_ids: list[str],
                 digests: list[str | None]) -> list[LayerResult]:
    if len(paths) != len(diff_ids):
        raise InvalidArgument(f"invalid image archive: {len(paths)} layers but {len(diff_ids)} diff_ids in the config")
    results: list[LayerResult] = []
    for path, diff_id, digest in zip(paths, diff_ids, digests, strict=True):
        with archive.open(path) as f:
            results.append(ingest.add_layer(f, parent_chain=results[-1].chain_id if results else None,
                                            diff_id=diff_id, blob_digest=digest))
    return results


def _docker_save(archive: _Archive, ingest: Ingest) -> list[NewImage]:
    manifest = archive.json("manifest.json")
    if not isinstance(manifest, list) or not all(isinstance(e, dict) for e in manifest):
        raise InvalidArgument("invalid image archive: manifest.json is not a list of images")
    news = []
    for entry in manifest:
        config_name = entry.get("Config")
        layer_paths = entry.get("Layers") or []
        if not isinstance(config_name, str) or not isinstance(layer_paths, list):
            raise InvalidArgument("invalid image archive: manifest.json entry lacks Config or Layers")
        tags = [str(reference.parse_tag_target(t)) for t in entry.get("RepoTags") or []]
        config = archive.read(config_name)
        config_digest = ingest.add_blob(config, _digest_from_name(config_name))
        cfg = parse_config(config)
        layers = _load_layers(archive, ingest, [str(p) for p in layer_paths], cfg.diff_ids,
                              [None] * len(layer_paths))
        manifest_digest = ingest.add_blob(oci_manifest(config_digest, len(config), layers))
        news.append(_new_image(config, config_digest, manifest_digest, layers, tags))
    return news


def _digest_from_name(name: str) -> str | None:
    """A config stored as `blobs/sha256/<hex>` (Docker 25+) must match its name.

    Older `<hex>.json` names are not checked, as Docker does not: the id is the
    digest of the content either way.
    """
    base = clean_name(name)
    if not base.startswith("blobs/sha256/"):
        return None
    try:
        return check_digest("sha256:" + base.removeprefix("blobs/sha256/"))
    except InvalidArgument:
        return None


# ---- OCI image layout ---------------------------------------------------------


def _blob_path(digest: Any) -> str:
    if not isinstance(digest, str):
        raise InvalidArgument("invalid image archive: descriptor without a digest")
    check_digest(digest)
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _read_blob(archive: _Archive, desc: dict[str, Any]) -> bytes:
    """Read a small blob and check it against its descriptor's digest."""
    data = archive.read(_blob_path(desc.get("digest")))
    got = sha256_digest(data)
    if got != desc["digest"]:
        raise InvalidArgument(f"digest mismatch for blob {desc['digest']}: content hashes to {got}")
    return data


def _tag_from_annotations(annotations: dict[str, Any] | None) -> list[str]:
    """A full reference names a tag; a bare ref.name like `latest` has no repository."""
    annotations = annotations or {}
    name = annotations.get(ANNOTATION_CONTAINERD_NAME)
    if not name:
        name = annotations.get(ANNOTATION_REF_NAME)
        if not name or ("/" not in name and ":" not in name):
            return []
    return [str(reference.parse_tag_target(str(name)))]


def _pick_manifest(archive: _Archive, desc: dict[str, Any], depth: int = 0) -> tuple[dict[str, Any], bytes]:
    """Follow (nested) indexes down to the manifest for linux on this host's architecture."""
    if depth > 8:
        raise InvalidArgument("invalid image archive: indexes nested too deeply")
    data = _read_blob(archive, desc)
    doc = archive.json(_blob_path(desc["digest"]), data)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid image archive: blob {desc['digest']} is not a JSON object")
    media_type = desc.get("mediaType") or doc.get("mediaType")
    if media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in doc):
        return _pick_manifest(archive, _choose_platform(doc.get("manifests") or [], desc["digest"]), depth + 1)
    if media_type not in MANIFEST_TYPES and "layers" not in doc:
        raise InvalidArgument(f"invalid image archive: unsupported media type {media_type!r}")
    return doc, data


def _choose_platform(manifests: list[Any], where: str) -> dict[str, Any]:
    candidates = [m for m in manifests if isinstance(m, dict)]
    arch = host_arch()
    with_platform = [m for m in candidates if isinstance(m.get("platform"), dict)]
    for m in with_platform:
        if m["platform"].get("os") == "linux" and m["platform"].get("architecture") == arch:
            return m
    without = [m for m in candidates if not isinstance(m.get("platform"), dict)]
    if without:
        return without[0]
    raise InvalidArgument(f"no image for linux/{arch} in index {where}")


def _oci_layout(archive: _Archive, ingest: Ingest) -> list[NewImage]:
    index = archive.json("index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArgument("invalid image archive: index.json has no manifests")
    by_manifest: dict[str, tuple[dict[str, Any], bytes, list[str]]] = {}
    for desc in index["manifests"]:
        if not isinstance(desc, dict):
            continue
        tags = _tag_from_annotations(desc.get("annotations"))
        platform = desc.get("platform")
        if isinstance(platform, dict) and platform.get("architecture") not in (None, host_arch()):
            continue  # a per-platform entry for another architecture
        doc, data = _pick_manifest(archive, desc)
        digest = sha256_digest(data)
        if digest in by_manifest:
            by_manifest[digest][2].extend(t for t in tags if t not in by_manifest[digest][2])
        else:
            by_manifest[digest] = (doc, data, tags)
    if not by_manifest:
        raise InvalidArgument(f"no image for linux/{host_arch()} in the archive")
    news = []
    for digest, (doc, data, tags) in by_manifest.items():
        config_desc = doc.get("config")
        layer_descs = doc.get("layers") or []
        if not isinstance(config_desc, dict) or not isinstance(layer_descs, list):
            raise InvalidArgument(f"invalid image archive: manifest {digest} lacks config or layers")
        config = _read_blob(archive, config_desc)
        config_digest = ingest.add_blob(config, config_desc["digest"])
        cfg = parse_config(config)
        layers = _load_layers(archive, ingest, [_blob_path(d.get("digest")) for d in layer_descs], cfg.diff_ids,
                              [d["digest"] for d in layer_descs])
        manifest_digest = ingest.add_blob(data, digest)
        news.append(_new_image(config, config_digest, manifest_digest, layers, tags))
    return news
