"""The gRPC ImageService: a thin adapter from protos to the image store.

All logic lives in the store, archive and snapshot modules; this file only
converts messages and lets `map_errors` turn Berth errors into statuses.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from berth.image.v1 import image_pb2, image_pb2_grpc
from berth.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.mount import Mount
from services.common.server import map_errors
from services.image import archive
from services.image.imageconfig import container_config, parse_config
from services.image.store import ImageRecord, ImageStore, SnapshotRecord


def image_to_proto(rec: ImageRecord) -> image_pb2.Image:
    row = rec.row
    try:
        cfg = parse_config(row.config_json).config
    except InvalidArgument:
        cfg = container_config(None)
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
            labels=cfg.labels, stop_signal=cfg.stop_signal, exposed_ports=cfg.exposed_ports, volumes=cfg.volumes),
        config_json=row.config_json,
        manifest_digest=row.manifest_digest,
    )


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
