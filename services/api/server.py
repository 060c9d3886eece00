"""Wire the gateway: stubs to image and runtime, the event log, the gRPC server."""

from __future__ import annotations

import grpc

from berth.api.v1 import api_pb2_grpc
from berth.image.v1 import image_pb2_grpc
from berth.runtime.v1 import runtime_pb2_grpc
from services.api import images, network, recovery
from services.api.events import EventLog
from services.api.servicer import BerthServicer
from services.common import config, tls
from services.common.server import channel, serve


def main() -> None:
    cfg = config.load()
    try:
        tcp = tls.listener(cfg)  # a bad TLS setting stops the api before it serves anything
    except tls.TlsError as err:
        raise SystemExit(f"api: {err}") from None
    image = image_pb2_grpc.ImageServiceStub(channel(cfg.image_socket))
    runtime = runtime_pb2_grpc.RuntimeServiceStub(channel(cfg.runtime_socket))
    events = EventLog(cfg.api_db_url)
    servicer = BerthServicer(image, runtime, events, cfg)
    servicer.follow_runtime_events()  # exits and policy restarts into the event log
    recovery.follow(servicer, runtime)  # snapshots and --rm containers a crash left unpaired

    def add(server: grpc.Server) -> None:
        api_pb2_grpc.add_BerthServicer_to_server(servicer, server)
        images.add_to_server(server, image, runtime, events, cfg)
        network.add_to_server(server, events, cfg)

    serve("api", cfg.api_socket, add, ["berth.api.v1.Berth", "berth.api.v1.Images", *network.SERVICE_NAMES],
          on_stop=events.flush, tcp=tcp)
