"""Wire the gateway: stubs to image and runtime, the event log, the gRPC server."""

from __future__ import annotations

from berth.api.v1 import api_pb2_grpc
from berth.image.v1 import image_pb2_grpc
from berth.runtime.v1 import runtime_pb2_grpc
from services.api.events import EventLog
from services.api.servicer import BerthServicer
from services.common import config
from services.common.server import channel, serve


def main() -> None:
    cfg = config.load()
    image = image_pb2_grpc.ImageServiceStub(channel(cfg.image_socket))
    runtime = runtime_pb2_grpc.RuntimeServiceStub(channel(cfg.runtime_socket))
    events = EventLog(cfg.api_db_url)
    servicer = BerthServicer(image, runtime, events, cfg)
    serve("api", cfg.api_socket,
          lambda server: api_pb2_grpc.add_BerthServicer_to_server(servicer, server),
          ["berth.api.v1.Berth"], on_stop=events.flush)
