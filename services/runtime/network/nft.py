"""NAT and published ports with nftables, in Berth's own table.

The whole table is regenerated from the runtime's DB on every change and loaded in
one ``nft -f`` transaction (``table``; ``delete table``; the new table), so the
kernel never sees a half-updated rule set and removal is one ``delete table``.

Published ports from the host's own loopback: we chose DNAT in the ``output`` hook
plus ``route_localnet=1`` on Berth's bridges (and masquerading 127/8 sources going
to containers), instead of a userspace docker-proxy per port. Reasons: no extra
process (or thread) per published port, no copy of every byte through Python, the
container sees the connection like any other DNAT'd one, and the rules vanish with
the table. The cost is that ``route_localnet`` is set on Berth's bridges only (never
host-wide), which is what lets a packet with source 127.0.0.1 leave on the bridge.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from services.common import errors


@dataclass
class Publish:
    protocol: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int


@dataclass
class BridgeNet:
    bridge: str
    subnet: str
    internal: bool = False


@dataclass
class Ruleset:
    table: str
    bridges: list[BridgeNet] = field(default_factory=list)
    publish: list[Publish] = field(default_factory=list)

    def render(self) -> str:
        t = self.table
        lines = [f"table ip {t}", f"delete table ip {t}", f"table ip {t} {{"]
        lines += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
                  "    fib daddr type local jump publish", "  }",
                  "  chain output {", "    type nat hook output priority -100; policy accept;",
                  "    fib daddr type local jump publish", "  }",
                  "  chain publish {"]
        for p in self.publish:
            match = f"ip daddr {p.host_ip} " if p.host_ip not in ("", "0.0.0.0") else ""
            lines.append(f"    {match}{p.protocol} dport {p.host_port} dnat to {p.container_ip}:{p.container_port}")
        lines += ["  }", "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
        for b in self.bridges:
            # Loopback-originated traffic DNAT'd to a container needs a routable source.
            lines.append(f'    oifname "{b.bridge}" ip saddr 127.0.0.0/8 masquerade')
            if not b.internal:
                lines.append(f'    ip saddr {b.subnet} oifname != "{b.bridge}" masquerade')
        lines += ["  }", "  chain forward {", "    type filter hook forward priority filter; policy accept;"]
        names = [b.bridge for b in self.bridges]
        if len(names) > 1:
            lines.append("    iifname { " + ", ".join(f'"{n}"' for n in names) + " } oifname { "
                         + ", ".join(f'"{n}"' for n in names) + " } jump isolate")
        for b in self.bridges:
            if b.internal:
                lines.append(f'    iifname "{b.bridge}" oifname != "{b.bridge}" drop')
                lines.append(f'    oifname "{b.bridge}" iifname != "{b.bridge}" drop')
        lines += ["  }", "  chain isolate {"]
        for b in self.bridges:
            # Containers on different Berth networks must not reach each other.
            lines.append(f'    iifname "{b.bridge}" oifname != "{b.bridge}" drop')
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"


def nft_binary() -> str:
    path = shutil.which("nft") or ("/usr/sbin/nft" if shutil.os.path.exists("/usr/sbin/nft") else "")
    if not path:
        raise errors.FailedPrecondition("nft not found: install Debian's nftables package")
    return path


def apply(rules: Ruleset) -> None:
    proc = subprocess.run([nft_binary(), "-f", "-"], input=rules.render(), capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise errors.FailedPrecondition(f"nftables: {last}")


def delete_table(table: str) -> None:
    """Remove Berth's table (nothing to do if it is not there)."""
    path = shutil.which("nft") or "/usr/sbin/nft"
    subprocess.run([path, "-f", "-"], input=f"table ip {table}\ndelete table ip {table}\n",
                   capture_output=True, text=True)
