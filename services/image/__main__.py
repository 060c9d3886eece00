"""`python -m services.image`: serve ImageService on the configured socket.

Start-up is only: open the store (sweeping a crashed run's scratch space),
collect what no record reaches, and serve.
"""

from __future__ import annotations

import grpc

from berth.image.v1 import image_pb2, image_pb2_grpc, registry_pb2, registry_pb2_grpc
from services.common import config
from services.common.server import serve
from services.image.build.servicer import BuilderServicer
from services.image.registry_servicer import RegistryServicer
from services.image.servicer import ImageServicer
from services.image.store import ImageStore


def main() -> None:
    cfg = config.load()
    store = ImageStore(cfg.image_dir, cfg.image_db_url, cfg.max_layer_size)
    builder = BuilderServicer(store)  # leases the build cache's layers, so reconcile spares them
    store.reconcile()

    def add(server: grpc.Server) -> None:
        image_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(store), server)
        registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(store), server)
        image_pb2_grpc.add_BuilderServicer_to_server(builder, server)

    serve("image", cfg.image_socket, add, [image_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
                                           registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name])


if __name__ == "__main__":
    main()
