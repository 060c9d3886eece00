"""Network commands: network create/ls/inspect/rm/prune/connect/disconnect, and `port`."""

from __future__ import annotations

import contextlib
from typing import Any

import typer

from cli import output
from cli.client import Client, CliError, ServiceClient, pairs
from cli.commands import add, add_group

network_app = typer.Typer(help="Manage networks", no_args_is_help=True)


def net_client() -> ServiceClient:
    """The api's Networks service on a fresh connection."""
    from berth.api.v1 import network_pb2_grpc
    from berth.runtime.v1 import network_pb2

    return Client().service(network_pb2_grpc.NetworksStub, network_pb2)


def create(name: str = typer.Argument(..., help="Network name"),
           driver: str = typer.Option("bridge", "-d", "--driver", help="Driver (bridge)"),
           subnet: str = typer.Option("", "--subnet", help="Subnet in CIDR format"),
           gateway: str = typer.Option("", "--gateway", help="IPv4 gateway for the subnet"),
           internal: bool = typer.Option(False, "--internal", help="Restrict external access to the network"),
           label: list[str] = typer.Option([], "--label", help="Set metadata on a network")) -> None:
    """Create a network."""
    c = net_client()
    net = c.call("CreateNetwork", c.pb.CreateNetworkRequest(name=name, driver=driver, subnet=subnet,
                                                             gateway=gateway, internal=internal,
                                                             labels=pairs(label)))
    print(net.id)


def ls(quiet: bool = typer.Option(False, "-q", "--quiet", help="Only display network IDs"),
       filter_: list[str] = typer.Option([], "-f", "--filter", help="Filter output (name=, id=, driver=, label=)"),
       no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate the output")) -> None:
    """List networks."""
    c = net_client()
    nets = c.call("ListNetworks", c.pb.ListNetworksRequest(filters=pairs(filter_))).networks
    ids = [n.id if no_trunc else n.id[:12] for n in nets]
    if quiet:
        for i in ids:
            print(i)
        return
    output.table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                 [[i, n.name, n.driver, "local"] for i, n in zip(ids, nets, strict=True)])


def network_dict(n: Any) -> dict:
    return {
        "Name": n.name, "Id": n.id, "Created": output.rfc3339(n.created_unix_nano), "Scope": "local",
        "Driver": n.driver, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet, "Gateway": n.gateway}] if n.subnet else []},
        "Internal": n.internal, "Attachable": False,
        "Containers": {e.network: {"Name": n.endpoint_names.get(e.network, ""), "MacAddress": e.mac_address,
                                   "IPv4Address": f"{e.ip_address}/{e.prefix_len}", "IPv6Address": ""}
                       for e in n.containers},
        "Options": {"com.docker.network.bridge.name": n.bridge} if n.bridge else {},
        "Labels": dict(n.labels),
    }


def inspect(networks: list[str] = typer.Argument(..., help="Networks"),
            format_: str = typer.Option("", "-f", "--format", help="Format with a Go-style template")) -> None:
    """Display detailed information on one or more networks."""
    c = net_client()
    found, failed = [], None
    for ref in networks:
        try:
            found.append(network_dict(c.call("InspectNetwork", c.pb.NetworkRef(name=ref))))
        except CliError as err:
            failed = err
    if format_:
        for item in found:
            try:
                print(output.render_format(format_, item))
            except ValueError as err:
                raise CliError(f"berth: {err}", 1) from None
    else:
        output.dump_json(found)
    if failed is not None:
        raise failed


def rm(networks: list[str] = typer.Argument(..., help="Networks")) -> None:
    """Remove one or more networks."""
    c = net_client()
    failed = None
    for ref in networks:
        try:
            c.call("RemoveNetwork", c.pb.NetworkRef(name=ref))
            print(ref)
        except CliError as err:
            failed = err
            import sys

            sys.stderr.write(f"{err}\n")
    if failed is not None:
        raise CliError("", 1)


