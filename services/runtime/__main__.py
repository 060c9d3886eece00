"""``python -m services.runtime``: serve RuntimeService; the supervisor is started first if needed."""

from __future__ import annotations

import logging
import os

from berth.runtime.v1 import runtime_pb2_grpc
from services.common.config import load
from services.common.server import serve
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
    containers.open()
    serve("runtime", cfg.runtime_socket,
          lambda server: runtime_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(containers), server),
          ["berth.runtime.v1.RuntimeService"], on_stop=containers.close)


if __name__ == "__main__":
    main()
