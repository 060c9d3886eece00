"""Pulls from a hostile registry (tests/hostile_registry.py): manifests and configs that are
huge, nested 100,000 deep, of the wrong type, with lying digests or sizes; blobs redirected
elsewhere, answered slowly or streamed forever. Each: one clear line, a BerthError (never
INTERNAL), nothing stored or half-written, the image already there undisturbed.
(Corrupt blobs, cuts mid-blob, malformed manifests, unsupported layer and config types:
test_pull.py.)"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import BerthError, FailedPrecondition, InvalidArgument
from services.image.distribution import MANIFEST_LIMIT
from services.image.pull import pull
from services.image.registry import RegistryError, Settings
from services.image.store import ImageStore
from tests import images
from tests.hostile_registry import HostileRegistry
from tests.registry import TestImage as BuiltImage
from tests.registry import make_image, sha

DEEP = 100_000


def _state(store: ImageStore) -> dict[str, set[str]]:
    def ls(p: Path) -> set[str]:
        return set(os.listdir(p)) if p.exists() else set()
    return {"blobs": ls(store.root / "blobs" / "sha256"), "layers": ls(store.root / "layers"),
            "tmp": ls(store.root / "tmp")}


def _image(tag: str, big: int = 0) -> BuiltImage:
    files: dict[str, bytes | None] = {"app": None, "app/tag.txt": tag.encode()}
    if big:
        files["app/blob.bin"] = os.urandom(big)
    return make_image([images.layer_tar(files)])


@pytest.fixture
def reg() -> Iterator[HostileRegistry]:
    r = HostileRegistry()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def bystander(reg: HostileRegistry, store: ImageStore) -> Iterator[None]:
    """A good image pulled first: whatever the hostile pull does, it stays as it was."""
    good = _image("bystander")
    reg.put_image("good/app", "1", good)
    pull(store, f"{reg.host}/good/app:1", settings=Settings())
    before = _state(store)
    yield
    assert [r.row.id for r in store.list()] == [good.id]
    assert _state(store) == before  # no new blob or layer; scratch space empty


def refused(store: ImageStore, ref: str, kind: type[BerthError], *words: str,
            settings: Settings | None = None) -> str:
    with pytest.raises(BerthError) as info:
        pull(store, ref, settings=settings or Settings())
    msg = str(info.value)
    assert isinstance(info.value, kind), f"{type(info.value).__name__}: {msg}"
    assert "\n" not in msg and msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def _doctored(img: BuiltImage, edit) -> bytes:  # noqa: ANN001
    doc = json.loads(img.manifest)
    edit(doc)
    return json.dumps(doc).encode()


# ---- manifests ------------------------------------------------------------------------


def test_manifest_larger_than_the_limit(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img = _image("huge")
    huge = _doctored(img, lambda d: d.update(annotations={"padding": "x" * MANIFEST_LIMIT}))
    reg.put_image("huge/app", "1", img, manifest=huge)
    refused(store, f"{reg.host}/huge/app:1", RegistryError, f"larger than {MANIFEST_LIMIT} bytes")


def test_manifest_nested_100000_deep(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img = _image("deep")
    reg.put_image("deep/app", "1", img, manifest=b'{"schemaVersion": 2, "layers": ' + b"[" * DEEP + b"]" * DEEP + b"}")
    refused(store, f"{reg.host}/deep/app:1", InvalidArgument, "malformed manifest", "nested too deeply")


def test_config_nested_100000_deep(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img = _image("deep-config")
    config = b'{"rootfs": {"type": "layers", "diff_ids": []}, "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    manifest = _doctored(img, lambda d: d.update(layers=[], config={**d["config"], "digest": sha(config),
                                                                     "size": len(config)}))
    reg.put_image("deep/config", "1", img, manifest=manifest)
    reg.blobs[sha(config)] = config
    refused(store, f"{reg.host}/deep/config:1", InvalidArgument, "image config", "nested too deeply")


@pytest.mark.parametrize(("body", "ctype", "words"), [
    (b"<html><body>Please log in to the hotel wifi</body></html>", "text/html", ("malformed manifest",)),
    (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.layer.v1.tar", "layers": []}',
     "application/vnd.oci.image.layer.v1.tar", ("unsupported media type",)),
    (b'["schemaVersion", 2]', "application/vnd.oci.image.manifest.v1+json", ("not a JSON object",)),
])
def test_manifest_of_the_wrong_media_type(reg: HostileRegistry, store: ImageStore, bystander: None, body: bytes,
                                          ctype: str, words: tuple[str, ...]) -> None:
    reg.put_image("wrong/app", "1", _image("wrong"), manifest=body, content_type=ctype)
    refused(store, f"{reg.host}/wrong/app:1", InvalidArgument, *words)


def test_manifest_digests_that_do_not_match(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img, other = _image("asked"), _image("served")
    digest = sha(img.manifest)
    reg.manifests[f"lie/app:{digest}"] = (other.manifest, "application/vnd.oci.image.manifest.v1+json")
    reg.blobs.update(other.blobs)
    refused(store, f"{reg.host}/lie/app@{digest}", InvalidArgument, f"digest mismatch for manifest {digest}")
    # By tag, the registry's own Docker-Content-Digest header must match what it sent.
    reg.put_image("lie/app", "1", img)
    reg.digest_header["lie/app:1"] = sha(other.manifest)
    refused(store, f"{reg.host}/lie/app:1", InvalidArgument, f"digest mismatch for manifest {sha(other.manifest)}")


def test_config_whose_bytes_do_not_match_its_digest(reg: HostileRegistry, store: ImageStore,
                                                    bystander: None) -> None:
    img = _image("config-lie")
    reg.put_image("lie/config", "1", img)
    good = reg.blobs[img.id]
    reg.blobs[img.id] = good.replace(b'"os": "linux"', b'"os": "LINUX"')  # same size, other bytes
    refused(store, f"{reg.host}/lie/config:1", InvalidArgument, f"digest mismatch for blob {img.id}")


# ---- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "size", "kind", "words"), [
    ("config", -1, InvalidArgument, ("config has an invalid size -1",)),
    ("layer", -1, InvalidArgument, ("layers[0] has an invalid size -1",)),
    ("config", 2**63, InvalidArgument, ("config has an invalid size 9223372036854775808",)),
    ("layer", 2**63, InvalidArgument, ("layers[0] has an invalid size 9223372036854775808",)),
    ("layer", 2**64 + 5, InvalidArgument, ("invalid size",)),
    ("config", 100 << 20, InvalidArgument, ("is too large (104857600 bytes)",)),
    ("layer", 2**63 - 1, RegistryError, ("its descriptor says 9223372036854775807",)),
    ("layer", 0, RegistryError, ("its descriptor says 0",)),
    ("layer", 7, RegistryError, ("its descriptor says 7",)),
    ("config", 7, RegistryError, ("its descriptor says 7",)),
])
def test_descriptor_sizes_that_lie(reg: HostileRegistry, store: ImageStore, bystander: None, where: str,
                                   size: int, kind: type[BerthError], words: tuple[str, ...]) -> None:
    img = _image(f"size-{where}-{size}")

    def edit(doc: dict) -> None:
        (doc["config"] if where == "config" else doc["layers"][0])["size"] = size

    reg.put_image("sizes/app", "1", img, manifest=_doctored(img, edit))
    refused(store, f"{reg.host}/sizes/app:1", kind, *words)


# ---- redirects ----------------------------------------------------------------------------


@pytest.fixture
def elsewhere() -> Iterator[HostileRegistry]:
    """Another host (127.0.0.2) holding the blobs, as a CDN would."""
    r = HostileRegistry(bind="127.0.0.2")
    try:
        yield r
    finally:
        r.close()


def test_blob_redirected_to_another_host_gets_no_credentials(elsewhere: HostileRegistry, store: ImageStore) -> None:
    reg = HostileRegistry(basic_auth=("alice", "s3cret"))
    try:
        from services.image.registry import Credentials

        img = _image("cdn")
        reg.put_image("cdn/app", "1", img)
        for digest in img.blobs:
            reg.redirects[digest] = f"http://{elsewhere.host}/v2/cdn/app/blobs/{digest}?sig=abc"
        elsewhere.blobs.update(img.blobs)
        out = pull(store, f"{reg.host}/cdn/app:1", creds=Credentials("alice", "s3cret"), settings=Settings())
        assert out.image_id == img.id
        assert reg.seen("/manifests/") and all("Authorization" in r.headers for r in reg.seen("/manifests/")[1:])
        fetched = elsewhere.seen("/blobs/")
        assert {r.path.split("/blobs/")[1].split("?")[0] for r in fetched} == set(img.blobs)
        assert not [r for r in fetched if "Authorization" in r.headers], "credentials sent to another host"
    finally:
        reg.close()


def test_redirect_outside_allowed_registries_is_refused(reg: HostileRegistry, elsewhere: HostileRegistry,
                                                        store: ImageStore, bystander: None) -> None:
    img = _image("not-allowed")
    reg.put_image("away/app", "1", img)
    for digest in img.blobs:
        reg.redirects[digest] = f"http://{elsewhere.host}/v2/away/app/blobs/{digest}"
    elsewhere.blobs.update(img.blobs)
    allowed = Settings(allowed=("127.0.0.1", "localhost"))
    refused(store, f"{reg.host}/away/app:1", FailedPrecondition, "refusing to follow the redirect to",
            f"{elsewhere.host} is not in allowed_registries (127.0.0.1, localhost)", settings=allowed)
    assert elsewhere.requests == []  # never contacted


def test_redirect_to_a_non_http_url_is_refused(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img = _image("file-url")
    reg.put_image("file/app", "1", img)
    for digest in img.blobs:
        reg.redirects[digest] = "file:///etc/passwd"
    refused(store, f"{reg.host}/file/app:1", FailedPrecondition, "not an http(s) URL")


# ---- slow and endless registries ----------------------------------------------------------


def test_registry_that_never_answers(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    reg.put_image("slow/app", "1", _image("slow"))
    reg.stall.add("/v2/slow/app/manifests/")
    start = time.monotonic()
    refused(store, f"{reg.host}/slow/app:1", RegistryError, reg.host, "did not answer within 1s",
            "registry_timeout", settings=Settings(timeout=1))
    assert time.monotonic() - start < 5


def test_blob_that_goes_silent_mid_download(reg: HostileRegistry, store: ImageStore, bystander: None) -> None:
    img = _image("silent", big=1 << 20)
    reg.put_image("silent/app", "1", img)
    layer = next(d for d in img.blobs if d != img.id)
    reg.stall_after[layer] = 64 << 10
    start = time.monotonic()
    refused(store, f"{reg.host}/silent/app:1", RegistryError, layer, reg.host, "registry_timeout",
            settings=Settings(timeout=1))
    assert time.monotonic() - start < 15  # a first try and the resumes, a second each


def test_timeout_is_configurable() -> None:
    assert Settings.load({"BERTH_REGISTRY_TIMEOUT": "2.5", "BERTH_CONFIG": "/nonexistent"}).timeout == 2.5
    assert Settings.load({"BERTH_CONFIG": "/nonexistent"}).timeout == 60
    with pytest.raises(FailedPrecondition, match="invalid registry_timeout 'soon'"):
        Settings.load({"BERTH_REGISTRY_TIMEOUT": "soon", "BERTH_CONFIG": "/nonexistent"})


@pytest.mark.parametrize("which", ["layer", "config"])
def test_blob_streamed_forever(reg: HostileRegistry, store: ImageStore, bystander: None, which: str) -> None:
    img = _image(f"forever-{which}")
    reg.put_image("forever/app", "1", img)
    digest = img.id if which == "config" else next(d for d in img.blobs if d != img.id)
    reg.forever.add(digest)
    refused(store, f"{reg.host}/forever/app:1", BerthError, digest)
