"""`load` of hostile archives, each built here: a clean INVALID_ARGUMENT, never INTERNAL, and
nothing stored, nothing half-written, no other image disturbed."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import images
from tests.integration.image.helpers import load, rpc_error, state

DEEP = 100_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """A tar of (name, data, symlink target) members, in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data or b"")
                tar.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def docker_save(layer_names: list[str], *, config: bytes | None = None, config_name: str = "",
                extra: list[tuple[str, bytes | None, str]] | None = None,
                layers: list[bytes] | None = None) -> bytes:
    """A docker-save archive whose manifest.json names `layer_names` (which may lie)."""
    layers = layers if layers is not None else [images.layer_tar({"hostile.txt": b"x"})]
    config = config if config is not None else images.image_config([sha(layer) for layer in layers])
    config_name = config_name or sha(config)[7:] + ".json"
    members: list[tuple[str, bytes | None, str]] = [(f"real{i}/layer.tar", layer, "") for i, layer in enumerate(layers)]
    members.append((config_name, config, ""))
    members += extra or []
    manifest = [{"Config": config_name, "RepoTags": ["hostile:1"], "Layers": layer_names}]
    members.append(("manifest.json", json.dumps(manifest).encode(), ""))
    return archive(members)


@pytest.fixture
def bystander(stub, image_dir: Path) -> Iterator[dict[str, set[str]]]:  # noqa: ANN001
    """An image loaded before the hostile archive: it must come through untouched."""
    load(stub, images.docker_save_archive([images.layer_tar({"keep.txt": b"keep"})], "bystander:1"))
    before = state(image_dir)
    yield before
    from berth.image.v1 import image_pb2

    names = [t for img in stub.List(image_pb2.ListImagesRequest()).images for t in img.repo_tags]
    assert names == ["bystander:1"]
    assert state(image_dir) == before  # no new blob, layer or snapshot; scratch empty


def refused(stub, data: bytes, *words: str) -> str:  # noqa: ANN001
    err = rpc_error(load, stub, data)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    msg = err.details() or ""
    assert "\n" not in msg and "Traceback" not in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def test_manifest_json_nested_100000_deep(stub, bystander) -> None:  # noqa: ANN001
    data = archive([("manifest.json", b"[" * DEEP + b"]" * DEEP, "")])
    refused(stub, data, "manifest.json", "nested too deeply")


def test_index_json_nested_100000_deep(stub, bystander) -> None:  # noqa: ANN001
    data = archive([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}', ""),
                    ("index.json", b'{"manifests":' + b"[" * DEEP + b"]" * DEEP + b"}", "")])
    refused(stub, data, "index.json", "nested too deeply")


def test_config_nested_100000_deep(stub, bystander) -> None:  # noqa: ANN001
    config = b'{"rootfs": {"type": "layers", "diff_ids": []}, "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    refused(stub, docker_save([], config=config, layers=[]), "nested too deeply")


def test_manifest_json_larger_than_the_limit(stub, bystander) -> None:  # noqa: ANN001
    from services.image.archive import JSON_LIMIT

    huge = json.dumps([{"Config": "c.json", "Layers": [], "Comment": "x" * (JSON_LIMIT + 1)}]).encode()
    refused(stub, archive([("manifest.json", huge, "")]), "manifest.json is too large")


@pytest.mark.parametrize("path", ["../../etc/passwd", "real0/../../../etc/passwd", "../real0/layer.tar"])
def test_layer_path_outside_the_archive(stub, bystander, path: str) -> None:  # noqa: ANN001
    refused(stub, docker_save([path]), repr(path), "points outside the archive")


def test_absolute_layer_path_is_looked_up_inside(stub, bystander) -> None:  # noqa: ANN001
    """`/etc/passwd` is the archive's own etc/passwd, which it lacks: the host file is never read."""
    refused(stub, docker_save(["/etc/passwd"]), "/etc/passwd is missing")


def test_config_outside_the_archive(stub, bystander) -> None:  # noqa: ANN001
    layer = images.layer_tar({"hostile.txt": b"x"})
    data = archive([("real0/layer.tar", layer, ""),
                    ("manifest.json", json.dumps([{"Config": "../../../etc/passwd", "RepoTags": ["hostile:1"],
                                                   "Layers": ["real0/layer.tar"]}]).encode(), "")])
    refused(stub, data, "points outside the archive")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../etc/passwd", "missing/layer.tar",
                                    "evil/layer.tar"])
def test_symlink_member_named_like_a_layer(stub, bystander, target: str) -> None:  # noqa: ANN001
    """A layer that is a symlink out of the archive (or to nothing, or to itself) is refused;
    nothing outside the archive is ever read."""
    data = docker_save(["evil/layer.tar"], extra=[("evil/layer.tar", None, target)])
    refused(stub, data, "evil/layer.tar", "is not a regular file")


def test_symlink_to_a_layer_inside_the_archive_is_followed(stub, bystander, image_dir: Path) -> None:  # noqa: ANN001
    """Docker's own archives link duplicate layers: that stays allowed (and digest-checked)."""
    data = docker_save(["dup/layer.tar"], extra=[("dup/layer.tar", None, "../real0/layer.tar")])
    from berth.image.v1 import image_pb2

    resp = load(stub, data)
    assert resp.loaded == ["Loaded image: hostile:1"]
    stub.Remove(image_pb2.RemoveImageRequest(reference="hostile:1", force=True))


def test_config_digest_mismatch(stub, bystander) -> None:  # noqa: ANN001
    """Docker 25+ names the config blobs/sha256/<digest>: the content must hash to it."""
    layer = images.layer_tar({"hostile.txt": b"x"})
    config = images.image_config([sha(layer)])
    liar = "blobs/sha256/" + hashlib.sha256(b"something else").hexdigest()
    refused(stub, docker_save(["real0/layer.tar"], config=config, config_name=liar, layers=[layer]),
            "digest")


def test_oci_config_digest_mismatch(stub, bystander) -> None:  # noqa: ANN001
    layer = images.layer_tar({"hostile.txt": b"x"})
    config = images.image_config([sha(layer)])
    other = images.image_config([sha(layer)], cmd=["evil"])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                    "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
         "size": len(manifest), "annotations": {"io.containerd.image.name": "docker.io/library/hostile:1"}}]})
    blob = "blobs/sha256/"
    data = archive([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}', ""),
                    (blob + sha(config)[7:], other, ""),  # the config's name, another config's bytes
                    (blob + sha(layer)[7:], layer, ""),
                    (blob + sha(manifest)[7:], manifest, ""),
                    ("index.json", index.encode(), "")])
    refused(stub, data, f"digest mismatch for blob {sha(config)}")
