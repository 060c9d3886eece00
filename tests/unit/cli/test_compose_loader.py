"""Loading compose files: defaults, .env, names, the normal form, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.compose.errors import ComposeError
from cli.compose.loader import load_project
from cli.compose.yamlfile import load_yaml


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None, name: str = "compose.yaml", **kw):
    (tmp_path / name).write_text(text)
    return load_project(cwd=tmp_path, environ=env or {}, **kw)


def test_yaml_12_scalars():
    doc = load_yaml("a: no\nb: 22:22\nc: on\nd: true\ne: 0o755\nf: 0x10\n", "x")
    assert doc == {"a": "no", "b": "22:22", "c": "on", "d": True, "e": 0o755, "f": 16}


def test_default_file_names_and_project_name(tmp_path):
    app = tmp_path / "My App.1"
    app.mkdir()
    (app / "docker-compose.yml").write_text("services:\n  web:\n    image: busybox\n")
    p = load_project(cwd=app, environ={})
    assert p.name == "myapp1" and p.config_files == [app / "docker-compose.yml"]
    assert p.networks == {"default": {"name": "myapp1_default"}}
    assert load_project(cwd=app, environ={}, project_name="other").name == "other"
    assert load_project(cwd=app, environ={"COMPOSE_PROJECT_NAME": "fromenv"}).name == "fromenv"
    with pytest.raises(ComposeError, match="invalid project name"):
        load_project(cwd=app, environ={}, project_name="Bad Name")


def test_no_file(tmp_path):
    with pytest.raises(ComposeError, match="no configuration file provided"):
        load_project(cwd=tmp_path, environ={})


def test_dot_env_and_environment_precedence(tmp_path):
    (tmp_path / ".env").write_text("TAG=1\nPORT=8080\n")
    text = "name: app\nservices:\n  web:\n    image: bb:${TAG}\n    ports: ['127.0.0.1:${PORT}:80']\n"
    p = _load(tmp_path, text)
    assert p.services["web"]["image"] == "bb:1"
    assert p.services["web"]["ports"] == [{"protocol": "tcp", "host_ip": "127.0.0.1", "host_port": 8080,
                                           "container_port": 80}]
    assert _load(tmp_path, text, env={"TAG": "2"}).services["web"]["image"] == "bb:2"


def test_unset_variable_warns_once(tmp_path):
    p = _load(tmp_path, "services:\n  a: {image: 'x:${T}', command: 'echo ${T}'}\n")
    assert p.services["a"]["image"] == "x:"
    assert p.warnings == ['The "T" variable is not set. Defaulting to a blank string.']


def test_service_normal_form(tmp_path):
    (tmp_path / "web.env").write_text("FROM_FILE=1\nOVERRIDDEN=file\n")
    p = _load(tmp_path, """
name: app
services:
  web:
    image: busybox
    command: sh -c 'echo "hi there"'
    entrypoint: ""
    env_file: web.env
    environment:
      OVERRIDDEN: map
      NUM: 3
      FLAG: true
      FROM_SHELL:
      NOT_SET:
    ports: ["8000-8001:80-81", "9000:90/udp", 53, {target: 443, published: "8443", host_ip: 127.0.0.1}]
    volumes:
      - data:/data
      - ./site:/site:ro
      - /anon
      - {type: tmpfs, target: /run, tmpfs: {size: 1m}}
    networks:
      front: {aliases: [www]}
      back:
    depends_on: [db]
    healthcheck: {test: "wget -q localhost", interval: 1m30s, retries: 5}
    restart: on-failure:3
    labels: [a=b]
    stop_grace_period: 2s
  db:
    image: busybox
    network_mode: none
    healthcheck: {disable: true}
