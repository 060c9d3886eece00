"""`berth build` at the gateway: relay the client's options and context to the image
service's builder, and run each RUN step it asks for as a container.

The builder owns the Dockerfile, the cache and the layers, but never spawns a
process; the runtime spawns processes but knows nothing of images. A RunStep
names the snapshot mount to use as the root file system; this module creates a
container on it, streams its output back to the client as build output, waits
for its exit, removes the container (the snapshot stays the builder's) and
answers the builder with a RunResult.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
from collections.abc import Iterator

import grpc

from berth.image.v1 import image_pb2
from berth.runtime.v1 import network_pb2, runtime_pb2
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.common import errors

log = logging.getLogger("berth.api")
BUILD_LABEL = "berth.build"


class BuildRelay:
    """One build: two streams joined (client → builder, builder → client) plus RUN steps."""

    def __init__(self, builder_stub, runtime_stub, runtime: Downstream, events: EventLog) -> None:  # noqa: ANN001
        self.builder_stub = builder_stub
        self.runtime_stub = runtime_stub
        self.runtime = runtime
        self.events = events
        self.inputs: queue.Queue = queue.Queue()
        self.failed: BaseException | None = None

    def _requests(self) -> Iterator[image_pb2.BuildInput]:
        while (item := self.inputs.get()) is not None:
            yield item

    def _forward_client(self, request_iterator: Iterator[image_pb2.BuildInput]) -> None:
        """The context chunks go to the builder as they arrive; never a RunResult from outside."""
        try:
            for req in request_iterator:
                if req.WhichOneof("item") == "run_result":
                    raise errors.InvalidArgument("build: run results come from the gateway, not the client")
                self.inputs.put(req)
                if req.WhichOneof("item") == "context_end":
                    return
        except BaseException as exc:  # noqa: BLE001 - the client went away or sent junk: stop the build
            self.failed = exc
            self.inputs.put(None)

    def run(self, request_iterator: Iterator[image_pb2.BuildInput],
            context: grpc.ServicerContext) -> Iterator[image_pb2.BuildEvent]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "options":
            raise errors.InvalidArgument("build: the first message must carry the options")
        self.inputs.put(first)
        stream = self.builder_stub.Build(self._requests())
        context.add_callback(stream.cancel)
        threading.Thread(target=self._forward_client, args=(request_iterator,), name="build-context",
                         daemon=True).start()
        try:
            for ev in stream:
                if ev.WhichOneof("item") == "run":
                    yield from self._run_step(ev.run, context, stream)
                    continue
                if ev.WhichOneof("item") == "image":
                    self.events.record("image", "build", ev.image.id, tags=",".join(ev.image.repo_tags))
                yield ev
        except grpc.RpcError as err:
            if isinstance(self.failed, errors.BerthError):
                raise self.failed from None
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise errors.Unavailable("the image service is not running") from None
            raise
        finally:
            self.inputs.put(None)

    def _run_step(self, step: image_pb2.RunStep, context: grpc.ServicerContext,
                  builder: grpc.Future) -> Iterator[image_pb2.BuildEvent]:
        """Run one RUN as a container; stream its output; answer the builder."""
        cid = secrets.token_hex(32)
        spec = runtime_pb2.ContainerSpec(
            image="(build)", args=list(step.args), env=list(step.env), cwd=step.cwd or "/", user=step.user,
            hostname=step.hostname, rootfs=step.rootfs, labels={BUILD_LABEL: "1"}, stop_signal="SIGKILL",
            stop_timeout=0, network=network_pb2.NetworkConfig(mode=step.network or "bridge"))
        exit_code, error = 0, ""
        try:
            self.runtime.Create(runtime_pb2.CreateRequest(id=cid, spec=spec))
        except grpc.RpcError as err:
            self.inputs.put(image_pb2.BuildInput(run_result=image_pb2.RunResult(id=step.id, exit_code=125,
                                                                                 error=err.details() or "")))
            return
        except errors.BerthError as err:
            self.inputs.put(image_pb2.BuildInput(run_result=image_pb2.RunResult(id=step.id, exit_code=125,
                                                                                 error=str(err))))
            return
        attach = self.runtime_stub.Attach(iter([runtime_pb2.AttachRequest(id=cid, start=True)]))
        context.add_callback(attach.cancel)
        # The builder gone (the image service died mid-RUN) stops the step now, not when it ends:
        # its container goes below, before the restarted image service sweeps the snapshot under it.
        builder.add_done_callback(lambda _call: attach.cancel())
        try:
            for resp in attach:
                if resp.HasField("output"):
                    yield image_pb2.BuildEvent(output=resp.output)
                elif resp.HasField("exit_code"):
                    exit_code = resp.exit_code
        except grpc.RpcError as err:
            if not context.is_active():
                raise
            exit_code, error = 125, err.details() or "the step's container failed"
        finally:
            with contextlib.suppress(grpc.RpcError, errors.BerthError):
                self.runtime.Remove(runtime_pb2.RemoveRequest(id=cid, force=True))
        self.inputs.put(image_pb2.BuildInput(run_result=image_pb2.RunResult(id=step.id, exit_code=exit_code,
                                                                             error=error)))
