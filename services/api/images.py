"""The public `berth.api.v1.Images` service: registries and image housekeeping.

It forwards to the image service's Registry service (which owns the registry
client and the store) and adds what only the gateway knows: events, and the
containers row of `system df` from the runtime. `ensure_image` is the
resolve-or-pull step `run`/`create` use when an image is missing.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

import grpc

from berth.api.v1 import api_pb2, images_pb2, images_pb2_grpc
from berth.image.v1 import image_pb2, image_pb2_grpc, registry_pb2, registry_pb2_grpc
from berth.runtime.v1 import runtime_pb2
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.common.config import Config
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.server import channel, map_errors

log = logging.getLogger("berth.api")

PULL_POLICIES = ("missing", "always", "never")
T = TypeVar("T")


def registry_downstream(cfg: Config) -> Downstream:
    """A stub for the image service's Registry service, with the gateway's error mapping."""
    return Downstream("image", str(cfg.image_socket), registry_pb2_grpc.RegistryStub(channel(cfg.image_socket)))


def _looks_like_id(reference: str) -> bool:
    text = reference.removeprefix("sha256:")
    return reference.startswith("sha256:") or (len(text) == 64 and all(c in "0123456789abcdef" for c in text))


def _familiar_with_tag(reference: str) -> str:
    """`busybox` -> `busybox:latest`, as Docker names an image it is about to pull."""
    last = reference.rsplit("/", 1)[-1]
    if "@" in reference or ":" in last:
        return reference
    return reference + ":latest"


def check_pull_policy(policy: str) -> str:
    """Docker's `--pull` values; "" means the default, "missing"."""
    policy = policy or "missing"
    if policy not in PULL_POLICIES:
        raise InvalidArgument(f"invalid pull option: '{policy}': must be one of \"always\", \"missing\" or \"never\"")
    return policy


def ensure_image(image, registry, reference: str,  # noqa: ANN001 - Downstream-wrapped gRPC stubs
                 auth: registry_pb2.RegistryAuth | None = None, platform: str = "",
                 on_progress: Callable[[registry_pb2.PullProgress], None] | None = None,
                 policy: str = "missing") -> image_pb2.Image:
    """The image `reference` names, pulled as `policy` says (Docker's `run --pull`).

    "missing": pull only when a name is not stored (an id that is not stored
    cannot be pulled, and any error but NOT_FOUND is the user's to see);
    "always": pull names every time; "never": only what is stored.
    """
    policy = check_pull_policy(policy)
    if policy != "always" or _looks_like_id(reference):
        try:
            return image.Inspect(image_pb2.InspectImageRequest(reference=reference))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or _looks_like_id(reference) or policy == "never":
                raise
        log.info("image %s not found locally; pulling", reference)
        if on_progress is not None:
            on_progress(registry_pb2.PullProgress(
                status=f"Unable to find image '{_familiar_with_tag(reference)}' locally"))
    request = registry_pb2.PullRequest(reference=reference, platform=platform)
    if auth is not None:
        request.auth.CopyFrom(auth)
    result = None
    for progress in registry.Pull(request):
        if progress.HasField("result"):
            result = progress.result
        if on_progress is not None:
            on_progress(progress)
    # By id: the name may have been re-tagged meanwhile by someone else's pull.
    return image.Inspect(image_pb2.InspectImageRequest(reference=result.image_id if result and result.image_id
                                                       else reference))


_DONE = object()


def relay_pull_progress(create: Callable[[Callable[[registry_pb2.PullProgress], None]], T],
                        ) -> Generator[api_pb2.RunResponse, None, T]:
    """Run `create(report)` on a thread; yield what it reports as RunResponse.pull; return its result.

    `Run` uses it (`container = yield from ...`) so the client sees a missing
    image's pull progress before the container id, as `docker run` shows it.
    """
    events: queue.Queue = queue.Queue()
    outcome: dict[str, object] = {}
    gone = threading.Event()  # the client went away: stop at the next report, create nothing

    def report(progress: registry_pb2.PullProgress) -> None:
        if gone.is_set():
            raise FailedPrecondition("cancelled: the client went away during the pull")
        events.put(progress)

    def runner() -> None:
        try:
            outcome["result"] = create(report)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the stream
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    threading.Thread(target=runner, name="run-create", daemon=True).start()
    try:
        while (item := events.get()) is not _DONE:
            if item.HasField("result"):
                continue  # the container id ends the pull for the client; the result is internal
            yield api_pb2.RunResponse(pull=item)
    except GeneratorExit:
        gone.set()
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


class ImagesServicer(images_pb2_grpc.ImagesServicer):
    def __init__(self, image, registry, runtime, events: EventLog, builder=None) -> None:  # noqa: ANN001
        self.image = image
        self.registry = registry
        self.runtime = runtime
        self.events = events
        self.builder = builder  # the image service's Builder (build cache prune and usage)

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
        cache = self.builder.CacheUsage(image_pb2.BuildCacheUsageRequest()) if self.builder else None
        cache_row = images_pb2.UsageRow(total=cache.total, active=cache.active, size=cache.size,
                                        reclaimable=cache.reclaimable) if cache else images_pb2.UsageRow()
        return images_pb2.DiskUsageSummary(images=images_row, containers=containers_row,
                                           volumes=images_pb2.UsageRow(), build_cache=cache_row,
                                           detail=detail)

    @map_errors
    def PruneBuildCache(self, request: image_pb2.PruneBuildCacheRequest, context: grpc.ServicerContext):
        resp = self.builder.PruneCache(request)
        self.events.record("builder", "prune", "", reclaimed=str(resp.space_reclaimed))
        return resp


def add_to_server(server: grpc.Server, image, runtime, events: EventLog, cfg: Config) -> None:  # noqa: ANN001
    """Register the Images service on the gateway's server, next to berth.api.v1.Berth."""
    wrapped_image = image if isinstance(image, Downstream) else Downstream("image", str(cfg.image_socket), image)
    wrapped_runtime = runtime if isinstance(runtime, Downstream) else \
        Downstream("runtime", str(cfg.runtime_socket), runtime)
    builder = Downstream("image", str(cfg.image_socket), image_pb2_grpc.BuilderStub(channel(cfg.image_socket)))
    servicer = ImagesServicer(wrapped_image, registry_downstream(cfg), wrapped_runtime, events, builder)
    images_pb2_grpc.add_ImagesServicer_to_server(servicer, server)
