"""The public `berth.api.v1.Networks` and `berth.api.v1.Volumes` services.

The gateway forwards to the runtime's Networks and Volumes services (the runtime
owns bridges, rules and volume directories) and records events for changes.
"""

from __future__ import annotations

import grpc

from berth.api.v1 import network_pb2_grpc as api_network_grpc
from berth.runtime.v1 import network_pb2, network_pb2_grpc, storage_pb2_grpc
from services.api.downstream import Downstream
from services.api.events import EventLog
from services.common.config import Config
from services.common.server import channel, map_errors


def with_default_mode(cfg: network_pb2.NetworkConfig) -> network_pb2.NetworkConfig:
    """Docker's default for `run`: the default bridge. (At the runtime's API an empty
    mode means a private network namespace with only lo, as a bare OCI runtime does.)"""
    out = network_pb2.NetworkConfig()
    out.CopyFrom(cfg)
    if not out.mode:
        out.mode = "bridge"
    return out


class NetworksServicer(api_network_grpc.NetworksServicer):
    def __init__(self, runtime: Downstream, events: EventLog) -> None:
        self.rt = runtime
        self.events = events

    @map_errors
    def CreateNetwork(self, request, context):  # noqa: ANN001, N802
        net = self.rt.Create(request)
        self.events.record("network", "create", net.id, name=net.name, type=net.driver)
        return net

    @map_errors
    def ListNetworks(self, request, context):  # noqa: ANN001, N802
        return self.rt.List(request)

    @map_errors
    def InspectNetwork(self, request, context):  # noqa: ANN001, N802
        return self.rt.Inspect(request)

    @map_errors
    def RemoveNetwork(self, request, context):  # noqa: ANN001, N802
        net = self.rt.Inspect(request)
        out = self.rt.Remove(request)
        self.events.record("network", "destroy", net.id, name=net.name, type=net.driver)
        return out

    @map_errors
    def PruneNetworks(self, request, context):  # noqa: ANN001, N802
        return self.rt.Prune(request)

    @map_errors
    def ConnectNetwork(self, request, context):  # noqa: ANN001, N802
        out = self.rt.Connect(request)
        self.events.record("network", "connect", request.network, container=request.container)
        return out

    @map_errors
    def DisconnectNetwork(self, request, context):  # noqa: ANN001, N802
        out = self.rt.Disconnect(request)
        self.events.record("network", "disconnect", request.network, container=request.container)
        return out

    @map_errors
    def ContainerPorts(self, request, context):  # noqa: ANN001, N802
        return self.rt.Ports(request)


class VolumesServicer(api_network_grpc.VolumesServicer):
    def __init__(self, runtime: Downstream, events: EventLog) -> None:
        self.rt = runtime
        self.events = events

    @map_errors
    def CreateVolume(self, request, context):  # noqa: ANN001, N802
        vol = self.rt.Create(request)
        self.events.record("volume", "create", vol.name, driver="local")
        return vol

    @map_errors
    def ListVolumes(self, request, context):  # noqa: ANN001, N802
        return self.rt.List(request)

    @map_errors
    def InspectVolume(self, request, context):  # noqa: ANN001, N802
        return self.rt.Inspect(request)

    @map_errors
    def RemoveVolume(self, request, context):  # noqa: ANN001, N802
        out = self.rt.Remove(request)
        self.events.record("volume", "destroy", request.name, driver="local")
        return out

    @map_errors
    def PruneVolumes(self, request, context):  # noqa: ANN001, N802
        return self.rt.Prune(request)


SERVICE_NAMES = ["berth.api.v1.Networks", "berth.api.v1.Volumes"]


def add_to_server(server: grpc.Server, events: EventLog, cfg: Config) -> None:
    sock = cfg.runtime_socket
    networks = Downstream("runtime", str(sock), network_pb2_grpc.NetworksStub(channel(sock)))
    volumes = Downstream("runtime", str(sock), storage_pb2_grpc.VolumesStub(channel(sock)))
    api_network_grpc.add_NetworksServicer_to_server(NetworksServicer(networks, events), server)
    api_network_grpc.add_VolumesServicer_to_server(VolumesServicer(volumes, events), server)
