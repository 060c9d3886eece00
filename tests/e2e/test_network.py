"""Networks end to end: default bridge, published ports, user networks, isolation, NAT.

Traffic goes only to 127.0.0.1 and to network namespaces Berth or these tests made
(the "outside host" for outbound NAT is a netns of our own, on a subnet that is
checked not to overlap the host's routes).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")

# Reaching a published port from the host's own 127.0.0.1 needs route_localnet on Berth's
# bridges, i.e. a runtime that may write /proc/sys. Under `make e2e-compose` on a host
# where the runtime container cannot be privileged (see tests/compose/unprivileged.yaml)
# e2e.sh says so with BERTH_E2E_LOOPBACK_NAT=0.
needs_loopback_nat = pytest.mark.skipif(os.environ.get("BERTH_E2E_LOOPBACK_NAT") == "0",
                                        reason="the runtime cannot set route_localnet here (not privileged)")

HTTPD = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"






def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_default_bridge_has_address_route_and_host_mtu(services):
    r = ok(services.berth("run", "--rm", "busybox", "sh", "-c", "ip -o -4 addr show eth0; ip route; "
                          "cat /sys/class/net/eth0/mtu"))
    assert "inet " in r.stdout and "default via" in r.stdout
    dev = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True).stdout.split()
    if "dev" in dev:
        with open(f"/sys/class/net/{dev[dev.index('dev') + 1]}/mtu") as f:
            assert r.stdout.splitlines()[-1] == f.read().strip()


UDP_ECHO = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',53))\n"
            "while True:\n  d,a=s.recvfrom(100)\n  s.sendto(b'echo:'+d,a)\n")


@pytest.mark.skipif(not os.path.isdir("/usr/lib/x86_64-linux-gnu"), reason="borrows the host's amd64 python")
@needs_loopback_nat
def test_published_udp_port(services):
    """busybox has no UDP server: the host's python, bind-mounted read-only, serves as one."""
    port = free_port()
    cid = ok(services.berth("run", "-d", "-p", f"127.0.0.1:{port}:53/udp", "-v", "/usr:/usr:ro",
                            "-v", "/usr/lib64:/lib64:ro", "-v", "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro",
                            "busybox", "/usr/bin/python3", "-c", UDP_ECHO)).stdout.strip()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for _ in range(40):
                s.sendto(b"ping", ("127.0.0.1", port))
                try:
                    assert s.recvfrom(100)[0] == b"echo:ping"
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("no UDP echo through the published port")
    finally:
        ok(services.berth("rm", "-f", cid))


@needs_loopback_nat
def test_published_port_from_loopback_and_port_command(services):
    port = free_port()
    cid = ok(services.berth("run", "-d", "-p", f"{port}:80", "-p", "127.0.0.1::81", "-p", "5353:53/udp",
                            "busybox", "sh", "-c", HTTPD.format(text="hello-web", port=80))).stdout.strip()
    try:
        assert fetch(f"http://127.0.0.1:{port}/") == "hello-web\n"
        lines = ok(services.berth("port", cid)).stdout.splitlines()
        assert f"80/tcp -> 0.0.0.0:{port}" in lines
        assert "53/udp -> 0.0.0.0:5353" in lines
        random_line = [ln for ln in lines if ln.startswith("81/tcp -> 127.0.0.1:")]
        assert random_line and int(random_line[0].rsplit(":", 1)[1]) > 0
        assert ok(services.berth("port", cid, "80")).stdout == f"0.0.0.0:{port}\n"
        ps_ports = ok(services.berth("ps")).stdout
        assert f"0.0.0.0:{port}->80/tcp" in ps_ports and "127.0.0.1:" in ps_ports and "->81/tcp" in ps_ports
        one_line_error(services.berth("port", cid, "99"), 1, "No public port '99/tcp'")
        # The same host port twice is refused clearly, and leaves nothing behind.
        one_line_error(services.berth("run", "--rm", "-p", f"{port}:80", "busybox", "true"), 125,
                       "port is already allocated")
    finally:
        ok(services.berth("rm", "-f", cid))
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)


