"""RuntimeService over gRPC: a thin adapter from protos to ``Containers``."""

from __future__ import annotations

from google.protobuf import json_format

from berth.runtime.v1 import runtime_pb2, runtime_pb2_grpc
from berth.types.v1 import types_pb2
from services.common import errors
from services.common.server import map_errors
from services.runtime.containers import Containers
from services.runtime.models import ContainerRecord


def to_proto(rec: ContainerRecord) -> runtime_pb2.Container:
    return runtime_pb2.Container(
        id=rec.id, name=rec.name or "", spec=json_format.Parse(rec.spec_json, runtime_pb2.ContainerSpec()),
        status=rec.status, pid=rec.pid if rec.status == "running" else 0, exit_code=rec.exit_code,
        oom_killed=rec.oom_killed, created_unix_nano=rec.created_ns, started_unix_nano=rec.started_ns,
        finished_unix_nano=rec.finished_ns, error=rec.error or "", log_path=rec.log_path)


def _stream(n: int) -> int:
    return types_pb2.Output.STDERR if n == 2 else types_pb2.Output.STDOUT


class RuntimeServicer(runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, containers: Containers) -> None:
        self.c = containers

    @map_errors
    def Create(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.create(request.id, request.name, request.spec))

    @map_errors
    def Start(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.start(request.id))

    @map_errors
    def Attach(self, request_iterator, context):  # noqa: ANN001, N802
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("item") != "id":
            raise errors.InvalidArgument("the first attach request must name the container")
        for ev in self.c.attach(first.id, context.is_active):
            if ev.kind == "subscribed":
                yield runtime_pb2.AttachResponse()
            elif ev.kind == "output":
                yield runtime_pb2.AttachResponse(output=types_pb2.Output(
                    stream=_stream(ev.stream), data=ev.data, time_unix_nano=ev.time_ns))
            else:
                yield runtime_pb2.AttachResponse(exit_code=ev.exit_code)

    @map_errors
    def Wait(self, request, context):  # noqa: ANN001, N802
        rec = self.c.wait(request.id, context.is_active)
        return runtime_pb2.WaitResponse(exit_code=rec.exit_code, oom_killed=rec.oom_killed)

    @map_errors
    def Stop(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.stop(request.id, request.timeout))

    @map_errors
    def Kill(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.kill(request.id, request.signal))

    @map_errors
    def Remove(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.remove(request.id, request.force))

    @map_errors
    def List(self, request, context):  # noqa: ANN001, N802
        return runtime_pb2.ListResponse(containers=[to_proto(r) for r in self.c.list(request.all)])

    @map_errors
    def Inspect(self, request, context):  # noqa: ANN001, N802
        return to_proto(self.c.get(request.id))

    @map_errors
    def Logs(self, request, context):  # noqa: ANN001, N802
        for entry in self.c.logs(request.id, request.tail):
            yield runtime_pb2.LogEntry(output=types_pb2.Output(
                stream=_stream(2 if entry.stream == "stderr" else 1), data=entry.data,
                time_unix_nano=entry.time_ns))
