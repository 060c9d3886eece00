"""The public `berth.api.v1.Images` service: registries and image housekeeping.

It forwards to the image service's Registry service (which owns the registry
client and the store) and adds what only the gateway knows: events, and the
containers row of `system df` from the runtime. `ensure_image` is the
resolve-or-pull step `run`/`create` use when an image is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from berth.api.v1 import images_pb2, images_pb2_grpc
from berth.image.v1 import image_pb2, registry_pb2, registry_pb2_grpc
from berth.runtime.v1 import runtime_pb2
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.common.config import Config
from services.common.server import channel, map_errors

log = logging.getLogger("berth.api")


def registry_downstream(cfg: Config) -> Downstream:
    """A stub for the image service's Registry service, with the gateway's error mapping."""
    return Downstream("image", str(cfg.image_socket), registry_pb2_grpc.RegistryStub(channel(cfg.image_socket)))


def _looks_like_id(reference: str) -> bool:
    text = reference.removeprefix("sha256:")
    return reference.startswith("sha256:") or (len(text) == 64 and all(c in "0123456789abcdef" for c in text))


def ensure_image(image, registry, reference: str,  # noqa: ANN001 - Downstream-wrapped gRPC stubs
                 auth: registry_pb2.RegistryAuth | None = None, platform: str = "",
                 on_progress: Callable[[registry_pb2.PullProgress], None] | None = None) -> image_pb2.Image:
    """The image `reference` names, pulled first if it is not stored (Docker's `run` behaviour).

    Only a NOT_FOUND for a name triggers a pull: an id that is not stored
    cannot be pulled, and any other error is the user's to see.
    """
    try:
        return image.Inspect(image_pb2.InspectImageRequest(reference=reference))
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND or _looks_like_id(reference):
            raise
    log.info("image %s not found locally; pulling", reference)
    request = registry_pb2.PullRequest(reference=reference, platform=platform)
    if auth is not None:
        request.auth.CopyFrom(auth)
    for progress in registry.Pull(request):
        if on_progress is not None:
            on_progress(progress)
    return image.Inspect(image_pb2.InspectImageRequest(reference=reference))


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    def __init__(self, image, registry, runtime, events: EventLog) -> None:  # noqa: ANN001 - Downstreams
        self.image = image
        self.registry = registry
        self.runtime = runtime
        self.events = events

    @map_errors
    def Pull(self, request: registry_pb2.PullRequest, context: grpc.ServicerContext):
        for progress in self.registry.Pull(request):
            if progress.HasField("result"):
                self.events.record("image", "pull", progress.result.reference)
            yield progress

    @map_errors
    def Push(self, request: registry_pb2.PushRequest, context: grpc.ServicerContext):
        for progress in self.registry.Push(request):
            if progress.HasField("result"):
                self.events.record("image", "push", progress.result.reference)
            yield progress

    @map_errors
    def Login(self, request: registry_pb2.LoginRequest, context: grpc.ServicerContext):
        return self.registry.Login(request)

    @map_errors
    def Save(self, request: registry_pb2.SaveRequest, context: grpc.ServicerContext):
        yield from self.registry.Save(request)
        for ref in request.references:
            self.events.record("image", "save", ref)

    @map_errors
    def History(self, request: registry_pb2.HistoryRequest, context: grpc.ServicerContext):
        return self.registry.History(request)

    @map_errors
    def Prune(self, request: registry_pb2.PruneRequest, context: grpc.ServicerContext):
        resp = self.registry.Prune(request)
        for deleted in resp.deleted:
            self.events.record("image", "delete", deleted)
        self.events.record("image", "prune", "", reclaimed=str(resp.space_reclaimed))
        return resp

    @map_errors
    def DiskUsage(self, request: registry_pb2.DiskUsageRequest, context: grpc.ServicerContext):
        detail = self.registry.DiskUsage(request)
        containers = self.runtime.List(runtime_pb2.ListRequest(all=True)).containers
        running = {c.id for c in containers if c.status == "running"}
        snap_size = {s.key: s.size for s in detail.snapshots}
        images_row = images_pb2.UsageRow(
            total=len(detail.images), active=sum(1 for u in detail.images if u.containers),
            size=detail.layers_size, reclaimable=detail.reclaimable)
        containers_row = images_pb2.UsageRow(
            total=len(containers), active=len(running),
            size=sum(snap_size.get(c.id, 0) for c in containers),
            reclaimable=sum(snap_size.get(c.id, 0) for c in containers if c.id not in running))
        return images_pb2.DiskUsageSummary(images=images_row, containers=containers_row,
                                           volumes=images_pb2.UsageRow(), build_cache=images_pb2.UsageRow(),
                                           detail=detail)


def add_to_server(server: grpc.Server, image, runtime, events: EventLog, cfg: Config) -> None:  # noqa: ANN001
    """Register the Images service on the gateway's server, next to berth.api.v1.Berth."""
    wrapped_image = image if isinstance(image, Downstream) else Downstream("image", str(cfg.image_socket), image)
    wrapped_runtime = runtime if isinstance(runtime, Downstream) else \
        Downstream("runtime", str(cfg.runtime_socket), runtime)
    servicer = ImagesServicer(wrapped_image, registry_downstream(cfg), wrapped_runtime, events)
    images_pb2_grpc.add_ImagesServicer_to_server(servicer, server)
