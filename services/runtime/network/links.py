"""Links, addresses, routes and network namespaces through pyroute2 (netlink, no `ip` forks).

All of this runs in the runtime's gRPC server process (never in the supervisor's
forked children): a container's named network namespace is created and populated
here before the spawn, and child A merely joins it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from services.common import errors

NETNS_DIR = Path("/run/netns")



log = logging.getLogger("berth.runtime.network")

def host_mtu() -> int:
    """The MTU of the interface holding the default route (1500 if there is none)."""
    with IPRoute() as ip:
        for route in ip.get_default_routes(family=2):
            oif = route.get("RTA_OIF") or route.get_attr("RTA_OIF")
            if oif:
                link = ip.get_links(oif)[0]
                return int(link.get("IFLA_MTU") or link.get_attr("IFLA_MTU") or 1500)
    return 1500


def host_routes() -> list[str]:
    """Destination prefixes of the host's IPv4 routes (main table), except defaults."""
    out = []
    with IPRoute() as ip:
        for r in ip.get_routes(family=2, table=254):
            dst = r.get_attr("RTA_DST")
            if dst:
                out.append(f"{dst}/{r['dst_len']}")
    return out


def link_exists(name: str) -> bool:
    with IPRoute() as ip:
        return bool(ip.link_lookup(ifname=name))


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int) -> None:
    """Create (or re-address) a bridge; idempotent, so start-up after a crash is the same call."""
    with IPRoute() as ip:
        found = ip.link_lookup(ifname=name)
        if not found:
            ip.link("add", ifname=name, kind="bridge", mtu=mtu)
            found = ip.link_lookup(ifname=name)
        idx = found[0]
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ip.get_addr(index=idx, family=2)}
        if (gateway, prefixlen) not in have:
            ip.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
        ip.link("set", index=idx, state="up")
    # Let DNAT'd packets from 127.0.0.1 leave on this bridge (see nft.py), on this bridge only.
    try:
        Path(f"/proc/sys/net/ipv4/conf/{name}/route_localnet").write_text("1")
    except OSError as exc:  # e.g. a runtime in a container whose /proc/sys is read-only
        log.warning("published ports will not be reachable from the host's loopback: "
                    "cannot set route_localnet on %s: %s", name, exc)


def delete_link(name: str) -> None:
    with IPRoute() as ip:
        for idx in ip.link_lookup(ifname=name):
            with contextlib.suppress(NetlinkError):
                ip.link("del", index=idx)


def create_netns(name: str) -> str:
    path = NETNS_DIR / name
    if not path.exists():
        netns.create(name)
    return str(path)


def remove_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        with contextlib.suppress(OSError):
            netns.remove(name)


def list_netns(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def add_veth(host_name: str, bridge: str, ns_name: str, ifname: str, address: str, prefixlen: int,
             gateway: str, mtu: int, default_route: bool) -> str:
    """A veth pair: one end on ``bridge``, the other as ``ifname`` in ``ns_name``,
    addressed and up; returns the container side's MAC address."""
    tmp = "t" + host_name[1:]
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=host_name, kind="veth", mtu=mtu,
                    peer={"ifname": tmp, "net_ns_fd": ns_name, "mtu": mtu})
            idx = ip.link_lookup(ifname=host_name)[0]
            br = ip.link_lookup(ifname=bridge)[0]
            ip.link("set", index=idx, master=br, state="up")
        with IPRoute(netns=ns_name) as ns:
            idx = ns.link_lookup(ifname=tmp)[0]
            ns.link("set", index=idx, ifname=ifname)
            ns.addr("add", index=idx, address=address, prefixlen=prefixlen)
            ns.link("set", index=idx, state="up")
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            if default_route:
                ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            return ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    except (NetlinkError, OSError, IndexError) as exc:
        delete_link(host_name)
        raise errors.FailedPrecondition(f"cannot connect the container to {bridge}: {exc}") from exc
