"""The gRPC ImageService: a thin adapter from protos to the image store.

All logic lives in the store, archive and snapshot modules; this file only
converts messages and lets `map_errors` turn Berth errors into statuses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from berth.image.v1 import image_pb2, image_pb2_grpc
from berth.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.mount import Mount
from services.common.server import map_errors
from services.image import archive, changes
from services.image.commit import CommitOptions, commit_snapshot, find_snapshot, snap_upper
from services.image.imageconfig import container_config, parse_config
from services.image.store import ImageRecord, ImageStore, SnapshotRecord
from services.image.streams import ChunkWriter, run_streaming


def image_to_proto(rec: ImageRecord) -> image_pb2.Image:
    row = rec.row
    try:
        parsed = parse_config(row.config_json)
        cfg, raw = parsed.config, parsed.raw.get("config") or {}
    except InvalidArgument:
        cfg, raw = container_config(None), {}
    return image_pb2.Image(
        id=row.id,
        repo_tags=rec.familiar_tags,
        repo_digests=rec.familiar_digests,
        size=row.size,
        created_unix=row.created_unix,
        architecture=row.architecture,
        os=row.os,
        diff_ids=list(row.diff_ids),
        config=image_pb2.ImageConfig(
            env=cfg.env, entrypoint=cfg.entrypoint, cmd=cfg.cmd, working_dir=cfg.working_dir, user=cfg.user,
            labels=cfg.labels, stop_signal=cfg.stop_signal, exposed_ports=cfg.exposed_ports, volumes=cfg.volumes,
            healthcheck=healthcheck_of(raw), shell=_strings(raw.get("Shell")), onbuild=_strings(raw.get("OnBuild"))),
        config_json=row.config_json,
        manifest_digest=row.manifest_digest,
    )


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def healthcheck_of(config: dict) -> types_pb2.HealthCheck | None:
    """The config's Docker-style "Healthcheck" ({"Test": [...], "Interval": ns, ...}) as a
    message, so the api can resolve a container's check without parsing JSON itself."""
    hc = config.get("Healthcheck") if isinstance(config, dict) else None
    if not isinstance(hc, dict):
        return None

    def number(key: str) -> int:
        value = hc.get(key)
        return int(value) if isinstance(value, (int, float)) and value > 0 else 0

    return types_pb2.HealthCheck(test=_strings(hc.get("Test")), interval_ns=number("Interval"),
                                 timeout_ns=number("Timeout"), start_period_ns=number("StartPeriod"),
                                 retries=number("Retries"), start_interval_ns=number("StartInterval"))


def mount_to_proto(m: Mount) -> types_pb2.Mount:
    return types_pb2.Mount(type=m.type, lowerdirs=m.lowerdirs, upperdir=m.upperdir, workdir=m.workdir,
                           source=m.source, options=m.options)


def snapshot_to_proto(s: SnapshotRecord) -> image_pb2.Snapshot:
    return image_pb2.Snapshot(key=s.key, image_id=s.image_id, mount=mount_to_proto(s.mount))