def test_port_in_use_on_host_is_refused(services):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(services.berth("run", "--rm", "-p", f"127.0.0.1:{port}:80", "busybox", "true"), 125,
                       "port is already allocated")


@pytest.mark.parametrize("flag", ["abc", "1:2:3:4", "70000:80", "80/sctp", "300.1.1.1:80:80"])
def test_malformed_publish(services, flag):
    one_line_error(services.berth("run", "--rm", "-p", flag, "busybox", "true"), 125, "--publish")


def test_network_none_and_host(services):
    r = ok(services.berth("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"))
    assert [ln.split(":")[1].strip() for ln in r.stdout.splitlines()] == ["lo"]
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    r = ok(services.berth("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link"))
    assert "eth0" in r.stdout and "eth0" in host_links


def test_add_host_dns_hostname(services):
    r = ok(services.berth("run", "--rm", "--add-host", "db.local:10.9.8.7", "--dns", "10.0.0.53",
                          "--dns-search", "example.test", "-h", "myhost", "busybox", "sh", "-c",
                          "cat /etc/hosts /etc/resolv.conf; hostname"))
    assert "10.9.8.7\tdb.local" in r.stdout
    assert "nameserver 10.0.0.53" in r.stdout and "search example.test" in r.stdout
    assert r.stdout.splitlines()[-1] == "myhost"
    assert "\tmyhost" in r.stdout


def test_user_network_names_aliases_isolation_connect(services):
    a, b = "an-" + uuid.uuid4().hex[:6], "bn-" + uuid.uuid4().hex[:6]
    ok(services.berth("network", "create", a))
    ok(services.berth("network", "create", b))
    names = []
    try:
        ok(services.berth("run", "-d", "--name", "ndb", "--network", a, "--network-alias", "database",
                          "busybox", "sleep", "300"))
        names.append("ndb")
        r = ok(services.berth("run", "--rm", "--network", a, "busybox", "sh", "-c",
                              "ping -c1 -W2 ndb && ping -c1 -W2 database"))
        assert "1 packets received" in r.stdout
        db_ip = ok(services.berth("network", "inspect", "-f", "{{json .Containers}}", a)).stdout
        ip = db_ip.split('"IPv4Address": "')[1].split("/")[0]
        # Another network: neither the name resolves nor the address answers.
        r = services.berth("run", "--rm", "--network", b, "busybox", "sh", "-c",
                           f"ping -c1 -W1 ndb; ping -c1 -W1 {ip}")
        assert r.returncode != 0 and "bad address 'ndb'" in r.stderr and "0 packets received" in r.stdout
        # connect adds the container to the network (and names update); disconnect takes it away.
        ok(services.berth("run", "-d", "--name", "nweb", "--network", b, "busybox", "sleep", "300"))
        names.append("nweb")
        ok(services.berth("network", "connect", a, "nweb"))
        r = ok(services.berth("exec", "nweb", "ping", "-c1", "-W2", "ndb"))
        assert "1 packets received" in r.stdout
        assert "nweb" in ok(services.berth("exec", "ndb", "cat", "/etc/hosts")).stdout
        one_line_error(services.berth("network", "rm", a), 1, "has active endpoints")
        ok(services.berth("network", "disconnect", a, "nweb"))
        assert "nweb" not in ok(services.berth("exec", "ndb", "cat", "/etc/hosts")).stdout
        assert services.berth("exec", "nweb", "ping", "-c1", "-W1", "ndb").returncode != 0
    finally:
        if names:
            services.berth("rm", "-f", *names)
        ok(services.berth("network", "rm", a, b))


