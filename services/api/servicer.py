"""The public Berth API: validation and orchestration of multi-step commands.

`Run` is the longest path: resolve the image, prepare a snapshot, create the
container, attach before start so no output is lost, start, stream, and with
`--rm` remove container and snapshot. Every step that fails undoes the earlier
ones, so a bad request leaves no row, snapshot or cgroup behind.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator

import grpc

from berth.api.v1 import api_pb2, api_pb2_grpc
from berth.image.v1 import image_pb2, image_pb2_grpc
from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from services.api import commit, network
from services.api.build import BuildRelay
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.api.health import resolve as resolve_health
from services.api.images import ensure_image, registry_downstream, relay_pull_progress
from services.common import errors
from services.common.config import Config
from services.common.server import channel, map_errors

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
        self.registry = registry_downstream(cfg)
        self._runtime_stub = runtime  # for streams we must be able to cancel (Downstream wraps them)
        self._builder_stub = image_pb2_grpc.BuilderStub(channel(cfg.image_socket))
        self.events = events
        self.cfg = cfg

    # --- containers -------------------------------------------------------

    def _create(self, spec: api_pb2.RunSpec, on_pull=None) -> runtime_pb2.Container:  # noqa: ANN001 - a callback
        if not spec.image:
            raise errors.InvalidArgument("an image is required")
        # Like Docker, `run` and `create` pull an image that is not stored yet (--pull).
        image = ensure_image(self.image, self.registry, spec.image,
                             auth=spec.registry_auth if spec.HasField("registry_auth") else None,
                             platform=spec.platform, on_progress=on_pull, policy=spec.pull)
        args = container_args(spec, image.config)
        healthcheck = resolve_health(spec.healthcheck, image.config.healthcheck)  # before the snapshot: may refuse
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
            stop_timeout=spec.stop_timeout, auto_remove=spec.auto_remove, tty=spec.tty, open_stdin=spec.interactive,
            restart_policy=spec.restart_policy, log_opts=dict(spec.log_opts), tty_rows=spec.tty_rows,
            tty_cols=spec.tty_cols, mounts=spec.mounts, read_only=spec.read_only, security=spec.security,
            network=network.with_default_mode(spec.network), healthcheck=healthcheck)
        try:
            container = self.runtime.Create(runtime_pb2.CreateRequest(id=cid, name=spec.name, spec=rspec))
        except BaseException:
            self._remove_snapshot(cid)
            raise
        self.events.record("container", "create", cid, name=container.name, image=spec.image)
        return container

    def follow_runtime_events(self) -> None:
        """Record what the runtime reports on its own (exits, policy restarts) in our event
        log, reconnecting whenever the runtime restarts. Called once by the server."""

        def follow() -> None:
            while True:
                try:
                    for ev in self._runtime_stub.WatchEvents(types_pb2.Empty()):
                        self.events.record("container", ev.action, ev.id, name=ev.name, **dict(ev.attributes))
                except grpc.RpcError:
                    pass
                except Exception:  # noqa: BLE001 - never let the follower die
                    log.exception("following runtime events")
                time.sleep(0.5)

        threading.Thread(target=follow, name="runtime-events", daemon=True).start()

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
        container = yield from relay_pull_progress(lambda report: self._create(spec, report))
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

        attach = self._runtime_stream("Attach", attach_requests())
        # A client that goes away (or detaches with its detach keys) ends our attach
        # stream too; the container keeps running, like Docker's.
        context.add_callback(attach.cancel)
        try:
            attach = self._relay(attach, context)
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
            if exit_code is None and not context.is_active():
                # The client detached (or went away): the container runs on.
                if spec.auto_remove:
                    self._auto_remove_when_done(cid)
                return
            if exit_code is None:
                exit_code = self.runtime.Wait(runtime_pb2.ContainerRef(id=cid)).exit_code
        except BaseException:
            if spec.auto_remove:
                if context.is_active():
                    self._remove(cid, force=True)
                else:  # detached: remove it once it exits
                    self._auto_remove_when_done(cid)
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
                elif req.HasField("resize"):
                    stdin.put(runtime_pb2.AttachRequest(resize=req.resize))
                elif req.HasField("close_stdin"):
                    stdin.put(runtime_pb2.AttachRequest(close_stdin=True))
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
        stream = self._runtime_stream("Logs", request)
        context.add_callback(stream.cancel)  # `logs -f` ended by the client ends the runtime's stream
        yield from self._relay(stream, context)

    def _runtime_stream(self, method: str, request):  # noqa: ANN001, ANN202 - a request or an iterator
        """A runtime stream as the raw gRPC call, so that it can be cancelled when our own
        client goes away (a detach, a closed terminal, Ctrl-C on `logs -f`)."""
        return getattr(self._runtime_stub, method)(request)

    def _relay(self, stream, context: grpc.ServicerContext) -> Iterator:  # noqa: ANN001 - a grpc call
        """Yield a downstream stream; its CANCELLED after our own client left is no error,
        and a runtime that is down is one clear line."""
        try:
            yield from stream
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and not context.is_active():
                return
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise errors.Unavailable(
                    f"the runtime service is not running (unix://{self.cfg.runtime_socket})") from None
            raise

    @map_errors
    def AttachContainer(self, request_iterator: Iterator[runtime_pb2.AttachRequest],
                        context: grpc.ServicerContext):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "id":
            raise errors.InvalidArgument("the first attach request must name the container")
        # `start -a` starts the container once attached; a plain attach needs it running.
        head = runtime_pb2.AttachRequest(id=first.id, require_running=not first.start, start=first.start)
        stream = self._runtime_stream("Attach", itertools.chain([head], request_iterator))
        context.add_callback(stream.cancel)
        self.events.record("container", "attach", first.id)
        if first.start:
            self.events.record("container", "start", first.id)
        yield from self._relay(stream, context)

    @map_errors
    def ExecContainer(self, request_iterator: Iterator[runtime_pb2.ExecRequest], context: grpc.ServicerContext):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "spec":
            raise errors.InvalidArgument("the first exec request must carry the spec")
        stream = self._runtime_stream("Exec", itertools.chain([first], request_iterator))
        context.add_callback(stream.cancel)
        container = first.spec.container
        started = False
        for resp in self._relay(stream, context):
            if not started:
                started = True
                self.events.record("container", "exec_start", container,
                                   execID=" ".join(first.spec.args))
            if resp.HasField("exit_code"):
                self.events.record("container", "exec_die", container, exitCode=str(resp.exit_code))
            yield resp

    @map_errors
    def CopyFromContainer(self, request: runtime_pb2.CopyFromRequest, context: grpc.ServicerContext):
        stream = self._runtime_stream("CopyFrom", request)
        context.add_callback(stream.cancel)
        yield from self._relay(stream, context)

    @map_errors
    def CopyToContainer(self, request_iterator: Iterator[runtime_pb2.CopyToRequest], context: grpc.ServicerContext):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise errors.InvalidArgument("the first copy request must carry the header")
        resp = self.runtime.CopyTo(itertools.chain([first], request_iterator))
        self.events.record("container", "copy", first.header.id, path=first.header.path)
        return resp

    def _act(self, action: str, container: runtime_pb2.Container, **attrs: str) -> runtime_pb2.Container:
        self.events.record("container", action, container.id, name=container.name, **attrs)
        return container

    @map_errors
    def PauseContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self._act("pause", self.runtime.Pause(runtime_pb2.ContainerRef(id=request.id)))

    @map_errors
    def UnpauseContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self._act("unpause", self.runtime.Unpause(runtime_pb2.ContainerRef(id=request.id)))

    @map_errors
    def TopContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return self.runtime.Top(runtime_pb2.ContainerRef(id=request.id))

    @map_errors
    def ContainerStats(self, request: runtime_pb2.StatsRequest, context: grpc.ServicerContext):
        return self.runtime.Stats(request)

    @map_errors
    def UpdateContainer(self, request: runtime_pb2.UpdateRequest, context: grpc.ServicerContext):
        return self._act("update", self.runtime.Update(request))

    @map_errors
    def RenameContainer(self, request: runtime_pb2.RenameRequest, context: grpc.ServicerContext):
        old = self.runtime.Inspect(runtime_pb2.ContainerRef(id=request.id)).name
        return self._act("rename", self.runtime.Rename(request), oldName="/" + old)

    @map_errors
    def RestartContainer(self, request: runtime_pb2.StopRequest, context: grpc.ServicerContext):
        return self._act("restart", self.runtime.Restart(request))

    @map_errors
    def Build(self, request_iterator: Iterator[image_pb2.BuildInput], context: grpc.ServicerContext):
        relay = BuildRelay(self._builder_stub, self._runtime_stub, self.runtime, self.events)
        yield from relay.run(request_iterator, context)

    @map_errors
    def DiffContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        return commit.diff(self.runtime, self.image, request.id)

    @map_errors
    def CommitContainer(self, request: api_pb2.CommitContainerRequest, context: grpc.ServicerContext):
        return commit.commit(self.runtime, self.image, self.events, request)

    @map_errors
    def ExportContainer(self, request: api_pb2.ContainerRequest, context: grpc.ServicerContext):
        yield from commit.export(self.runtime, self.image, request.id)
        self.events.record("container", "export", request.id)

    @map_errors
    def Events(self, request: api_pb2.EventsRequest, context: grpc.ServicerContext):
        filters = {k: {v for v in value.split(",") if v} for k, value in request.filters.items()}
        unknown = set(filters) - {"container", "image", "type", "event"}
        if unknown:
            raise errors.InvalidArgument(f"invalid filter '{sorted(unknown)[0]}'")
        until = request.until_unix_nano
        since = request.since_unix_nano
        for name in list(filters.get("container", ())):  # names and prefixes match the id too
            with contextlib.suppress(grpc.RpcError, errors.BerthError):
                filters["container"].add(self.runtime.Inspect(runtime_pb2.ContainerRef(id=name)).id)
        live = self.events.subscribe() if not until or until > time.time_ns() else None
        try:
            seen = set()
            for ev in self.events.since(since or time.time_ns(), until):
                seen.add((ev.time_unix_nano, ev.type, ev.action, ev.actor))
                if matches(ev, filters):
                    yield to_message(ev)
            while live is not None and context.is_active():
                try:
                    ev = live.get(timeout=0.5)
                except queue.Empty:
                    if until and time.time_ns() >= until:
                        return
                    continue
                if (ev.time_unix_nano, ev.type, ev.action, ev.actor) in seen:
                    continue  # recorded while we read the history: already sent
                if until and ev.time_unix_nano >= until:
                    return
                if matches(ev, filters):
                    yield to_message(ev)
        finally:
            if live is not None:
                self.events.unsubscribe(live)

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


def matches(ev, filters: dict[str, set[str]]) -> bool:  # noqa: ANN001 - an events.Event
    """Docker's event filters: every given key must match one of its values."""
    import json

    attrs = json.loads(ev.attributes or "{}")
    checks = {
        "type": {ev.type},
        "event": {ev.action, ev.action.partition(":")[0]},  # event=health_status matches each status
        "container": {ev.actor, ev.actor[:12], attrs.get("name", "")} if ev.type == "container" else set(),
        "image": {attrs.get("image", "")} | ({ev.actor} if ev.type == "image" else set()),
    }
    for key, wanted in filters.items():
        have = checks[key] - {""}
        if not any(h in wanted or any(h.startswith(w) for w in wanted if key == "container" and len(w) >= 12)
                   for h in have):
            return False
    return True


def to_message(ev) -> api_pb2.EventMessage:  # noqa: ANN001
    import json

    return api_pb2.EventMessage(type=ev.type, action=ev.action, actor_id=ev.actor,
                                attributes=json.loads(ev.attributes or "{}"), time_unix_nano=ev.time_unix_nano)
