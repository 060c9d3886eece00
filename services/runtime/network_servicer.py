"""The runtime's Networks and Volumes gRPC services: thin adapters over
``NetworkManager`` (network/manager.py) and ``VolumeStore`` (volumes.py)."""

from __future__ import annotations

from berth.runtime.v1 import network_pb2, network_pb2_grpc, storage_pb2, storage_pb2_grpc
from berth.types.v1 import types_pb2
from services.common.server import map_errors
from services.runtime.network.manager import NetworkManager
from services.runtime.volumes import VolumeStore


def _matches(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


class NetworksServicer(network_pb2_grpc.NetworksServicer):
    def __init__(self, manager: NetworkManager) -> None:
        self.m = manager

    @map_errors
    def Create(self, request, context):  # noqa: ANN001, N802
        rec = self.m.create(request.name, request.subnet, request.gateway, request.driver, request.internal,
                            dict(request.labels))
        return self.m.to_proto(rec)

    @map_errors
    def List(self, request, context):  # noqa: ANN001, N802
        out = network_pb2.ListNetworksResponse()
        filters = dict(request.filters)
        for rec in self.m.list():
            net = self.m.to_proto(rec)
            if "name" in filters and filters["name"] not in net.name:
                continue
            if "id" in filters and not net.id.startswith(filters["id"]):
                continue
            if "label" in filters and not _matches(dict(net.labels), filters["label"]):
                continue
            if "driver" in filters and net.driver != filters["driver"]:
                continue
            out.networks.append(net)
        return out

    @map_errors
    def Inspect(self, request, context):  # noqa: ANN001, N802
        return self.m.to_proto(self.m.get(request.name))

    @map_errors
    def Remove(self, request, context):  # noqa: ANN001, N802
        self.m.remove(request.name)
        return types_pb2.Empty()

    @map_errors
    def Prune(self, request, context):  # noqa: ANN001, N802
        return network_pb2.PruneNetworksResponse(deleted=self.m.prune())

    @map_errors
    def Connect(self, request, context):  # noqa: ANN001, N802
        self.m.connect(request.network, request.container, list(request.aliases), request.ipv4_address)
        return types_pb2.Empty()

    @map_errors
    def Disconnect(self, request, context):  # noqa: ANN001, N802
        self.m.disconnect(request.network, request.container)
        return types_pb2.Empty()

    @map_errors
    def Ports(self, request, context):  # noqa: ANN001, N802
        ports, endpoints = self.m.ports(request.container)
        return network_pb2.PortsResponse(
            ports=[network_pb2.PortBinding(container_port=p.container_port, protocol=p.protocol,
                                           host_ip=p.host_ip or "0.0.0.0", host_port=p.host_port) for p in ports],
            endpoints=endpoints)


class VolumesServicer(storage_pb2_grpc.VolumesServicer):
    def __init__(self, store: VolumeStore) -> None:
        self.v = store

    @map_errors
    def Create(self, request, context):  # noqa: ANN001, N802
        return self.v.to_proto(self.v.create(request.name, dict(request.labels), request.driver))

    @map_errors
    def List(self, request, context):  # noqa: ANN001, N802
        users = self.v.users()
        filters = dict(request.filters)
        out = storage_pb2.ListVolumesResponse()
        for rec in self.v.list():
            vol = self.v.to_proto(rec, users)
            dangling = filters.get("dangling")
            if dangling is not None and (dangling in ("true", "1")) == bool(vol.used_by):
                continue
            if "name" in filters and filters["name"] not in vol.name:
                continue
            if "label" in filters and not _matches(dict(vol.labels), filters["label"]):
                continue
            out.volumes.append(vol)
        return out

    @map_errors
    def Inspect(self, request, context):  # noqa: ANN001, N802
        return self.v.to_proto(self.v.get(request.name), self.v.users())

    @map_errors
    def Remove(self, request, context):  # noqa: ANN001, N802
        self.v.remove(request.name, request.force)
        return types_pb2.Empty()

    @map_errors
    def Prune(self, request, context):  # noqa: ANN001, N802
        deleted, space = self.v.prune(request.all)
        return storage_pb2.PruneVolumesResponse(deleted=deleted, space_reclaimed=space)


def add_to_server(server, networks: NetworkManager, volumes: VolumeStore) -> None:  # noqa: ANN001
    network_pb2_grpc.add_NetworksServicer_to_server(NetworksServicer(networks), server)
    storage_pb2_grpc.add_VolumesServicer_to_server(VolumesServicer(volumes), server)


def build(runtime_dir, db_url: str, cgroup_parent: str):  # noqa: ANN001, ANN201
    """The network manager, volume store and the containers' hooks, on the runtime's DB."""
    import os

    from services.common.db import open_db
    from services.runtime.network.manager import instance_tag
    from services.runtime.plumbing import Plumbing
    from services.runtime.plumbing_models import PlumbingBase

    sessions = open_db(db_url, PlumbingBase)
    volumes = VolumeStore(runtime_dir, sessions)
    networks = NetworkManager(sessions, runtime_dir, instance_tag(cgroup_parent),
                              os.environ.get("BERTH_BRIDGE_SUBNET", ""))
    return networks, volumes, Plumbing(volumes, networks)