networks: {front: {}, back: {internal: true, ipam: {config: [{subnet: 10.9.0.0/24}]}}}
volumes: {data: {}, old: {external: true}}
""", env={"FROM_SHELL": "sh"})
    web = p.services["web"]
    assert web["command"] == ["sh", "-c", 'echo "hi there"'] and web["entrypoint"] == []
    assert web["environment"] == {"FROM_FILE": "1", "OVERRIDDEN": "map", "NUM": "3", "FLAG": "true",
                                  "FROM_SHELL": "sh"}
    assert [(x["host_port"], x["container_port"], x["protocol"]) for x in web["ports"]] == [
        (8000, 80, "tcp"), (8001, 81, "tcp"), (9000, 90, "udp"), (0, 53, "tcp"), (8443, 443, "tcp")]
    assert web["volumes"] == [
        {"type": "volume", "source": "data", "target": "/data"},
        {"type": "bind", "source": str(tmp_path / "site"), "target": "/site", "read_only": True},
        {"type": "volume", "source": "", "target": "/anon"},
        {"type": "tmpfs", "target": "/run", "tmpfs_size": 1 << 20}]
    assert web["networks"] == {"front": {"aliases": ["www"]}, "back": {}}
    assert web["depends_on"] == {"db": {"condition": "service_started", "required": True}}
    assert web["healthcheck"] == {"test": ["CMD-SHELL", "wget -q localhost"], "interval": "1m30s", "retries": 5}
    assert web["labels"] == {"a": "b"} and web["restart"] == "on-failure:3"
    assert p.services["db"]["networks"] == {} and p.services["db"]["healthcheck"] == {"test": ["NONE"]}
    assert p.networks["back"] == {"name": "app_back", "internal": True, "subnet": "10.9.0.0/24"}
    assert "default" not in p.networks
    assert p.volumes == {"data": {"name": "app_data"}, "old": {"name": "old", "external": True}}


def test_later_files_override(tmp_path):
    (tmp_path / "a.yaml").write_text("services:\n  web: {image: busybox, environment: {A: '1', B: '1'}}\n")
    (tmp_path / "b.yaml").write_text("services:\n  web: {image: bb:2, environment: {B: '2'}}\n")
    p = load_project(["a.yaml", "b.yaml"], cwd=tmp_path, environ={})
    assert p.services["web"]["image"] == "bb:2"
    assert p.services["web"]["environment"] == {"A": "1", "B": "2"}


def test_ignored_keys_warn(tmp_path):
    p = _load(tmp_path, "services:\n  a: {image: busybox, deploy: {replicas: 2}}\n")
    assert any("deploy is not supported" in w for w in p.warnings)


@pytest.mark.parametrize(("text", "message"), [
    ("services: [a]\n", "services must be a mapping"),
    ("services:\n  a: {image: busybox}\nsecrets: {}\n", "additional property 'secrets'"),
    ("services:\n  a: {imag: busybox}\n", "additional property 'imag'"),
    ("services:\n  a: {command: x}\n", 'service "a": has neither an image nor a build context'),
    ("services:\n  a: {image: busybox, depends_on: [b]}\n", 'service "a" depends on undefined service "b"'),
    ("services:\n  a: {image: busybox, depends_on: {b: {condition: started}}}\n  b: {image: busybox}\n",
     "unknown condition 'started'"),
    ("services:\n  a: {image: busybox, volumes: ['data:/d']}\n", "refers to undefined volume data"),
    ("services:\n  a: {image: busybox, networks: [n]}\n", "refers to undefined network n"),
    ("services:\n  a: {image: busybox, ports: ['1:2:3:4']}\n", "too many colons"),
    ("services:\n  a: {image: busybox, ports: ['8000-8002:80-81']}\n", "range"),
    ("services:\n  a: {image: busybox, ports: ['x.y:80:80']}\n", "invalid IP address"),
    ("services:\n  a: {image: busybox, volumes: ['data:rel']}\nvolumes: {data: }\n", "mount path must be absolute"),
    ("services:\n  a: {image: busybox, restart: sometimes}\n", "invalid restart policy 'sometimes'"),
    ("services:\n  a: {image: busybox, stop_grace_period: soon}\n", "invalid duration"),
    ("services:\n  a: {image: busybox, healthcheck: {test: [BOGUS]}}\n", "must start with NONE, CMD or CMD-SHELL"),
    ("services:\n  a: {image: busybox, network_mode: 'service:b'}\n", "not supported"),
    ("services:\n  a: {image: 'x:${T:?set T}'}\n", "required variable T is missing a value: set T"),
    ("services:\n  a:\n    image: a\n    image: b\n", "mapping key 'image' already defined"),
    ("services:\n  a: {image: busybox\n", "yaml: line"),
    ("- a\n", "top-level object must be a mapping"),
])
def test_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(ComposeError) as exc:
        _load(tmp_path, text)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_service_selected(tmp_path):
    p = _load(tmp_path, "services:\n  a: {image: busybox}\n")
    with pytest.raises(ComposeError, match="no such service: b"):
        p.check_services(["a", "b"])
