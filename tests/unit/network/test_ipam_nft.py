"""IPAM arithmetic and the nftables rule set Berth renders (no kernel needed)."""

from __future__ import annotations

import ipaddress

import pytest

from services.common import errors
from services.runtime.network import ipam, nft


def test_pick_subnet_skips_taken_and_prefers_default():
    taken = [ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("172.18.0.0/24")]
    assert str(ipam.pick_subnet(taken, "172.17.0.0/16")) == "172.18.1.0/24"
    assert str(ipam.pick_subnet([], "172.17.0.0/16")) == "172.17.0.0/16"


def test_allocate_skips_gateway_and_used():
    net = ipaddress.ip_network("10.1.2.0/29")
    assert ipam.allocate(net, "10.1.2.1", set()) == "10.1.2.2"
    assert ipam.allocate(net, "10.1.2.1", {"10.1.2.2", "10.1.2.3"}) == "10.1.2.4"
    with pytest.raises(errors.FailedPrecondition):
        ipam.allocate(net, "10.1.2.1", {f"10.1.2.{i}" for i in range(2, 7)})


def test_requested_address_checks():
    net = ipaddress.ip_network("10.1.2.0/24")
    assert ipam.check_requested(net, "10.1.2.1", "10.1.2.9") == "10.1.2.9"
    for bad in ("10.1.3.9", "10.1.2.0", "10.1.2.255", "nonsense"):
        with pytest.raises(errors.InvalidArgument):
            ipam.check_requested(net, "10.1.2.1", bad)
    with pytest.raises(errors.InvalidArgument):
        ipam.check_requested(net, "10.1.2.1", "10.1.2.1")


@pytest.mark.parametrize("text", ["10.0.0.1/24", "nonsense", "fd00::/64", "10.0.0.0/31"])
def test_parse_subnet_rejects(text):
    with pytest.raises(errors.InvalidArgument):
        ipam.parse_subnet(text)


def test_gateway_must_be_in_subnet():
    net = ipaddress.ip_network("10.5.0.0/24")
    assert ipam.gateway_of(net) == "10.5.0.1"
    assert ipam.gateway_of(net, "10.5.0.254") == "10.5.0.254"
    with pytest.raises(errors.InvalidArgument):
        ipam.gateway_of(net, "10.6.0.1")


def test_ruleset_is_one_atomic_table():
    rules = nft.Ruleset("btest", [nft.BridgeNet("btest0", "172.17.0.0/16"), nft.BridgeNet("btestaaaa", "10.9.0.0/24",
                                                                                      internal=True)],
                        [nft.Publish("tcp", "", 8080, "172.17.0.2", 80),
                         nft.Publish("udp", "127.0.0.1", 5353, "172.17.0.2", 53)])
    text = rules.render()
    lines = text.splitlines()
    # Recreated in one transaction: declare, delete, define.
    assert lines[:3] == ["table ip btest", "delete table ip btest", "table ip btest {"]
    assert "tcp dport 8080 dnat to 172.17.0.2:80" in text
    assert "ip daddr 127.0.0.1 udp dport 5353 dnat to 172.17.0.2:53" in text
    assert 'ip saddr 172.17.0.0/16 oifname != "btest0" masquerade' in text
    assert 'ip saddr 10.9.0.0/24 oifname != "btestaaaa" masquerade' not in text  # internal: no way out
    assert 'oifname "btest0" ip saddr 127.0.0.0/8 masquerade' in text
    assert "jump isolate" in text and 'iifname "btest0" oifname != "btest0" drop' in text
