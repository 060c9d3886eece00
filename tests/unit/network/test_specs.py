"""The CLI's parsers for -v, --mount, --tmpfs and -p (Docker's syntaxes)."""

from __future__ import annotations

import pytest

from cli.client import CliError
from cli.specs import parse_mount, parse_publish, parse_tmpfs, parse_volume


@pytest.mark.parametrize("text, want", [
    ("/data", {"type": "volume", "source": "", "target": "/data"}),
    ("data:/var/lib/db", {"type": "volume", "source": "data", "target": "/var/lib/db"}),
    ("/host:/in:ro", {"type": "bind", "source": "/host", "target": "/in", "read_only": True}),
    ("/host:/in:rw,rshared", {"type": "bind", "source": "/host", "target": "/in", "read_only": False,
                              "propagation": "rshared"}),
    ("data:/d:nocopy", {"type": "volume", "source": "data", "target": "/d", "no_copy": True}),
    ("/d:ro", {"type": "volume", "source": "", "target": "/d", "read_only": True}),
])
def test_volume(text, want):
    assert parse_volume(text) == want


@pytest.mark.parametrize("text", ["", "rel", "a:b", "a:/b:c:d", "/h:/c:bogus", "data:/d:rshared", "::"])
def test_volume_malformed(text):
    with pytest.raises(CliError) as err:
        parse_volume(text)
    assert err.value.exit_code == 125


def test_mount():
    assert parse_mount("type=bind,source=/h,target=/c,readonly,bind-propagation=rslave") == {
        "type": "bind", "source": "/h", "target": "/c", "read_only": True, "propagation": "rslave"}
    assert parse_mount("type=tmpfs,dst=/t,tmpfs-size=16m,tmpfs-mode=700") == {
        "type": "tmpfs", "target": "/t", "tmpfs_size": 16 << 20, "tmpfs_mode": 0o700}
    assert parse_mount("src=v,dst=/v,volume-nocopy") == {"type": "volume", "source": "v", "target": "/v",
                                                           "no_copy": True}


@pytest.mark.parametrize("text, needle", [
    ("type=bind,target=/x", "source is required"),
    ("type=nfs,target=/x", "unknown mount type"),
    ("type=volume,src=v", "target is required"),
    ("type=tmpfs,src=x,dst=/x", "not allowed"),
    ("type=bind,src=/a,dst=/b,size=3", "unexpected key"),
    ("type=bind,src=/a,dst=/b,readonly=maybe", "invalid value"),
    ("type=volume,src=v,dst=/b,bind-propagation=shared", "only for bind"),
])
def test_mount_malformed(text, needle):
    with pytest.raises(CliError) as err:
        parse_mount(text)
    assert needle in str(err.value) and err.value.exit_code == 125


def test_tmpfs():
    assert parse_tmpfs("/run:size=16m,mode=1777,exec") == {
        "type": "tmpfs", "target": "/run", "tmpfs_options": ["exec"], "tmpfs_size": 16 << 20, "tmpfs_mode": 0o1777}
    with pytest.raises(CliError):
        parse_tmpfs("/run:colour=red")


@pytest.mark.parametrize("text, want", [
    ("80", ("tcp", "", 0, 80)),
    ("8080:80", ("tcp", "", 8080, 80)),
    ("127.0.0.1:8443:443/tcp", ("tcp", "127.0.0.1", 8443, 443)),
    ("127.0.0.1::80", ("tcp", "127.0.0.1", 0, 80)),
    ("53:53/udp", ("udp", "", 53, 53)),
])
def test_publish(text, want):
    p = parse_publish(text)
    assert (p["protocol"], p["host_ip"], p["host_port"], p["container_port"]) == want


@pytest.mark.parametrize("text", ["abc", "0", "70000", "1:2:3:4", "80/sctp", "1.2.3:80:80", "x:80"])
def test_publish_malformed(text):
    with pytest.raises(CliError) as err:
        parse_publish(text)
    assert "--publish" in str(err.value)