def prune(force: bool = typer.Option(False, "-f", "--force", help="Do not prompt for confirmation")) -> None:
    """Remove all unused networks."""
    if not force:
        answer = input("WARNING! This will remove all custom networks not used by at least one container.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return
    c = net_client()
    deleted = c.call("PruneNetworks", c.pb.PruneNetworksRequest()).deleted
    if deleted:
        print("Deleted Networks:")
        for name in deleted:
            print(name)


def connect(network: str = typer.Argument(...), container: str = typer.Argument(...),
            alias: list[str] = typer.Option([], "--alias", help="Network-scoped alias for the container"),
            ip: str = typer.Option("", "--ip", help="IPv4 address")) -> None:
    """Connect a container to a network."""
    c = net_client()
    c.call("ConnectNetwork", c.pb.ConnectRequest(network=network, container=container, aliases=alias,
                                                 ipv4_address=ip))


def disconnect(network: str = typer.Argument(...), container: str = typer.Argument(...),
               force: bool = typer.Option(False, "-f", "--force", help="Force the disconnection")) -> None:
    """Disconnect a container from a network."""
    c = net_client()
    c.call("DisconnectNetwork", c.pb.DisconnectRequest(network=network, container=container, force=force))


def ports_column(client: Client, c: Any) -> str:
    """`ps`'s PORTS: `0.0.0.0:8080->80/tcp, ...`; asks the runtime only for random host ports."""
    ports = list(c.spec.network.ports)
    if c.status != "running" or not ports:
        return ""
    if any(not p.host_port for p in ports):
        from berth.api.v1 import network_pb2_grpc
        from berth.runtime.v1 import network_pb2

        with contextlib.suppress(client.grpc.RpcError):  # gone meanwhile: show what was asked
            ports = list(network_pb2_grpc.NetworksStub(client.channel).ContainerPorts(
                network_pb2.PortsRequest(container=c.id)).ports)
    return ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.protocol or 'tcp'}"
                     for p in ports)


def port(container: str = typer.Argument(...), private_port: str = typer.Argument(None)) -> None:
    """List port mappings or a specific mapping for the container."""
    c = net_client()
    ports = c.call("ContainerPorts", c.pb.PortsRequest(container=container)).ports
    if private_port:
        num, _, proto = private_port.partition("/")
        proto = proto or "tcp"
        match = [p for p in ports if str(p.container_port) == num and p.protocol == proto]
        if not match:
            raise CliError(f"Error: No public port '{num}/{proto}' published for {container}", 1)
        for p in match:
            print(f"{p.host_ip}:{p.host_port}")
        return
    for p in ports:
        print(f"{p.container_port}/{p.protocol} -> {p.host_ip}:{p.host_port}")


def _build_group() -> None:
    network_app.command("create")(create)
    network_app.command("ls")(ls)
    network_app.command("list", hidden=True)(ls)
    network_app.command("inspect")(inspect)
    network_app.command("rm")(rm)
    network_app.command("remove", hidden=True)(rm)
    network_app.command("prune")(prune)
    network_app.command("connect")(connect)
    network_app.command("disconnect")(disconnect)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "port", port)
    add_group(app, only, "network", network_app, _build_group)


def extend_inspect(client: Client, c: Any, d: dict) -> dict:
    """Docker's Mounts, NetworkSettings and the network/storage HostConfig keys for `inspect`."""
    spec = c.spec
    d["Mounts"] = [{"Type": m.type, "Name": m.source if m.type == "volume" else "", "Source": m.source,
                    "Destination": m.target, "RW": not m.read_only, "Propagation": m.propagation}
                   for m in spec.mounts]
    host = d.setdefault("HostConfig", {})
    host["ReadonlyRootfs"] = spec.read_only
    host["NetworkMode"] = spec.network.mode or "none"
    host["PortBindings"] = {f"{p.container_port}/{p.protocol or 'tcp'}": [
        {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}] for p in spec.network.ports}
    host["ExtraHosts"] = list(spec.network.extra_hosts) or None
    host["Dns"] = list(spec.network.dns)
    settings: dict = {"IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": "", "Ports": {},
                      "Networks": {}}
    try:
        from berth.api.v1 import network_pb2_grpc
        from berth.runtime.v1 import network_pb2

        resp = network_pb2_grpc.NetworksStub(client.channel).ContainerPorts(
            network_pb2.PortsRequest(container=c.id))
    except client.grpc.RpcError:
        resp = None
    if resp is not None:
        for p in resp.ports:
            settings["Ports"].setdefault(f"{p.container_port}/{p.protocol}", []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port)})
        for i, e in enumerate(resp.endpoints):
            settings["Networks"][e.network] = {"NetworkID": e.network_id, "IPAddress": e.ip_address,
                                               "IPPrefixLen": e.prefix_len if e.ip_address else 0,
                                               "Gateway": e.gateway if e.ip_address else "",
                                               "MacAddress": e.mac_address, "Aliases": list(e.aliases) or None}
            if i == 0 and e.ip_address:
                settings.update(IPAddress=e.ip_address, IPPrefixLen=e.prefix_len, Gateway=e.gateway,
                                MacAddress=e.mac_address)
    d["NetworkSettings"] = settings
    return d
