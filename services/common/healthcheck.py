"""`python -m services.common.healthcheck SERVICE`: exit 0 when the service answers
SERVING on its socket. Used by compose health checks and scripts."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import config


def healthy(socket: str, timeout: float = 2.0) -> bool:
    try:
        with grpc.insecure_channel(f"unix://{socket}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("api", "image", "runtime"):
        sys.stderr.write("usage: python -m services.common.healthcheck api|image|runtime\n")
        return 2
    return 0 if healthy(str(config.load().socket_for(argv[0]))) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
