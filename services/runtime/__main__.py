"""``python -m services.runtime``: serve RuntimeService; the supervisor is started first if needed."""

from __future__ import annotations

import logging
import os

from berth.runtime.v1 import runtime_pb2_grpc
from services.common.config import load
from services.common.server import serve
from services.runtime import health, network_servicer
from services.runtime.cgroups import new_manager
from services.runtime.containers import Containers
from services.runtime.servicer import RuntimeServicer
from services.runtime.supervisor.client import ensure_running


def main() -> None:
    logging.basicConfig(level=os.environ.get("BERTH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s runtime %(levelname)s %(message)s")
    cfg = load()
    # The supervisor is forked before any thread exists (gRPC's pool comes later).
    supervisor = ensure_running(cfg.supervisor_socket, cfg.run_dir)
    containers = Containers(cfg.runtime_dir, cfg.runtime_db_url, supervisor,
                            new_manager(cfg.cgroup_root, cfg.cgroup_parent),
                            reconnect=lambda: ensure_running(cfg.supervisor_socket, cfg.run_dir))
    # Networks and volumes (issue 5): bridges before containers come back, then a second
    # reconcile for what the containers' own reconcile found dead.
    networks, volumes, containers.plumbing = network_servicer.build(cfg.runtime_dir, cfg.runtime_db_url,
                                                                    cfg.cgroup_parent)
    networks.open()
    monitor = health.Monitor(containers)  # before open: reconcile's exits close health states
    containers.open()
    monitor.open()
    networks.reconcile()

    def stop() -> None:
        monitor.close()
        containers.close()
        networks.close()

    def add(server) -> None:  # noqa: ANN001
        runtime_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(containers), server)
        network_servicer.add_to_server(server, networks, volumes)

    serve("runtime", cfg.runtime_socket, add,
          ["berth.runtime.v1.RuntimeService", "berth.runtime.v1.Networks", "berth.runtime.v1.Volumes"], on_stop=stop)


if __name__ == "__main__":
    main()