def test_network_bad_input(services):
    name = "sn-" + uuid.uuid4().hex[:6]
    ok(services.berth("network", "create", name, "--subnet", "10.213.7.0/24"))
    try:
        one_line_error(services.berth("network", "create", "x" + name, "--subnet", "10.213.7.128/25"), 1,
                       "overlaps")
        one_line_error(services.berth("network", "create", name), 1, "already exists")
        one_line_error(services.berth("network", "create", "y" + name, "--subnet", "nonsense"), 1,
                       "invalid subnet")
        one_line_error(services.berth("run", "--rm", "--network", name, "--ip", "10.9.9.9", "busybox", "true"),
                       125, "no configured subnet contains IP address 10.9.9.9")
        r = ok(services.berth("run", "--rm", "--network", name, "--ip", "10.213.7.77", "busybox", "ip", "-o",
                              "-4", "addr", "show", "eth0"))
        assert "10.213.7.77/24" in r.stdout
        one_line_error(services.berth("run", "--rm", "--ip", "10.9.9.9", "busybox", "true"), 125,
                       "user defined networks only")
    finally:
        ok(services.berth("network", "rm", name))
    one_line_error(services.berth("run", "--rm", "--network", "nosuchnet", "busybox", "true"), 125,
                   "network nosuchnet not found")
    one_line_error(services.berth("network", "rm", "nosuchnet"), 1, "not found")
    one_line_error(services.berth("network", "rm", "bridge"), 1, "pre-defined network")
    routes = subprocess.run(["ip", "-o", "-4", "route"], capture_output=True, text=True).stdout
    host_net = next(ln.split()[0] for ln in routes.splitlines() if "/" in ln.split()[0] and "eth" in ln)
    one_line_error(services.berth("network", "create", "h" + name, "--subnet", host_net), 1, "overlaps")


def test_network_ls_and_prune(services):
    name = "pn-" + uuid.uuid4().hex[:6]
    ok(services.berth("network", "create", name))
    # A create refused for its name leaves no membership that would keep the network "in use".
    cid = ok(services.berth("create", "--name", "pn-taken", "busybox", "true")).stdout.strip()
    assert services.berth("create", "--name", "pn-taken", "--network", name, "busybox", "true").returncode == 125
    ok(services.berth("rm", cid))
    out = ok(services.berth("network", "ls")).stdout
    assert out.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert {"bridge", "host", "none", name} <= {ln.split()[1] for ln in out.splitlines()[1:]}
    r = ok(services.berth("network", "prune", "-f"))
    assert name in r.stdout
    assert name not in services.berth("network", "ls").stdout


@contextlib.contextmanager
def outside_host():
    """A netns of our own, reachable from the host over a veth, on a subnet that does not
    overlap any host route: the only 'outside' address outbound traffic may go to."""
    routes = subprocess.run(["ip", "-o", "-4", "route"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(ln.split()[0]) for ln in routes.splitlines() if "/" in ln.split()[0]]
    net = next(n for n in ipaddress.ip_network("10.231.0.0/16").subnets(new_prefix=30)
               if not any(n.overlaps(t) for t in taken))
    host_ip, out_ip = (str(h) for h in net.hosts())
    tag = uuid.uuid4().hex[:6]
    ns, veth, peer = f"btout-{tag}", f"bto{tag}", f"btp{tag}"
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", f"{out_ip}/30", "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # The outside host knows no route to container subnets: replies only work if NATed.
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                   "import http.server as h\n"
                                   "class H(h.BaseHTTPRequestHandler):\n"
                                   "  def do_GET(s):\n"
                                   "    s.send_response(200); s.end_headers()\n"
                                   "    s.wfile.write(s.client_address[0].encode())\n"
                                   "  def log_message(s, *a): pass\n"
                                   f"h.HTTPServer(('{out_ip}', 8000), H).serve_forever()\n"])
        try:
            time.sleep(0.5)
            yield out_ip, host_ip, ns
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_published_port_from_another_host(services):
    """Traffic from 'another host' (our own netns) to the host's address reaches the container."""
    port = free_port()
    cid = ok(services.berth("run", "-d", "-p", f"{port}:80", "busybox", "sh", "-c",
                            HTTPD.format(text="from-outside", port=80))).stdout.strip()
    try:
        with outside_host() as (out_ip, host_ip, ns):
            url = f"http://{host_ip}:{port}/"
            script = ("import urllib.request,time\nfor _ in range(50):\n  try:\n"
                      f"    print(urllib.request.urlopen('{url}', timeout=2).read().decode(), end='')"
                      "\n    break\n  except OSError:\n    time.sleep(0.1)\n")
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                               text=True, timeout=30)
            assert r.stdout == "from-outside\n", r.stderr
    finally:
        ok(services.berth("rm", "-f", cid))


