"""Manifest parsing, platform matching, auth challenges and registry error messages: pure rules."""

from __future__ import annotations

import json
import re

import pytest

from services.common.errors import InvalidArgument
from services.image import distribution
from services.image.distribution import Index, Manifest, Platform
from services.image.registry import Credentials, Settings, parse_challenge, registry_message

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _manifest(**over: object) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 10},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D2, "size": 5}]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_manifest_and_media_type_sources() -> None:
    m = distribution.parse(_manifest())
    assert isinstance(m, Manifest) and m.layers[0].short == "2" * 12
    assert distribution.LAYER_TYPES[m.layers[0].media_type] == "zstd"
    # No mediaType in the document: the Content-Type header, else the shape, decides.
    doc = json.loads(_manifest())
    del doc["mediaType"]
    assert isinstance(distribution.parse(json.dumps(doc).encode(), "application/json"), Manifest)
    idx = distribution.parse(json.dumps({"schemaVersion": 2, "manifests": []}).encode())
    assert isinstance(idx, Index)


@pytest.mark.parametrize(("data", "message"), [
    (b"{not json", "malformed manifest: not valid JSON"),
    (b"[]", "malformed manifest: not a JSON object"),
    (_manifest(schemaVersion=1), "schema 1 is deprecated"),
    (_manifest(mediaType="application/vnd.example+json"), "unsupported media type 'application/vnd.example+json'"),
    (_manifest(layers="x"), "malformed manifest: layers is not a list"),
    (_manifest(config={"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": D1, "size": 1}),
     "not a container image"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "md5:x", "size": 1}]),
     "invalid digest"),
    (_manifest(layers=[{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": -1}]),
     "invalid size"),
])
def test_bad_manifests_are_one_clear_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
        distribution.parse(data)
    assert "\n" not in str(info.value)


def _index(*plats: dict[str, str]) -> Index:
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": "sha256:" + str(i) * 64, "size": 1, "platform": p} for i, p in enumerate(plats)]}
    parsed = distribution.parse(json.dumps(doc).encode())
    assert isinstance(parsed, Index)
    return parsed


def test_platform_matching_like_containerd() -> None:
    idx = _index({"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "arm64", "variant": "v8"},
                 {"os": "linux", "architecture": "arm", "variant": "v6"},
                 {"os": "linux", "architecture": "arm", "variant": "v7"},
                 {"os": "unknown", "architecture": "unknown"})
    assert distribution.choose(idx, distribution.parse_platform("linux/arm64"), "x").digest.startswith("sha256:1")
    assert distribution.choose(idx, distribution.parse_platform("arm"), "x").digest.startswith("sha256:3")
    assert distribution.choose(idx, distribution.parse_platform("linux/arm/v6"), "x").digest.startswith("sha256:2")
    with pytest.raises(InvalidArgument, match=r"no matching manifest for linux/s390x in the manifest list entries "
                                              r"of x \(available: linux/amd64, linux/arm/v6, linux/arm/v7, "
                                              r"linux/arm64\)"):
        distribution.choose(idx, Platform("linux", "s390x"), "x")
    with pytest.raises(InvalidArgument, match="invalid platform"):
        distribution.parse_platform("linux//")


def test_parse_challenge() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                        'scope="repository:a/b:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "registry.example",
                        "scope": "repository:a/b:pull,push"}
    basic = parse_challenge('Basic realm="berth \\"test\\""')
    assert basic is not None and basic.scheme == "basic" and basic.params["realm"] == 'berth "test"'


def test_registry_messages_and_secrets() -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()
    assert registry_message(404, body) == "manifest unknown: manifest unknown"
    assert registry_message(502, b"<html>") == "received unexpected HTTP status: 502 Bad Gateway"
    creds = Credentials("alice", "s3cret")
    assert "s3cret" not in repr(creds) and creds.basic() == "Basic YWxpY2U6czNjcmV0"


def test_settings_schemes_and_mirrors() -> None:
    s = Settings.load({"BERTH_CONFIG": "/nonexistent", "BERTH_REGISTRY_MIRRORS": "http://127.0.0.1:5000/",
                       "BERTH_INSECURE_REGISTRIES": "reg.lan:5000"})
    assert s.endpoints("docker.io") == ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
    assert s.endpoints("docker.io", for_push=True) == ["https://registry-1.docker.io"]
    assert s.endpoints("localhost:5000") == ["http://localhost:5000"]
    assert s.endpoints("reg.lan:5000") == ["http://reg.lan:5000"]
    assert s.endpoints("ghcr.io") == ["https://ghcr.io"]