class ImageServicer(image_pb2_grpc.ImageServiceServicer):
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    @map_errors
    def Import(self, request_iterator: Iterator[image_pb2.ImportRequest],
               context: grpc.ServicerContext) -> image_pb2.Image:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "meta":
            raise InvalidArgument("import: the first message must carry the metadata")
        meta = first.meta

        def chunks() -> Iterator[bytes]:
            for req in request_iterator:
                if req.WhichOneof("item") != "chunk":
                    raise InvalidArgument("import: only data chunks may follow the metadata")
                yield req.chunk

        return image_to_proto(archive.import_rootfs(self.store, chunks(), meta.reference, meta.message))

    @map_errors
    def Load(self, request_iterator: Iterator[image_pb2.LoadRequest],
             context: grpc.ServicerContext) -> image_pb2.LoadResponse:
        loaded = archive.load_archive(self.store, (req.chunk for req in request_iterator))
        return image_pb2.LoadResponse(loaded=loaded.lines, images=[image_to_proto(r) for r in loaded.images])

    @map_errors
    def List(self, request: image_pb2.ListImagesRequest, context: grpc.ServicerContext) -> image_pb2.ListImagesResponse:
        return image_pb2.ListImagesResponse(images=[image_to_proto(r) for r in self.store.list(request.reference)])

    @map_errors
    def Inspect(self, request: image_pb2.InspectImageRequest, context: grpc.ServicerContext) -> image_pb2.Image:
        return image_to_proto(self.store.inspect(request.reference))

    @map_errors
    def Remove(self, request: image_pb2.RemoveImageRequest,
               context: grpc.ServicerContext) -> image_pb2.RemoveImageResponse:
        out = self.store.remove(request.reference, request.force)
        return image_pb2.RemoveImageResponse(untagged=out.untagged, deleted=out.deleted)

    @map_errors
    def Tag(self, request: image_pb2.TagImageRequest, context: grpc.ServicerContext) -> image_pb2.Image:
        return image_to_proto(self.store.tag(request.source, request.target))

    @map_errors
    def PrepareSnapshot(self, request: image_pb2.PrepareSnapshotRequest,
                        context: grpc.ServicerContext) -> image_pb2.Snapshot:
        return snapshot_to_proto(self.store.prepare_snapshot(request.key, request.image))

    @map_errors
    def RemoveSnapshot(self, request: image_pb2.RemoveSnapshotRequest,
                       context: grpc.ServicerContext) -> types_pb2.Empty:
        self.store.remove_snapshot(request.key)
        return types_pb2.Empty()

    @map_errors
    def ListSnapshots(self, request: image_pb2.ListSnapshotsRequest,
                      context: grpc.ServicerContext) -> image_pb2.ListSnapshotsResponse:
        return image_pb2.ListSnapshotsResponse(snapshots=[snapshot_to_proto(s) for s in self.store.list_snapshots()])

    @map_errors
    def Commit(self, request: image_pb2.CommitRequest, context: grpc.ServicerContext) -> image_pb2.Image:
        opts = CommitOptions(reference=request.reference, changes=list(request.changes), comment=request.comment,
                             author=request.author, created_by=request.created_by,
                             config=config_overrides(request.config) if request.config_set else None)
        return image_to_proto(commit_snapshot(self.store, request.snapshot_key, opts, apply_change))

    @map_errors
    def Diff(self, request: image_pb2.DiffRequest, context: grpc.ServicerContext) -> image_pb2.DiffResponse:
        snap = find_snapshot(self.store, request.snapshot_key)
        kinds = {changes.ADDED: image_pb2.Change.ADDED, changes.MODIFIED: image_pb2.Change.MODIFIED,
                 changes.DELETED: image_pb2.Change.DELETED}
        found = changes.diff(snap_upper(snap), list(snap.mount.lowerdirs))
        return image_pb2.DiffResponse(changes=[image_pb2.Change(kind=kinds[c.kind], path=c.path) for c in found])

    @map_errors
    def Export(self, request: image_pb2.ExportRequest, context: grpc.ServicerContext):
        snap = find_snapshot(self.store, request.snapshot_key)
        layers = [str(snap_upper(snap)), *snap.mount.lowerdirs]

        def work(emit: Callable[[Any], None], cancel: threading.Event) -> None:
            with ChunkWriter(lambda data: emit(image_pb2.ExportChunk(data=data)), cancel) as out:
                changes.write_merged(layers, out)

        with self.store.leased([snap.image_id]):
            for item in run_streaming(work, context):
                if item is not None:
                    yield item


def config_overrides(cfg: image_pb2.ImageConfig) -> dict[str, Any]:
    """The container's settings that `commit` records over its image's config."""
    out: dict[str, Any] = {"Env": list(cfg.env), "Cmd": list(cfg.cmd) or None,
                           "Entrypoint": list(cfg.entrypoint) or None, "WorkingDir": cfg.working_dir,
                           "User": cfg.user}
    if cfg.labels:
        out["Labels"] = dict(cfg.labels)
    return out


def apply_change(config: dict[str, Any], change: str) -> None:
    """`commit --change`: one Dockerfile instruction applied to the config (the builder's parser)."""
    from services.image.build.confedit import apply_config_instruction

    apply_config_instruction(config, change)