def test_rename_updates_peers_hosts(services):
    net = "rn-" + uuid.uuid4().hex[:6]
    ok(services.berth("network", "create", net))
    try:
        ok(services.berth("run", "-d", "--name", "rn-a", "--network", net, "busybox", "sleep", "300"))
        ok(services.berth("run", "-d", "--name", "rn-b", "--network", net, "busybox", "sleep", "300"))
        ok(services.berth("rename", "rn-a", "rn-renamed"))
        hosts = ok(services.berth("exec", "rn-b", "cat", "/etc/hosts")).stdout
        assert "rn-renamed" in hosts and "rn-a " not in hosts
        assert "1 packets received" in ok(services.berth("exec", "rn-b", "ping", "-c1", "-W2", "rn-renamed")).stdout
    finally:
        services.berth("rm", "-f", "rn-renamed", "rn-a", "rn-b")
        ok(services.berth("network", "rm", net))


def test_internal_network_has_no_way_out(services):
    net = "in-" + uuid.uuid4().hex[:6]
    ok(services.berth("network", "create", "--internal", net))
    try:
        with outside_host() as (out_ip, _host_ip, _ns):
            r = services.berth("run", "--rm", "--network", net, "busybox", "sh", "-c",
                               f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {out_ip} 8000")
            assert r.returncode != 0 and r.stdout == ""
    finally:
        ok(services.berth("network", "rm", net))


def test_outbound_masquerade(services):
    with outside_host() as (out_ip, host_ip, _ns):
        # (busybox's static wget crashes on this image; nc speaks HTTP well enough)
        r = ok(services.berth("run", "--rm", "busybox", "sh", "-c",
                              f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {out_ip} 8000"))
        # The outside host saw the host's address on its link, not the container's.
        assert r.stdout.endswith("\n" + host_ip) or r.stdout.endswith("\r\n" + host_ip), r.stdout


# web's CGI asks db by name over the user network (nc: busybox's static wget crashes here).
CGI = ("#!/bin/sh\necho Content-Type: text/plain\necho\n"
       "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 sdb 5432 | sed '1,/^\\r\\?$/d'\n")


@needs_loopback_nat
def test_web_and_db_scenario(services):
    """db writes into a named volume; web serves it on a user network through a published
    port on 127.0.0.1; both are replaced and the data is still there."""
    net, vol, port = "app-" + uuid.uuid4().hex[:6], "appdata-" + uuid.uuid4().hex[:6], free_port()
    ok(services.berth("network", "create", net))
    try:
        for round_ in range(2):
            if round_ == 0:
                ok(services.berth("run", "--rm", "--network", net, "-v", f"{vol}:/var/lib/db", "busybox", "sh",
                                  "-c", "echo stored-by-db > /var/lib/db/index.html"))
            ok(services.berth("run", "-d", "--name", "sdb", "--network", net, "-v", f"{vol}:/var/lib/db",
                              "busybox", "sh", "-c", "exec httpd -f -p 5432 -h /var/lib/db"))
            ok(services.berth("run", "-d", "--name", "sweb", "--network", net, "-p", f"127.0.0.1:{port}:80",
                              "-e", f"CGI={CGI}", "busybox", "sh", "-c",
                              'mkdir -p /www/cgi-bin && echo "$CGI" > /www/cgi-bin/data && '
                              "chmod +x /www/cgi-bin/data && exec httpd -f -p 80 -h /www"))
            assert fetch(f"http://127.0.0.1:{port}/cgi-bin/data") == "stored-by-db\n"
            ok(services.berth("rm", "-f", "sdb", "sweb"))
    finally:
        services.berth("rm", "-f", "sdb", "sweb")
        ok(services.berth("network", "rm", net))
        services.berth("volume", "rm", vol)
    assert os.path.exists("/proc")  # nothing else to clean: the fixture checks links, netns, nft, mounts
