"""IP address management: subnets that do not collide with the host's routes or each
other, and addresses within them. Pure functions; the leases themselves are rows in
the runtime's DB (``endpoints.ip``, unique per network), so a restart never hands out
an address twice."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from services.common import errors

# Like Docker's default address pools: 172.17/16 for the default bridge, then /24s.
DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"
POOLS = ("172.18.0.0/16", "172.19.0.0/16", "172.20.0.0/14", "10.210.0.0/16")
POOL_PREFIX = 24

Net = ipaddress.IPv4Network


def parse_subnet(text: str) -> Net:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise errors.InvalidArgument(f"invalid subnet {text!r}: want an IPv4 CIDR like 10.200.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise errors.InvalidArgument(f"invalid subnet {text!r}: only IPv4 is supported")
    if net.prefixlen > 30:
        raise errors.InvalidArgument(f"invalid subnet {text!r}: too small (at most /30)")
    if str(net.network_address) != text.split("/")[0]:
        raise errors.InvalidArgument(f"invalid subnet {text!r}: host bits set (did you mean {net}?)")
    return net


def overlapping(net: Net, others: Iterable[Net]) -> Net | None:
    for other in others:
        if net.overlaps(other):
            return other
    return None


def pick_subnet(taken: list[Net], preferred: str = "") -> Net:
    """``preferred`` if free, else the first free /24 of the pools."""
    if preferred:
        net = ipaddress.ip_network(preferred)
        if overlapping(net, taken) is None:
            return net
    for pool in POOLS:
        for net in ipaddress.ip_network(pool).subnets(new_prefix=POOL_PREFIX):
            if overlapping(net, taken) is None:
                return net
    raise errors.FailedPrecondition("could not find an available, non-overlapping IPv4 address pool")


def gateway_of(net: Net, given: str = "") -> str:
    if not given:
        return str(net.network_address + 1)
    try:
        gw = ipaddress.ip_address(given)
    except ValueError:
        raise errors.InvalidArgument(f"invalid gateway {given!r}") from None
    if gw not in net or gw in (net.network_address, net.broadcast_address):
        raise errors.InvalidArgument(f"gateway {given} is not a host address of subnet {net}")
    return str(gw)


def check_requested(net: Net, gateway: str, ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise errors.InvalidArgument(f"invalid IPv4 address: {ip}") from None
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise errors.InvalidArgument(f"no configured subnet contains IP address {ip}")
    if str(addr) == gateway:
        raise errors.InvalidArgument(f"address {ip} is the network's gateway")
    return str(addr)


def allocate(net: Net, gateway: str, used: set[str]) -> str:
    for host in net.hosts():
        text = str(host)
        if text != gateway and text not in used:
            return text
    raise errors.FailedPrecondition(f"no available IPv4 addresses on this network's address pools: {net}")
