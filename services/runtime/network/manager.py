"""Networks: the default bridge, user networks, endpoints, published ports, name resolution.

State is in the runtime's DB (networks, endpoints = memberships plus the IP lease
while the container runs, published ports); the kernel objects (bridges, veths,
netns, the nft table) are derived from it and reconciled at start-up, so a crash of
the runtime between two steps leaves nothing that the next start does not fix.

Naming (so parallel Berth instances never touch each other's objects): ``tag`` is
``berth`` for the system instance and ``b<6 hex>`` for others (derived from the
cgroup parent); bridges are ``<tag>0`` (default) and ``<tag><network id 8>`` (user
networks); host veth ends ``v<tag[-6:]><container id 5><n>``; netns ``<tag>-<container
id 12>``; the nft table ``<tag>``. tests/hostcheck.py relies on this scheme to tell one
instance's objects from another's.

Name resolution on user networks is by generated /etc/hosts files: every running
member gets every other running member's name, aliases and short id, rewritten in
place (the file is bind-mounted, so its inode must stay) whenever a member comes or
goes. The default bridge has no name resolution, like Docker's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from berth.runtime.v1 import network_pb2, runtime_pb2
from services.common import errors
from services.runtime.models import ContainerRecord
from services.runtime.network import ipam, links, nft
from services.runtime.plumbing_models import EndpointRecord, NetworkRecord, PortRecord

log = logging.getLogger("berth.runtime")

BUILTIN = {"bridge": "bridge", "host": "host", "none": "null"}
HOSTS_HEAD = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
              "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
NAME_RE_TEXT = "[a-zA-Z0-9][a-zA-Z0-9_.-]"


def instance_tag(cgroup_parent: str) -> str:
    return "berth" if cgroup_parent == "berth" else "b" + hashlib.sha1(cgroup_parent.encode()).hexdigest()[:6]


def _spec(rec: ContainerRecord) -> runtime_pb2.ContainerSpec:
    from google.protobuf import json_format

    return json_format.Parse(rec.spec_json, runtime_pb2.ContainerSpec(), ignore_unknown_fields=True)


def _port_free(protocol: str, host_ip: str, port: int) -> bool:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host_ip if host_ip not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            if exc.errno == errno.EADDRNOTAVAIL:
                raise errors.InvalidArgument(f"cannot publish on {host_ip}: not an address of this host") from None
            raise
    return True


def _random_port(protocol: str, host_ip: str) -> int:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip or "0.0.0.0", 0))
        return s.getsockname()[1]


class NetworkManager:
    def __init__(self, sessions: sessionmaker, runtime_dir: Path, tag: str = "berth",
                 default_subnet: str = "") -> None:
        self.sessions = sessions
        self.containers_dir = Path(runtime_dir) / "containers"
        self.tag = tag
        self.default_bridge = f"{tag}0"
        self.table = tag
        # The rule set last loaded: a container without published ports on an existing
        # bridge changes nothing, and skipping the identical reload saves an `nft` run
        # (~20 ms) on each start and on each exit.
        self._applied: str | None = None
        self.default_subnet = default_subnet
        self.lock = threading.RLock()
        self.mtu = 1500

    # ---- start-up ---------------------------------------------------------------------
    def open(self) -> None:
        """Builtin networks, bridges, then reconcile leftovers of a crash, then the rules.

        A host where this fails (no bridge support, no nft) still runs containers with
        ``--network none|host`` and volumes: the error is logged, not fatal.
        """
        try:
            self._open()
        except Exception:  # noqa: BLE001
            log.exception("networking unavailable; containers need --network none or host")

    def _open(self) -> None:
        with self.lock:
            try:
                self.mtu = links.host_mtu()
            except Exception:  # noqa: BLE001
                self.mtu = 1500
            self._ensure_builtin()
            for net in self._networks():
                if net.driver == "bridge":
                    links.ensure_bridge(net.bridge, net.gateway, ipaddress.ip_network(net.subnet).prefixlen, self.mtu)
            self._reconcile()

    def _ensure_builtin(self) -> None:
        with self.sessions() as s:
            for name, driver in BUILTIN.items():
                if s.scalars(select(NetworkRecord).where(NetworkRecord.name == name)).first() is not None:
                    continue
                rec = NetworkRecord(id=secrets.token_hex(32), name=name, driver=driver, created_ns=time.time_ns())
                if driver == "bridge":
                    taken = [ipaddress.ip_network(r) for r in links.host_routes()]
                    net = ipam.pick_subnet(taken, self.default_subnet or ipam.DEFAULT_BRIDGE_SUBNET)
                    rec.subnet, rec.gateway, rec.bridge = str(net), ipam.gateway_of(net), self.default_bridge
                s.add(rec)
            s.commit()

    def _running(self) -> set[str]:
        with self.sessions() as s:
            return set(s.scalars(select(ContainerRecord.id).where(ContainerRecord.status == "running")).all())

    def reconcile(self) -> None:
        """Leases, veths and netns of containers that are not running go; the rules are rebuilt."""
        try:
            self._reconcile()
        except Exception:  # noqa: BLE001 - start-up must go on; the next change retries
            log.exception("cannot reconcile networks")

    @staticmethod
    def _drop_orphans(s) -> None:  # noqa: ANN001
        """Memberships of containers that do not exist (a create that failed after its
        network hook, e.g. on a name conflict) must not keep a network 'in use'."""
        existing = set(s.scalars(select(ContainerRecord.id)).all())
        for e in s.scalars(select(EndpointRecord)).all():
            if e.container_id not in existing and not e.ip:
                s.delete(e)
        s.commit()

    def _reconcile(self) -> None:
        with self.sessions() as s:
            self._drop_orphans(s)
        running = self._running()
        with self.lock:
            with self.sessions() as s:
                stale = {e.container_id for e in s.scalars(select(EndpointRecord)).all()
                         if e.ip is not None and e.container_id not in running}
                stale |= {p.container_id for p in s.scalars(select(PortRecord)).all()
                          if p.container_id not in running}
            for cid in stale:
                self._teardown(cid)
            for name in links.list_netns(f"{self.tag}-"):
                cid = name[len(self.tag) + 1:]
                if not any(r.startswith(cid) for r in running):
                    links.remove_netns(name)
            self.apply_rules()

    def close(self) -> None:
        """With no container running, take the default bridge and the table down (a
        stopped engine leaves the host as it found it); otherwise keep them serving."""
        with self.lock:
            if self._running():
                return
            with self.sessions() as s:
                nets = s.scalars(select(NetworkRecord).where(NetworkRecord.driver == "bridge")).all()
            for net in nets:
                links.delete_link(net.bridge)
            nft.delete_table(self.table)
            self._applied = None

    # ---- lookups ----------------------------------------------------------------------
    def _networks(self) -> list[NetworkRecord]:
        with self.sessions() as s:
            return list(s.scalars(select(NetworkRecord).order_by(NetworkRecord.created_ns)).all())

    def _find(self, s, ref: str) -> NetworkRecord:  # noqa: ANN001
        ref = (ref or "").strip()
        if ref:
            rec = s.scalars(select(NetworkRecord).where(NetworkRecord.name == ref)).first() or s.get(NetworkRecord, ref)
            if rec is None and all(c in "0123456789abcdef" for c in ref):
                found = s.scalars(select(NetworkRecord).where(NetworkRecord.id.startswith(ref)).limit(2)).all()
                if len(found) == 1:
                    rec = found[0]
            if rec is not None:
                return rec
        raise errors.NotFound(f"network {ref} not found")

    def get(self, ref: str) -> NetworkRecord:
        with self.sessions() as s:
            return self._find(s, ref)

    def _container(self, s, ref: str) -> ContainerRecord:  # noqa: ANN001
        rec = s.get(ContainerRecord, ref) or s.scalars(
            select(ContainerRecord).where(ContainerRecord.name == ref.lstrip("/"))).first()
        if rec is None and ref and all(c in "0123456789abcdef" for c in ref):
            found = s.scalars(select(ContainerRecord).where(ContainerRecord.id.startswith(ref)).limit(2)).all()
            rec = found[0] if len(found) == 1 else None
        if rec is None:
            raise errors.NotFound(f"No such container: {ref}")
        return rec

    # ---- networks ---------------------------------------------------------------------
    def create(self, name: str, subnet: str = "", gateway: str = "", driver: str = "", internal: bool = False,
               labels: dict[str, str] | None = None) -> NetworkRecord:
        import re

        if not name or len(name) > 255 or not re.fullmatch(NAME_RE_TEXT + "+", name):
            raise errors.InvalidArgument(f"invalid network name {name!r}: only {NAME_RE_TEXT} are allowed")
        if driver not in ("", "bridge"):
            raise errors.InvalidArgument(f"network driver {driver!r} is not supported: only bridge")
        with self.lock:
            with self.sessions() as s:
                if s.scalars(select(NetworkRecord).where(NetworkRecord.name == name)).first() is not None:
                    raise errors.AlreadyExists(f"network with name {name} already exists")
                ours = [ipaddress.ip_network(r.subnet) for r in s.scalars(select(NetworkRecord)).all() if r.subnet]
            host = [ipaddress.ip_network(r) for r in links.host_routes()]
            if subnet:
                net = ipam.parse_subnet(subnet)
                clash = ipam.overlapping(net, ours)
                if clash is not None:
                    raise errors.FailedPrecondition(
                        f"invalid pool request: Pool overlaps with other one on this address space ({clash})")
                clash = ipam.overlapping(net, host)
                if clash is not None:
                    raise errors.FailedPrecondition(f"subnet {net} overlaps with the host route {clash}")
            else:
                if gateway:
                    raise errors.InvalidArgument("a gateway needs a subnet (--subnet)")
                net = ipam.pick_subnet(ours + host)
            gw = ipam.gateway_of(net, gateway)
            nid = secrets.token_hex(32)
            rec = NetworkRecord(id=nid, name=name, driver="bridge", subnet=str(net), gateway=gw,
                                bridge=f"{self.tag}{nid[:8]}", internal=int(internal),
                                labels_json=json.dumps(labels or {}), created_ns=time.time_ns())
            try:
                links.ensure_bridge(rec.bridge, gw, net.prefixlen, self.mtu)
                with self.sessions() as s:
                    s.add(rec)
                    s.commit()
                self.apply_rules()
            except BaseException:
                links.delete_link(rec.bridge)
                with self.sessions() as s:
                    r = s.get(NetworkRecord, nid)
                    if r is not None:
                        s.delete(r)
                        s.commit()
                raise
            return rec

    def remove(self, ref: str) -> None:
        with self.lock:
            with self.sessions() as s:
                net = self._find(s, ref)
                if net.name in BUILTIN:
                    raise errors.FailedPrecondition(f"{net.name} is a pre-defined network and cannot be removed")
                active = [e.container_id for e in s.scalars(
                    select(EndpointRecord).where(EndpointRecord.network_id == net.id)).all() if e.ip]
                if active:
                    raise errors.FailedPrecondition(
                        f"error while removing network: network {net.name} id {net.id} has active endpoints")
                for e in s.scalars(select(EndpointRecord).where(EndpointRecord.network_id == net.id)).all():
                    s.delete(e)
                s.delete(net)
                s.commit()
            links.delete_link(net.bridge)
            self.apply_rules()

    def prune(self) -> list[str]:
        deleted = []
        with self.lock:
            with self.sessions() as s:
                self._drop_orphans(s)
                used = {e.network_id for e in s.scalars(select(EndpointRecord)).all()}
            for net in self._networks():
                if net.name not in BUILTIN and net.id not in used:
                    self.remove(net.id)
                    deleted.append(net.name)
        return deleted

    def list(self) -> list[NetworkRecord]:
        return self._networks()

    def to_proto(self, net: NetworkRecord) -> network_pb2.Network:
        out = network_pb2.Network(id=net.id, name=net.name, driver=net.driver, subnet=net.subnet,
                                  gateway=net.gateway, bridge=net.bridge, internal=bool(net.internal),
                                  labels=json.loads(net.labels_json or "{}"), created_unix_nano=net.created_ns)
        with self.sessions() as s:
            for e in s.scalars(select(EndpointRecord).where(EndpointRecord.network_id == net.id)).all():
                if not e.ip:
                    continue
                c = s.get(ContainerRecord, e.container_id)
                out.containers.append(self._endpoint_proto(net, e, network=e.container_id))
                out.endpoint_names[e.container_id] = (c.name or "") if c else ""
        return out

    @staticmethod
    def _endpoint_proto(net: NetworkRecord, e: EndpointRecord, network: str = "") -> network_pb2.Endpoint:
        prefix = ipaddress.ip_network(net.subnet).prefixlen if net.subnet else 0
        return network_pb2.Endpoint(network=network or net.name, network_id=net.id, ip_address=e.ip or "",
                                    prefix_len=prefix, gateway=net.gateway, mac_address=e.mac or "",
                                    aliases=json.loads(e.aliases_json or "[]"))

    # ---- containers: create, start, stop, remove ----------------------------------------
    def validate(self, spec: runtime_pb2.ContainerSpec) -> None:
        cfg = spec.network
        mode = cfg.mode or "none"  # the api asks for "bridge" by default; bare runtime clients get lo only
        net = self.get(mode)
        user_net = net.name not in BUILTIN
        if cfg.ipv4_address:
            if not user_net:
                raise errors.InvalidArgument("user specified IP address is supported on user defined networks only")
            ipam.check_requested(ipaddress.ip_network(net.subnet), net.gateway, cfg.ipv4_address)
        if cfg.aliases and not user_net:
            raise errors.InvalidArgument("network-scoped alias is supported only for containers in user defined "
                                         "networks")
        seen = set()
        for p in cfg.ports:
            if p.protocol not in ("tcp", "udp"):
                raise errors.InvalidArgument(f"invalid proto: {p.protocol}")
            if not 1 <= p.container_port <= 65535 or p.host_port > 65535:
                raise errors.InvalidArgument(f"invalid port: {p.container_port}")
            if p.host_ip:
                try:
                    ipaddress.IPv4Address(p.host_ip)
                except ValueError:
                    raise errors.InvalidArgument(f"invalid IP address: {p.host_ip}") from None
            key = (p.protocol, p.host_port)
            if p.host_port and key in seen:
                raise errors.InvalidArgument(f"port {p.host_port}/{p.protocol} is published twice")
            seen.add(key)
        for item in cfg.extra_hosts:
            host, sep, ip = item.partition(":")
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise errors.InvalidArgument(f"invalid IP address in add-host: \"{ip}\"") from None
            if not sep or not host:
                raise errors.InvalidArgument(f"bad format for add-host: \"{item}\"")
        for dns in cfg.dns:
            try:
                ipaddress.ip_address(dns)
            except ValueError:
                raise errors.InvalidArgument(f"{dns} is not an ip address") from None

    def on_create(self, cid: str, spec: runtime_pb2.ContainerSpec) -> None:
        mode = spec.network.mode or "none"
        with self.sessions() as s:
            net = self._find(s, mode)
            if net.driver != "bridge":
                return
            s.add(EndpointRecord(network_id=net.id, container_id=cid,
                                 aliases_json=json.dumps(list(spec.network.aliases)),
                                 requested_ip=spec.network.ipv4_address))
            s.commit()

    def _netns_name(self, cid: str) -> str:
        return f"{self.tag}-{cid[:12]}"

    def prepare(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec, cdir: Path,
                files: dict[str, str], hostname: str) -> dict:
        mode = spec.network.mode or "none"
        net = self.get(mode)
        extra: dict = {}
        if net.driver == "host":
            extra["host_network"] = True
        self._write_resolv(spec, files)
        if net.driver != "bridge":
            self._write_hosts_file(cid, spec, hostname, Path(files["/etc/hosts"]))
            return extra
        with self.lock:
            try:
                ns = self._netns_name(cid)
                extra["netns"] = links.create_netns(ns)
                with self.sessions() as s:
                    eps = s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == cid)
                                    .order_by(EndpointRecord.id)).all()
                for i, ep in enumerate(eps):
                    self._plumb(cid, ep.id, f"eth{i}", default_route=(i == 0))
                self._publish(cid, spec)
                self.apply_rules()
                self._write_hosts_file(cid, spec, hostname, Path(files["/etc/hosts"]))
                self._refresh_peers(cid)
            except BaseException:
                self._teardown(cid)
                raise
        return extra

    def _plumb(self, cid: str, ep_id: int, ifname: str, default_route: bool) -> None:
        """Lease an address for endpoint ``ep_id`` and wire the veth into the container's netns."""
        with self.sessions() as s:
            ep = s.get(EndpointRecord, ep_id)
            net = s.get(NetworkRecord, ep.network_id)
            subnet = ipaddress.ip_network(net.subnet)
            used = {e.ip for e in s.scalars(select(EndpointRecord).where(
                EndpointRecord.network_id == net.id)).all() if e.ip}
            if ep.requested_ip:
                ip = ipam.check_requested(subnet, net.gateway, ep.requested_ip)
                if ip in used:
                    raise errors.FailedPrecondition(f"Address already in use: {ip}")
            else:
                ip = ipam.allocate(subnet, net.gateway, used)
            ep.ip, ep.ifname, ep.host_ifname = ip, ifname, f"v{self.tag[-6:]}{cid[:5]}{ep.id % 100}"
            try:
                s.commit()
            except IntegrityError:
                raise errors.FailedPrecondition(f"Address already in use: {ip}") from None
            bridge, gw, host_if = net.bridge, net.gateway, ep.host_ifname
        mac = links.add_veth(host_if, bridge, self._netns_name(cid), ifname, ip, subnet.prefixlen, gw, self.mtu,
                             default_route)
        with self.sessions() as s:
            ep = s.get(EndpointRecord, ep_id)
            ep.mac = mac or ""
            s.commit()

    def _publish(self, cid: str, spec: runtime_pb2.ContainerSpec) -> None:
        if not spec.network.ports:
            return
        with self.sessions() as s:
            first = s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == cid)
                              .order_by(EndpointRecord.id)).first()
            cip = first.ip if first else ""
            for p in spec.network.ports:
                proto = p.protocol or "tcp"
                port = p.host_port
                if port:
                    taken = s.scalars(select(PortRecord).where(PortRecord.protocol == proto,
                                                               PortRecord.host_port == port)).first()
                    if taken is not None or not _port_free(proto, p.host_ip, port):
                        raise errors.FailedPrecondition(
                            f"driver failed programming external connectivity on endpoint: Bind for "
                            f"{p.host_ip or '0.0.0.0'}:{port} failed: port is already allocated")
                else:
                    port = _random_port(proto, p.host_ip)
                s.add(PortRecord(container_id=cid, protocol=proto, host_ip=p.host_ip, host_port=port,
                                 container_port=p.container_port, container_ip=cip))
                try:
                    s.flush()
                except IntegrityError:
                    raise errors.FailedPrecondition(f"Bind for {p.host_ip or '0.0.0.0'}:{port} failed: "
                                                    "port is already allocated") from None
            s.commit()

    def release(self, cid: str) -> None:
        with self.lock:
            self._teardown(cid)

    def _teardown(self, cid: str) -> None:
        """Undo a run: veths, netns, leases, ports; rules and peers' hosts files follow."""
        with self.sessions() as s:
            eps = s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == cid)).all()
            ports = s.scalars(select(PortRecord).where(PortRecord.container_id == cid)).all()
            had = any(e.ip or e.host_ifname for e in eps) or bool(ports)
            for e in eps:
                if e.host_ifname:
                    links.delete_link(e.host_ifname)
                e.ip, e.host_ifname, e.mac = None, "", ""
            for p in ports:
                s.delete(p)
            s.commit()
        links.remove_netns(self._netns_name(cid))
        if had:
            self.apply_rules()
            self._refresh_peers(cid)

    def removed(self, cid: str) -> None:
        with self.lock, self.sessions() as s:
            for e in s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == cid)).all():
                s.delete(e)
            s.commit()

    def refresh_names(self, cid: str) -> None:
        """After a rename: the peers' hosts files carry the new name."""
        with self.lock:
            self._refresh_peers(cid)

    # ---- connect / disconnect -----------------------------------------------------------
    def connect(self, network: str, container: str, aliases: list[str], ip: str) -> None:
        with self.lock:
            with self.sessions() as s:
                net = self._find(s, network)
                c = self._container(s, container)
                if net.driver != "bridge":
                    raise errors.FailedPrecondition(f"container cannot be connected to network {net.name}")
                spec = _spec(c)
                mode = self.get(spec.network.mode or "none")
                if mode.driver != "bridge":
                    raise errors.FailedPrecondition(
                        f"container sharing network namespace with another container or host cannot be "
                        f"connected to any other network (network mode {mode.name})")
                if s.scalars(select(EndpointRecord).where(EndpointRecord.network_id == net.id,
                                                          EndpointRecord.container_id == c.id)).first():
                    raise errors.AlreadyExists(f"endpoint with name {c.name or c.id[:12]} already exists in "
                                               f"network {net.name}")
                if ip:
                    ipam.check_requested(ipaddress.ip_network(net.subnet), net.gateway, ip)
                ep = EndpointRecord(network_id=net.id, container_id=c.id, aliases_json=json.dumps(aliases),
                                    requested_ip=ip)
                s.add(ep)
                s.commit()
                ep_id, running = ep.id, c.status == "running"
                n = len(s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == c.id)).all())
                cid, hostname = c.id, spec.hostname or c.id[:12]
            if running:
                try:
                    self._plumb(cid, ep_id, f"eth{n - 1}", default_route=False)
                except BaseException:
                    with self.sessions() as s:
                        e = s.get(EndpointRecord, ep_id)
                        if e.host_ifname:
                            links.delete_link(e.host_ifname)
                        s.delete(e)
                        s.commit()
                    raise
                self._write_hosts_file(cid, spec, hostname, self.containers_dir / cid / "hosts")
                self._refresh_peers(cid)

    def disconnect(self, network: str, container: str) -> None:
        with self.lock:
            with self.sessions() as s:
                net = self._find(s, network)
                c = self._container(s, container)
                ep = s.scalars(select(EndpointRecord).where(EndpointRecord.network_id == net.id,
                                                            EndpointRecord.container_id == c.id)).first()
                if ep is None:
                    raise errors.FailedPrecondition(f"container {c.id} is not connected to network {net.name}")
                if ep.host_ifname:
                    links.delete_link(ep.host_ifname)
                s.delete(ep)
                s.commit()
                cid, spec = c.id, _spec(c)
                running = c.status == "running"
            if running:
                self._write_hosts_file(cid, spec, spec.hostname or cid[:12], self.containers_dir / cid / "hosts")
                self._refresh_peers(cid)

    def ports(self, container: str) -> tuple[list[PortRecord], list[network_pb2.Endpoint]]:
        with self.sessions() as s:
            c = self._container(s, container)
            ports = list(s.scalars(select(PortRecord).where(PortRecord.container_id == c.id)
                                   .order_by(PortRecord.container_port, PortRecord.protocol)).all())
            eps = []
            for e in s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == c.id)
                               .order_by(EndpointRecord.id)).all():
                net = s.get(NetworkRecord, e.network_id)
                if net is not None:
                    eps.append(self._endpoint_proto(net, e))
            return ports, eps

    # ---- rules and files ----------------------------------------------------------------
    def apply_rules(self) -> None:
        with self.sessions() as s:
            bridges = [nft.BridgeNet(n.bridge, n.subnet, bool(n.internal))
                       for n in s.scalars(select(NetworkRecord).where(NetworkRecord.driver == "bridge")).all()]
            publish = [nft.Publish(p.protocol, p.host_ip, p.host_port, p.container_ip, p.container_port)
                       for p in s.scalars(select(PortRecord)).all() if p.container_ip]
        rules = nft.Ruleset(self.table, bridges, publish)
        if rules.render() == self._applied:
            return
        try:
            nft.apply(rules)
            self._applied = rules.render()
        except errors.FailedPrecondition:
            if publish:
                raise
            log.warning("nftables unavailable: no NAT for Berth's networks")

    def _write_resolv(self, spec: runtime_pb2.ContainerSpec, files: dict[str, str]) -> None:
        cfg = spec.network
        if not cfg.dns and not cfg.dns_search:
            return
        path = Path(files["/etc/resolv.conf"])
        lines = [ln for ln in path.read_text().splitlines()
                 if not (cfg.dns and ln.startswith("nameserver")) and not (cfg.dns_search and ln.startswith("search"))]
        if cfg.dns_search:
            lines.insert(0, "search " + " ".join(cfg.dns_search))
        lines += [f"nameserver {d}" for d in cfg.dns]
        path.write_text("\n".join(lines) + "\n")

    def hosts_content(self, cid: str, spec: runtime_pb2.ContainerSpec, hostname: str) -> str:
        lines = [HOSTS_HEAD.rstrip("\n")]
        with self.sessions() as s:
            mine = s.scalars(select(EndpointRecord).where(EndpointRecord.container_id == cid)
                             .order_by(EndpointRecord.id)).all()
            if mine and mine[0].ip:
                lines.append(f"{mine[0].ip}\t{hostname}")
            seen = set()
            for e in mine:
                net = s.get(NetworkRecord, e.network_id)
                if net is None or net.name in BUILTIN:
                    continue  # the default bridge has no name resolution
                for peer in s.scalars(select(EndpointRecord).where(EndpointRecord.network_id == net.id)).all():
                    if peer.container_id == cid or not peer.ip or (peer.ip, peer.container_id) in seen:
                        continue
                    seen.add((peer.ip, peer.container_id))
                    c = s.get(ContainerRecord, peer.container_id)
                    if c is None:
                        continue
                    names = [n for n in [c.name, *json.loads(peer.aliases_json or "[]"), c.id[:12]] if n]
                    lines.append(f"{peer.ip}\t" + " ".join(names))
        for item in spec.network.extra_hosts:
            host, _, ip = item.partition(":")
            lines.append(f"{ip}\t{host}")
        return "\n".join(lines) + "\n"

    def _write_hosts_file(self, cid: str, spec: runtime_pb2.ContainerSpec, hostname: str, path: Path) -> None:
        """Rewrite in place: the file is bind-mounted into the container, its inode must stay."""
        with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
            f.write(self.hosts_content(cid, spec, hostname))

    def _refresh_peers(self, cid: str) -> None:
        """Every running container sharing a user network with ``cid`` gets a fresh hosts file."""
        with self.sessions() as s:
            nets = {n.id for n in s.scalars(select(NetworkRecord)).all() if n.name not in BUILTIN}
            peers = {e.container_id for e in s.scalars(select(EndpointRecord)).all()
                     if e.network_id in nets and e.ip and e.container_id != cid}
            recs = [s.get(ContainerRecord, p) for p in peers]
        for c in recs:
            if c is None or c.status != "running":
                continue
            spec = _spec(c)
            self._write_hosts_file(c.id, spec, spec.hostname or c.id[:12], self.containers_dir / c.id / "hosts")
