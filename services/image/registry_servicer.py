"""The gRPC Registry service: a thin adapter over pull, push, save and housekeeping.

Long operations run in a worker thread and report through a queue, so the
stream carries progress as it happens; when the client goes away the worker
is cancelled at its next read and its Ingest discards everything staged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc

from berth.image.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.server import map_errors
from services.image import housekeeping, reference
from services.image.pull import LayerEvent, StatusLine, pull
from services.image.push import DEFAULT_CHUNK_SIZE, push
from services.image.registry import Credentials, RegistryClient, Settings
from services.image.save import save
from services.image.servicer import image_to_proto
from services.image.store import ImageStore
from services.image.streams import ChunkWriter
from services.image.streams import run_streaming as _run_streaming

log = logging.getLogger("berth.image")
SAVE_CHUNK = 1 << 20


def credentials(auth: registry_pb2.RegistryAuth) -> Credentials:
    return Credentials(auth.username, auth.password, auth.identity_token, auth.registry_token)


def _event_to_proto(event: StatusLine | LayerEvent) -> registry_pb2.PullProgress:
    if isinstance(event, StatusLine):
        return registry_pb2.PullProgress(status=event.text)
    return registry_pb2.PullProgress(layer=registry_pb2.LayerProgress(
        id=event.id, status=event.status, current=event.current, total=event.total))


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, store: ImageStore, settings: Settings | None = None,
                 push_chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.store = store
        self.settings = settings or Settings.load()
        self.push_chunk_size = push_chunk_size

    @map_errors
    def Pull(self, request: registry_pb2.PullRequest, context: grpc.ServicerContext):
        creds = credentials(request.auth)

        def work(emit: Callable[[Any], None], cancel: threading.Event) -> Any:
            return pull(self.store, request.reference, creds=creds, platform=request.platform,
                        settings=self.settings, progress=lambda e: emit(_event_to_proto(e)), cancel=cancel)

        for item in _run_streaming(work, context):
            if isinstance(item, registry_pb2.PullProgress):
                yield item
            else:
                yield registry_pb2.PullProgress(result=registry_pb2.PullResult(
                    reference=item.reference, digest=item.digest, image_id=item.image_id,
                    up_to_date=item.up_to_date))

    @map_errors
    def Push(self, request: registry_pb2.PushRequest, context: grpc.ServicerContext):
        creds = credentials(request.auth)

        def work(emit: Callable[[Any], None], cancel: threading.Event) -> Any:
            return push(self.store, request.reference, creds=creds, settings=self.settings,
                        progress=lambda e: emit(_event_to_proto(e)), cancel=cancel,
                        chunk_size=self.push_chunk_size)

        for item in _run_streaming(work, context):
            if isinstance(item, registry_pb2.PullProgress):
                yield item
            else:
                yield registry_pb2.PullProgress(result=registry_pb2.PullResult(
                    reference=item.reference, digest=item.digest, size=item.size, tag=item.tag))

    @map_errors
    def Login(self, request: registry_pb2.LoginRequest, context: grpc.ServicerContext):
        server = request.server or reference.DEFAULT_DOMAIN
        server = server.removeprefix("https://").removeprefix("http://").split("/", 1)[0]
        if server in ("index.docker.io", "registry-1.docker.io"):
            server = reference.DEFAULT_DOMAIN
        if not request.auth.username and not request.auth.identity_token:
            raise InvalidArgument("login: a username is required")
        base = self.settings.endpoints(server, for_push=True)[0]
        RegistryClient(base, credentials(request.auth)).ping()
        return registry_pb2.LoginResponse(status="Login Succeeded")

    @map_errors
    def Save(self, request: registry_pb2.SaveRequest, context: grpc.ServicerContext):
        refs = list(request.references)
        fmt = request.format or "docker-archive"

        def work(emit: Callable[[Any], None], cancel: threading.Event) -> None:
            with ChunkWriter(lambda data: emit(registry_pb2.SaveChunk(data=data)), cancel, SAVE_CHUNK) as w:
                save(self.store, refs, w, fmt)

        for item in _run_streaming(work, context):
            if item is not None:
                yield item

    @map_errors
    def History(self, request: registry_pb2.HistoryRequest, context: grpc.ServicerContext):
        return registry_pb2.HistoryResponse(entries=[
            registry_pb2.HistoryEntry(id=e.id, created_unix=e.created_unix, created_by=e.created_by, size=e.size,
                                      comment=e.comment, empty_layer=e.empty_layer, tags=e.tags)
            for e in housekeeping.history(self.store, request.reference)])

    @map_errors
    def Prune(self, request: registry_pb2.PruneRequest, context: grpc.ServicerContext):
        out = housekeeping.prune(self.store, request.all)
        return registry_pb2.PruneResponse(untagged=out.untagged, deleted=out.deleted,
                                          space_reclaimed=out.space_reclaimed)

    @map_errors
    def DiskUsage(self, request: registry_pb2.DiskUsageRequest, context: grpc.ServicerContext):
        usage = housekeeping.disk_usage(self.store)
        return registry_pb2.DiskUsageResponse(
            images=[registry_pb2.ImageUsage(image=image_to_proto(u.record), shared_size=u.shared_size,
                                            unique_size=u.unique_size, containers=u.containers)
                    for u in usage.images],
            snapshots=[registry_pb2.SnapshotUsage(key=s.key, image_id=s.image_id, size=s.size)
                       for s in usage.snapshots],
            layers_size=usage.layers_size, blobs_size=usage.blobs_size, reclaimable=usage.reclaimable)
