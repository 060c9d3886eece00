"""Dependency order, cycles, and the RunSpec / config hash a service becomes."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from cli.compose import graph
from cli.compose.errors import ComposeError
from cli.compose.loader import load_project
from cli.compose.runspec import LABEL_HASH, LABEL_PROJECT, LABEL_SERVICE, config_hash, run_spec


def _svcs(deps: dict[str, list[str]]) -> dict[str, dict]:
    return {name: {"depends_on": dict.fromkeys(ds, {"condition": "service_started"})} for name, ds in deps.items()}


def test_start_and_stop_order():
    services = _svcs({"web": ["api", "cache"], "api": ["db"], "db": [], "cache": [], "worker": ["db"]})
    order = graph.start_order(services)
    for name, svc in services.items():
        for dep in svc["depends_on"]:
            assert order.index(dep) < order.index(name)
    assert order == ["db", "api", "cache", "web", "worker"]  # depth first, names in order
    assert graph.stop_order(services) == list(reversed(order))
    assert graph.with_dependencies(services, ["web"]) == {"web", "api", "db", "cache"}
    assert graph.start_order(services, {"web", "api"}) == ["api", "web"]


@pytest.mark.parametrize(("deps", "cycle"), [
    ({"a": ["b"], "b": ["a"]}, "a -> b -> a"),
    ({"a": ["b"], "b": ["c"], "c": ["a"]}, "a -> b -> c -> a"),
    ({"a": ["a"]}, "a -> a"),
    ({"x": [], "a": ["x", "b"], "b": ["c"], "c": ["b"]}, "b -> c -> b"),
])
def test_cycles_are_named(deps, cycle):
    with pytest.raises(ComposeError, match=f"dependency cycle detected: {cycle}$"):
        graph.check(_svcs(deps))


def _client():
    """The pb modules the Client exposes, without a connection (run_spec only builds messages)."""
    from berth.api.v1 import api_pb2
    from berth.runtime.v1 import runtime_pb2
    from berth.types.v1 import types_pb2

    return types.SimpleNamespace(api=api_pb2, runtime=runtime_pb2, types=types_pb2)


APP = """
name: shop
services:
  web:
    image: bb:${TAG:-1}
    command: httpd -f
    entrypoint: [/bin/sh, -c]
    environment: {A: "1"}
    ports: ["127.0.0.1:8080:80"]
    volumes: [data:/data, /anon]
    networks: {front: {aliases: [www]}, back: {}}
    healthcheck: {test: [CMD, "true"], interval: 500ms, retries: 2}
    restart: unless-stopped
    stop_grace_period: 1500ms
    tty: true
    user: "1000"
    working_dir: /srv
    mem_limit: 32m
    cpus: 0.5
  db:
    image: busybox
    container_name: the-db
    read_only: true
    tmpfs: [/run]
networks: {front: {}, back: {}}
volumes: {data: {}}
"""


def _project(tmp_path: Path, env: dict[str, str] | None = None):
    (tmp_path / "compose.yaml").write_text(APP)
    return load_project(cwd=tmp_path, environ=env or {})


def test_run_spec(tmp_path):
    p = _project(tmp_path)
    spec, extra = run_spec(_client(), p, "web", "sha256:abc")
    assert spec.name == "shop-web-1" and spec.image == "bb:1" and spec.detach
    assert list(spec.command) == ["httpd", "-f"]
    assert spec.entrypoint_set and list(spec.entrypoint) == ["/bin/sh", "-c"]
    assert list(spec.env) == ["A=1"] and spec.user == "1000" and spec.workdir == "/srv" and spec.tty
    assert spec.labels[LABEL_PROJECT] == "shop" and spec.labels[LABEL_SERVICE] == "web"
    assert spec.labels[LABEL_HASH] == config_hash(p, "web")
    assert [(m.type, m.source, m.target) for m in spec.mounts] == [("volume", "shop_data", "/data"),
                                                                    ("volume", "", "/anon")]
    assert spec.network.mode == "shop_front" and list(spec.network.aliases) == ["web", "www"]
    assert extra == [{"network": "shop_back", "aliases": ["web"], "ipv4_address": ""}]
    assert [(x.host_ip, x.host_port, x.container_port) for x in spec.network.ports] == [("127.0.0.1", 8080, 80)]
    assert list(spec.healthcheck.test) == ["CMD", "true"] and spec.healthcheck.interval_ns == 500_000_000
    assert spec.healthcheck.retries == 2
    assert spec.restart_policy.name == "unless-stopped" and spec.stop_timeout == 2
    assert spec.resources.memory_bytes == 32 << 20 and spec.resources.cpu_quota_us == 50_000
    db, _ = run_spec(_client(), p, "db", "")
    assert db.name == "the-db" and db.read_only and [m.type for m in db.mounts] == ["tmpfs"]
    assert not db.entrypoint_set and db.stop_timeout == -1 and db.network.mode == "shop_default"


def test_config_hash_tracks_what_shapes_the_container(tmp_path):
    one = _project(tmp_path)
    assert config_hash(one, "web") == config_hash(_project(tmp_path), "web")
    assert config_hash(one, "web") == config_hash(_project(tmp_path, {"TAG": "1"}), "web")
    assert config_hash(one, "web") != config_hash(_project(tmp_path, {"TAG": "2"}), "web")
    assert config_hash(one, "db") == config_hash(_project(tmp_path, {"TAG": "2"}), "db")
    (tmp_path / "compose.yaml").write_text(APP.replace("name: shop", "name: other"))
    assert config_hash(one, "web") != config_hash(load_project(cwd=tmp_path, environ={}), "web")
