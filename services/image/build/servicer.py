"""The gRPC Builder service: options, then the context, then RUN results, on one stream.

The build runs in a worker thread that reads the client stream (context chunks,
later RunResults) and emits BuildEvents; this adapter only yields them. A
failure ends the stream with a status (a failing RUN is FAILED_PRECONDITION
naming the Dockerfile line and exit code) after everything was cleaned up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from berth.image.v1 import image_pb2, image_pb2_grpc
from services.common.errors import InvalidArgument, Unavailable
from services.common.server import map_errors
from services.image import pull as pullmod
from services.image.build import context as ctxmod
from services.image.build.builder import Builder, Options
from services.image.build.cache import BuildCache
from services.image.build.dockerfile import parse
from services.image.build.fs import RootView, clean_rel
from services.image.servicer import image_to_proto
from services.image.store import ImageStore
from services.image.streams import run_streaming

DOCKERFILE_LIMIT = 4 << 20


class BuilderServicer(image_pb2_grpc.BuilderServicer):
    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.cache = BuildCache(store)  # leases the cached layers: construct before store.reconcile()

    @map_errors
    def Build(self, request_iterator: Iterator[image_pb2.BuildInput], context: grpc.ServicerContext):
        def work(emit: Callable[[Any], None], cancel: threading.Event) -> image_pb2.BuildEvent:
            return build(self.store, self.cache, request_iterator, emit, cancel)

        yield from run_streaming(work, context)

    @map_errors
    def PruneCache(self, request: image_pb2.PruneBuildCacheRequest, context: grpc.ServicerContext):
        out = self.cache.prune(request.all, request.until_unix)
        return image_pb2.PruneBuildCacheResponse(deleted=out.deleted, space_reclaimed=out.space_reclaimed)

    @map_errors
    def CacheUsage(self, request: image_pb2.BuildCacheUsageRequest, context: grpc.ServicerContext):
        u = self.cache.usage()
        return image_pb2.BuildCacheUsage(total=u.total, active=u.active, size=u.size, reclaimable=u.reclaimable)


def _pull(store: ImageStore) -> Callable[[str, str, Callable[[str], None]], None]:
    def pull(ref: str, platform: str, status: Callable[[str], None]) -> None:
        def progress(ev: pullmod.StatusLine | pullmod.LayerEvent) -> None:
            if isinstance(ev, pullmod.StatusLine):
                status(ev.text)
            elif ev.status != "Downloading":
                status(f"{ev.id}: {ev.status}")

        pullmod.pull(store, ref, platform=platform, progress=progress)

    return pull


def options_of(msg: image_pb2.BuildOptions) -> Options:
    return Options(tags=list(msg.tags), build_args=dict(msg.build_args), target=msg.target, no_cache=msg.no_cache,
                   pull=msg.pull, platform=msg.platform, labels=dict(msg.labels), network=msg.network)


def read_dockerfile(ctx: ctxmod.Context, name: str) -> str:
    view = RootView([str(ctx.root)])
    entry = view.lookup(view.resolve(clean_rel(name)))
    if entry is None:
        raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}")
    with open(entry.path, "rb") as f:
        data = f.read(DOCKERFILE_LIMIT + 1)
    if len(data) > DOCKERFILE_LIMIT:
        raise InvalidArgument(f"Dockerfile {name} is too large")
    return data.decode(errors="replace")


def build(store: ImageStore, cache: BuildCache, inputs: Iterator[image_pb2.BuildInput],
          emit: Callable[[Any], None], cancel: threading.Event) -> image_pb2.BuildEvent:
    first = next(inputs, None)
    if first is None or first.WhichOneof("item") != "options":
        raise InvalidArgument("build: the first message must carry the options")
    opts = first.options
    dockerfile_name = opts.dockerfile or "Dockerfile"

    def chunks() -> Iterator[bytes]:
        for msg in inputs:
            kind = msg.WhichOneof("item")
            if kind == "context":
                yield msg.context
            elif kind == "context_end":
                return
            else:
                raise InvalidArgument(f"build: unexpected {kind} before the end of the context")
        raise Unavailable("build: the client went away while sending the context")

    ctx = ctxmod.receive(chunks(), store.scratch, dockerfile_name)
    try:
        text = opts.dockerfile_content or read_dockerfile(ctx, dockerfile_name)
        ctxmod.hide_build_files(ctx, dockerfile_name)
        df = parse(text, filename=dockerfile_name.rsplit("/", 1)[-1] if not opts.dockerfile_content else "Dockerfile")

        def run(step: image_pb2.RunStep) -> image_pb2.RunResult:
            emit(image_pb2.BuildEvent(run=step))
            for msg in inputs:
                if msg.WhichOneof("item") != "run_result":
                    raise InvalidArgument("build: expected a run_result")
                if msg.run_result.id != step.id:
                    raise InvalidArgument(f"build: run_result for {msg.run_result.id!r}, expected {step.id!r}")
                return msg.run_result
            raise Unavailable("build: the client went away during a RUN step")

        builder = Builder(store, cache, df, ctx, options_of(opts), emit, run, _pull(store), cancel)
        record = builder.run()
        return image_pb2.BuildEvent(image=image_to_proto(store.inspect(record.row.id)))
    finally:
        ctx.close()
