"""Docker-compatible config.json handling in the CLI: keys, lookup, file mode."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli.commands import registry


def test_registry_of_follows_docker() -> None:
    assert registry.registry_of("busybox") == "docker.io"
    assert registry.registry_of("user/app:1") == "docker.io"
    assert registry.registry_of("127.0.0.1:5000/me/bb:2") == "127.0.0.1:5000"
    assert registry.registry_of("localhost/x") == "localhost"
    assert registry.registry_of("ghcr.io/o/r@sha256:" + "a" * 64) == "ghcr.io"
    assert registry.server_key("") == registry.server_key("docker.io") == "https://index.docker.io/v1/"
    assert registry.server_key("https://reg.example:5000/v2/") == "reg.example:5000"


def test_config_written_0600_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    registry._write_config({"auths": {"https://reg.example:5000": {"auth": "YWxpY2U6cHc="}}, "other": 1})
    path = tmp_path / "cfg" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["other"] == 1

    class FakeClient:  # auth_for only needs the protobuf module
        pass

    auth = registry.auth_for(FakeClient(), "reg.example:5000")  # type: ignore[arg-type]
    assert (auth.username, auth.password) == ("alice", "pw")
    assert registry.auth_for(FakeClient(), "other.example").username == ""  # type: ignore[arg-type]
