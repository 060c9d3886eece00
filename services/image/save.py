"""`docker save`: write images as a docker-save archive or an OCI image-layout archive.

docker-archive is the classic layout every tool reads (`manifest.json`,
`<config>.json`, `<diff id>/layer.tar` with *uncompressed* layers, since the
config's diff ids name them); stored gzip/zstd blobs are inflated into a
scratch file first because a tar header needs the size up front.
oci-archive carries the blobs exactly as stored (manifest, config and
compressed layers), so digests survive the round trip.
The archive is written to any writable object; the servicer streams it.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from typing import IO, Any

from services.common.errors import InvalidArgument
from services.image import distribution, reference
from services.image.archive import ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, MT_OCI_INDEX
from services.image.store import ImageRecord, ImageStore
from services.image.streams import CHUNK, decompressed

FORMATS = ("docker-archive", "oci-archive")
MTIME = 0  # reproducible archives: the same images give the same bytes


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = MTIME
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = MTIME
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, f: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = MTIME
    tar.addfile(info, f)


def _resolve(store: ImageStore, refs: list[str]) -> list[tuple[ImageRecord, list[str]]]:
    """Each image once, with the tags the user named; an image named by id carries none (as Docker)."""
    out: dict[str, tuple[ImageRecord, list[str]]] = {}
    for text in refs:
        rec = store.inspect(text)
        tags: list[str] = []
        if not text.startswith("sha256:"):
            try:
                ref = reference.parse(text)
            except InvalidArgument:
                ref = None
            if ref is not None and ref.digest is None and str(ref.with_default_tag()) in rec.tags:
                tags = [str(ref.with_default_tag())]
        entry = out.setdefault(rec.row.id, (rec, []))
        entry[1].extend(t for t in tags if t not in entry[1])
    return list(out.values())


def _manifest_of(store: ImageStore, rec: ImageRecord) -> distribution.Manifest:
    doc = distribution.parse(store.content.read(rec.row.manifest_digest))
    if not isinstance(doc, distribution.Manifest):
        raise InvalidArgument(f"image {rec.row.id} has no single-platform manifest")
    return doc


def save(store: ImageStore, refs: list[str], out: Any, fmt: str = "docker-archive") -> None:
    """Write the archive for `refs` to `out` (anything with `write`)."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not refs:
        raise InvalidArgument("save: at least one image is required")
    images = _resolve(store, refs)
    with store.leased(b for rec, _ in images for b in rec.row.blobs), \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if fmt == "docker-archive":
            _docker_archive(store, images, tar)
        else:
            _oci_archive(store, images, tar)


def _docker_archive(store: ImageStore, images: list[tuple[ImageRecord, list[str]]], tar: tarfile.TarFile) -> None:
    written: set[str] = set()
    entries = []
    repositories: dict[str, dict[str, str]] = {}
    for rec, tags in images:
        manifest = _manifest_of(store, rec)
        config_hex = rec.row.id.split(":", 1)[1]
        layer_paths = []
        for desc, diff_id in zip(manifest.layers, rec.row.diff_ids, strict=True):
            path = f"{diff_id.split(':', 1)[1]}/layer.tar"
            layer_paths.append(path)
            if path in written:
                continue
            written.add(path)
            _add_dir(tar, path.split("/")[0])
            with store.content.open(desc.digest) as blob, \
                    tempfile.TemporaryFile(dir=store.scratch) as plain:
                stream, _ = decompressed(blob)
                while data := stream.read(CHUNK):
                    plain.write(data)
                size = plain.tell()
                plain.seek(0)
                _add_file(tar, path, plain, size)
        if f"{config_hex}.json" not in written:
            written.add(f"{config_hex}.json")
            _add_bytes(tar, f"{config_hex}.json", rec.row.config_json.encode())
        familiar = [reference.familiar(t) for t in tags]
        entries.append({"Config": f"{config_hex}.json", "RepoTags": familiar or None, "Layers": layer_paths})
        for t in tags:
            ref = reference.parse(t)
            repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = \
                layer_paths[-1].split("/")[0] if layer_paths else config_hex
    _add_bytes(tar, "manifest.json", json.dumps(entries, separators=(",", ":")).encode())
    _add_bytes(tar, "repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _oci_archive(store: ImageStore, images: list[tuple[ImageRecord, list[str]]], tar: tarfile.TarFile) -> None:
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _add_dir(tar, "blobs")
    _add_dir(tar, "blobs/sha256")
    written: set[str] = set()
    index: list[dict[str, Any]] = []
    for rec, tags in images:
        manifest_bytes = store.content.read(rec.row.manifest_digest)
        manifest = _manifest_of(store, rec)
        for desc in [manifest.config, *manifest.layers]:
            if desc.digest in written:
                continue
            written.add(desc.digest)
            with store.content.open(desc.digest) as blob:
                _add_file(tar, "blobs/sha256/" + desc.digest.split(":", 1)[1], blob, desc.size)
        if rec.row.manifest_digest not in written:
            written.add(rec.row.manifest_digest)
            _add_bytes(tar, "blobs/sha256/" + rec.row.manifest_digest.split(":", 1)[1], manifest_bytes)
        desc = {"mediaType": manifest.media_type, "digest": rec.row.manifest_digest, "size": len(manifest_bytes)}
        for t in tags or [""]:
            entry = dict(desc)
            if t:
                ref = reference.parse(t)
                entry["annotations"] = {ANNOTATION_CONTAINERD_NAME: t, ANNOTATION_REF_NAME: ref.tag or "latest"}
            index.append(entry)
    doc = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index}
    _add_bytes(tar, "index.json", json.dumps(doc, separators=(",", ":")).encode())
