"""The public Berth API: validation and orchestration of multi-step commands.

`Run` is the longest path: resolve the image, prepare a snapshot, create the
container, attach before start so no output is lost, start, stream, and with
`--rm` remove container and snapshot. Every step that fails undoes the earlier
ones, so a bad request leaves no row, snapshot or cgroup behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
from collections.abc import Iterator

import grpc

from berth.api.v1 import api_pb2, api_pb2_grpc
from berth.image.v1 import image_pb2
from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.common import errors
from services.common.config import Config
from services.common.server import map_errors

log = logging.getLogger("berth.api")

# Trailing metadata key carrying the exit code the CLI should use for an error
# (Docker's 126/127 for a command that cannot run).
EXIT_CODE_KEY = "berth-exit-code"


def merge_env(base: list[str], override: list[str]) -> list[str]:
    """Image env overlaid by user env, by variable name, keeping order."""
    merged: dict[str, str] = {}
    for item in [*base, *override]:
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


def container_args(spec: api_pb2.RunSpec, config: image_pb2.ImageConfig) -> list[str]:
    """Docker's rule: --entrypoint replaces the image's and resets its Cmd."""
    entrypoint = list(spec.entrypoint) if spec.entrypoint_set else list(config.entrypoint)
    if spec.command:
        cmd = list(spec.command)
    elif spec.entrypoint_set:
        cmd = []
    else:
        cmd = list(config.cmd)
    args = [a for a in entrypoint if a or len(entrypoint) > 1] + cmd
    if not args:
        raise errors.InvalidArgument("No command specified")
    return args


class BerthServicer(api_pb2_grpc.BerthServicer):
    def __init__(self, image, runtime, events: EventLog, cfg: Config) -> None:  # noqa: ANN001 - gRPC stubs
        self.image = Downstream("image", str(cfg.image_socket), image)
        self.runtime = Downstream("runtime", str(cfg.runtime_socket), runtime)
        self.events = events
        self.cfg = cfg

    # --- containers -------------------------------------------------------

    def _create(self, spec: api_pb2.RunSpec) -> runtime_pb2.Container:
        if not spec.image:
            raise errors.InvalidArgument("an image is required")
        image = self.image.Inspect(image_pb2.InspectImageRequest(reference=spec.image))
        args = container_args(spec, image.config)
        cid = secrets.token_hex(32)
        snapshot = self.image.PrepareSnapshot(image_pb2.PrepareSnapshotRequest(key=cid, image=image.id))
        labels = dict(image.config.labels)
        labels.update(spec.labels)
        rspec = runtime_pb2.ContainerSpec(
            image=spec.image, image_id=image.id, args=args,
            env=merge_env(list(image.config.env), list(spec.env)),
            cwd=spec.workdir or image.config.working_dir or "/",
            user=spec.user or image.config.user, hostname=spec.hostname,
            resources=spec.resources, rootfs=snapshot.mount, labels=labels,
            stop_signal=spec.stop_signal or image.config.stop_signal or "SIGTERM",
            stop_timeout=spec.stop_timeout, auto_remove=spec.auto_remove, tty=spec.tty, open_stdin=spec.interactive)
        try:
            container = self.runtime.Create(runtime_pb2.CreateRequest(id=cid, name=spec.name, spec=rspec))
        except BaseException:
            self._remove_snapshot(cid)
            raise
        self.events.record("container", "create", cid, name=container.name, image=spec.image)
        return container

    def _remove_snapshot(self, key: str) -> None:
        try:
            self.image.RemoveSnapshot(image_pb2.RemoveSnapshotRequest(key=key))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def _remove(self, cid: str, force: bool) -> runtime_pb2.Container:
        container = self.runtime.Remove(runtime_pb2.RemoveRequest(id=cid, force=force))
        self._remove_snapshot(container.id)
        self.events.record("container", "destroy", container.id, name=container.name)
        return container

    def _start(self, cid: str, context: grpc.ServicerContext) -> runtime_pb2.Container:
        container = self.runtime.Start(runtime_pb2.ContainerRef(id=cid))
        if container.error:
            context.set_trailing_metadata(((EXIT_CODE_KEY, str(container.exit_code or 125)),))
            raise errors.FailedPrecondition(container.error)
        self.events.record("container", "start", container.id, name=container.name)
        return container

    def _auto_remove_when_done(self, cid: str) -> None:
        def wait_and_remove() -> None:
            try:
                self.runtime.Wait(runtime_pb2.ContainerRef(id=cid))
                self._remove(cid, force=True)
            except Exception:  # noqa: BLE001 - best effort; logged
                log.exception("auto-remove of %s failed", cid)

        threading.Thread(target=wait_and_remove, name=f"autoremove-{cid[:12]}", daemon=True).start()

    @map_errors
    def Run(self, request_iterator: Iterator[api_pb2.RunRequest], context: grpc.ServicerContext):
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise errors.InvalidArgument("the first Run request must carry the spec")
        spec = first.spec
        container = self._create(spec)
        cid = container.id
        yield api_pb2.RunResponse(container_id=cid)
        if spec.detach:
            try:
                self._start(cid, context)
            except BaseException:
                if spec.auto_remove:
                    self._remove(cid, force=True)
                raise
            if spec.auto_remove:
                self._auto_remove_when_done(cid)
            return

        stdin: queue.Queue = queue.Queue()
        stdin.put(runtime_pb2.AttachRequest(id=cid))

        def attach_requests() -> Iterator[runtime_pb2.AttachRequest]:
            while (item := stdin.get()) is not None:
                yield item

        attach = self.runtime.Attach(attach_requests())
        try:
            next(attach)  # the runtime's "subscribed" acknowledgement
            self._start(cid, context)
            threading.Thread(target=self._forward_client, args=(request_iterator, cid, stdin),
                             daemon=True).start()
            exit_code = None
            for resp in attach:
                if resp.HasField("output"):
                    yield api_pb2.RunResponse(output=resp.output)
                elif resp.HasField("exit_code"):
                    exit_code = resp.exit_code
            if exit_code is None:
                exit_code = self.runtime.Wait(runtime_pb2.ContainerRef(id=cid)).exit_code
            self.events.record("container", "die", cid, exitCode=str(exit_code))
        except BaseException:
            if spec.auto_remove:
                self._remove(cid, force=True)
            raise
        finally:
            stdin.put(None)
        if spec.auto_remove:
            self._remove(cid, force=True)
        yield api_pb2.RunResponse(exit_code=exit_code)

    def _forward_client(self, request_iterator: Iterator[api_pb2.RunRequest], cid: str,
                        stdin: queue.Queue) -> None:
        """Signals and stdin from the CLI go to the container while it runs."""
        try:
            for req in request_iterator:
                if req.HasField("signal"):
                    with contextlib.suppress(grpc.RpcError, errors.BerthError):
                        self.runtime.Kill(runtime_pb2.KillRequest(id=cid, signal=req.signal))
                elif req.HasField("stdin"):
                    stdin.put(runtime_pb2.AttachRequest(stdin=req.stdin))
        except grpc.RpcError:
            pass  # the client went away; the container keeps running like Docker's

    @map_errors
    def CreateContainer(self, request: api_pb2.RunSpec, context: grpc.ServicerContext):
        return self._create(request)

    @map_errors
    def StartContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self._start(request.id, context)

    @map_errors
    def StopContainer(self, request: runtime_pb2.StopRequest, context: grpc.ServicerContext):
        container = self.runtime.Stop(request)
        self.events.record("container", "stop", container.id, name=container.name)
        return container

    @map_errors
    def KillContainer(self, request: runtime_pb2.KillRequest, context: grpc.ServicerContext):
        container = self.runtime.Kill(request)
        self.events.record("container", "kill", container.id, name=container.name, signal=request.signal)
        return container

    @map_errors
    def RemoveContainer(self, request: runtime_pb2.RemoveRequest, context: grpc.ServicerContext):
        return self._remove(request.id, request.force)

    @map_errors
    def WaitContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self.runtime.Wait(runtime_pb2.ContainerRef(id=request.id))

    @map_errors
    def ListContainers(self, request: runtime_pb2.ListRequest, context: grpc.ServicerContext):
        return self.runtime.List(request)

    @map_errors
    def InspectContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self.runtime.Inspect(runtime_pb2.ContainerRef(id=request.id))

    @map_errors
    def ContainerLogs(self, request: runtime_pb2.LogsRequest, context: grpc.ServicerContext):
        yield from self.runtime.Logs(request)

    # --- images -----------------------------------------------------------

    @map_errors
    def ImportImage(self, request_iterator, context: grpc.ServicerContext):  # noqa: ANN001
        image = self.image.Import(request_iterator)
        self.events.record("image", "import", image.id)
        return image

    @map_errors
    def LoadImage(self, request_iterator, context: grpc.ServicerContext):  # noqa: ANN001
        resp = self.image.Load(request_iterator)
        for image in resp.images:
            self.events.record("image", "load", image.id)
        return resp

    @map_errors
    def ListImages(self, request: image_pb2.ListImagesRequest, context: grpc.ServicerContext):
        return self.image.List(request)

    @map_errors
    def InspectImage(self, request: image_pb2.InspectImageRequest, context: grpc.ServicerContext):
        return self.image.Inspect(request)

    @map_errors
    def RemoveImage(self, request: image_pb2.RemoveImageRequest, context: grpc.ServicerContext):
        resp = self.image.Remove(request)
        for deleted in resp.deleted:
            self.events.record("image", "delete", deleted)
        return resp

    @map_errors
    def TagImage(self, request: image_pb2.TagImageRequest, context: grpc.ServicerContext):
        return self.image.Tag(request)

    # --- system -----------------------------------------------------------

    @map_errors
    def Info(self, request: types_pb2.Empty, context: grpc.ServicerContext):
        containers = self.runtime.List(runtime_pb2.ListRequest(all=True)).containers
        images = self.image.List(image_pb2.ListImagesRequest()).images
        return api_pb2.InfoResponse(
            version=VERSION, kernel=os.uname().release,
            containers=len(containers),
            containers_running=sum(1 for c in containers if c.status == "running"),
            images=len(images), root_dir=str(self.cfg.root_dir))


VERSION = "0.1.0"
