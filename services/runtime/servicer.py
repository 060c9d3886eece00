"""RuntimeService over gRPC: a thin adapter from protos to ``Containers``."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import json_format

from berth.runtime.v1 import runtime_pb2, runtime_pb2_grpc
from berth.types.v1 import types_pb2
from services.common import errors
from services.common.server import map_errors
from services.runtime.containers import Containers, ExecOptions, Input
from services.runtime.health import decode as decode_health
from services.runtime.models import ContainerRecord
from services.runtime.security.userns import userns_uid_map


def to_proto(rec: ContainerRecord, paused: bool = False) -> runtime_pb2.Container:
    return runtime_pb2.Container(
        id=rec.id, name=rec.name or "", spec=json_format.Parse(rec.spec_json, runtime_pb2.ContainerSpec()),
        status=rec.status, pid=rec.pid if rec.status == "running" else 0, exit_code=rec.exit_code,
        oom_killed=rec.oom_killed, created_unix_nano=rec.created_ns, started_unix_nano=rec.started_ns,
        finished_unix_nano=rec.finished_ns, error=rec.error or "", log_path=rec.log_path, paused=paused,
        restart_count=rec.restart_count or 0, health=decode_health(rec.health_json),
        userns_uid_map=userns_uid_map(rec.userns_base or 0))


def inputs_of(requests) -> Iterator[Input]:  # noqa: ANN001 - attach or exec requests
    """Client requests after the first, as runtime inputs."""
    for req in requests:
        kind = req.WhichOneof("item")
        if kind == "stdin":
            yield Input("stdin", data=req.stdin)
        elif kind == "resize":
            yield Input("resize", rows=req.resize.rows, cols=req.resize.cols)
        elif kind == "close_stdin":
            yield Input("close")


def attach_response(ev) -> runtime_pb2.AttachResponse:  # noqa: ANN001 - an AttachEvent
    if ev.kind == "subscribed":
        return runtime_pb2.AttachResponse()
    if ev.kind == "output":
        return runtime_pb2.AttachResponse(output=types_pb2.Output(
            stream=_stream(ev.stream), data=ev.data, time_unix_nano=ev.time_ns))
    return runtime_pb2.AttachResponse(exit_code=ev.exit_code)


def _stream(n: int) -> int:
    return types_pb2.Output.STDERR if n == 2 else types_pb2.Output.STDOUT


class RuntimeServicer(runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, containers: Containers) -> None:
        self.c = containers

    def _proto(self, rec: ContainerRecord) -> runtime_pb2.Container:
        return to_proto(rec, self.c.is_paused(rec))

    @map_errors
    def Create(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.create(request.id, request.name, request.spec))

    @map_errors
    def Start(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.start(request.id))

    @map_errors
    def Attach(self, request_iterator, context):  # noqa: ANN001, N802
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "id":
            raise errors.InvalidArgument("the first attach request must name the container")
        for ev in self.c.attach(first.id, context.is_active, inputs_of(request_iterator), first.require_running,
                                start=first.start):
            yield attach_response(ev)

    @map_errors
    def Wait(self, request, context):  # noqa: ANN001, N802
        rec = self.c.wait(request.id, context.is_active)
        return runtime_pb2.WaitResponse(exit_code=rec.exit_code, oom_killed=rec.oom_killed)

    @map_errors
    def Stop(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.stop(request.id, request.timeout))

    @map_errors
    def Kill(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.kill(request.id, request.signal))

    @map_errors
    def Remove(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.remove(request.id, request.force))

    @map_errors
    def List(self, request, context):  # noqa: ANN001, N802
        return runtime_pb2.ListResponse(containers=[self._proto(r) for r in self.c.list(request.all)])

    @map_errors
    def Inspect(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.get(request.id))

    @map_errors
    def Logs(self, request, context):  # noqa: ANN001, N802
        for entry in self.c.logs(request.id, request.tail, request.since_unix_nano, request.until_unix_nano,
                                 request.follow, context.is_active):
            yield runtime_pb2.LogEntry(output=types_pb2.Output(
                stream=_stream(2 if entry.stream == "stderr" else 1), data=entry.data,
                time_unix_nano=entry.time_ns))

    @map_errors
    def Exec(self, request_iterator, context):  # noqa: ANN001, N802
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "spec":
            raise errors.InvalidArgument("the first exec request must carry the spec")
        sp = first.spec
        opts = ExecOptions(container=sp.container, args=list(sp.args), env=list(sp.env), user=sp.user,
                           workdir=sp.workdir, tty=sp.tty, open_stdin=sp.open_stdin, tty_rows=sp.tty_rows,
                           tty_cols=sp.tty_cols, detach=sp.detach)
        for ev in self.c.exec(opts, context.is_active, inputs_of(request_iterator)):
            yield attach_response(ev)

    @map_errors
    def Pause(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.pause(request.id))

    @map_errors
    def Unpause(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.unpause(request.id))

    @map_errors
    def Top(self, request, context):  # noqa: ANN001, N802
        procs = [runtime_pb2.TopProcess(pid=p.pid, container_pid=p.container_pid, ppid=p.ppid, uid=p.uid,
                                        user=p.user, start_unix_nano=p.start_ns, cpu_time_ns=p.cpu_ns, tty=p.tty,
                                        cmd=p.cmd) for p in self.c.top(request.id)]
        return runtime_pb2.TopResponse(titles=["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
                                       processes=procs)

    @map_errors
    def Stats(self, request, context):  # noqa: ANN001, N802
        return runtime_pb2.StatsResponse(stats=[runtime_pb2.ContainerStats(
            id=st.id, name=st.name, read_unix_nano=st.read_ns, cpu_usage_ns=st.cpu_ns, system_cpu_ns=st.system_ns,
            online_cpus=st.online_cpus, memory_usage_bytes=st.memory_usage, memory_limit_bytes=st.memory_limit,
            pids=st.pids, net_rx_bytes=st.net_rx, net_tx_bytes=st.net_tx, block_read_bytes=st.block_read,
            block_write_bytes=st.block_write) for st in self.c.stats(list(request.ids))])

    @map_errors
    def Update(self, request, context):  # noqa: ANN001, N802
        resources = request.resources if request.HasField("resources") else None
        policy = request.restart_policy if request.set_restart_policy else None
        return self._proto(self.c.update(request.id, resources, policy))

    @map_errors
    def Rename(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.rename(request.id, request.name))

    @map_errors
    def Restart(self, request, context):  # noqa: ANN001, N802
        return self._proto(self.c.restart(request.id, request.timeout))

    @map_errors
    def CopyFrom(self, request, context):  # noqa: ANN001, N802
        for chunk in self.c.copy_from(request.id, request.path):
            yield runtime_pb2.CopyChunk(data=chunk)

    @map_errors
    def CopyTo(self, request_iterator, context):  # noqa: ANN001, N802
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "header":
            raise errors.InvalidArgument("the first copy request must carry the header")
        self.c.copy_to(first.header.id, first.header.path,
                       (req.data for req in request_iterator if req.WhichOneof("item") == "data"))
        return runtime_pb2.CopyToResponse()

    @map_errors
    def WatchEvents(self, request, context):  # noqa: ANN001, N802
        for ev in self.c.events(context.is_active):
            yield runtime_pb2.RuntimeEvent(action=ev["action"], id=ev["id"], name=ev["name"],
                                           attributes=ev["attrs"], time_unix_nano=ev["time_ns"])
