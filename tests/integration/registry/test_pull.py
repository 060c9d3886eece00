"""Pull from a real registry (Debian's docker-registry), images pushed independently with skopeo."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.image.pull import LayerEvent, StatusLine, pull
from services.image.registry import RegistryError, Settings, Unauthorized
from services.image.store import ImageStore
from tests import images
from tests.integration.registry.conftest import ALICE
from tests.registry import USERS as _USERS
from tests.registry import (
    FaultProxy,
    Registry,
    free_port,
    make_image,
    make_index,
    push_image,
    push_index,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def _layers(tag: str, big: int = 0) -> list[bytes]:
    files: dict[str, bytes | None] = {"app": None, "app/tag.txt": tag.encode()}
    if big:
        files["app/blob.bin"] = os.urandom(big)
    return [images.busybox_rootfs_bytes(), images.layer_tar(files)]


def _state(store: ImageStore) -> dict[str, set[str]]:
    def ls(p: Path) -> set[str]:
        return set(os.listdir(p)) if p.exists() else set()
    return {"blobs": ls(store.root / "blobs" / "sha256"), "layers": ls(store.root / "layers"),
            "tmp": ls(store.root / "tmp")}


def _layer_file(store: ImageStore, image_ref: str, rel: str) -> bytes:
    rec = store.inspect(image_ref)
    from services.image.layers import chain_ids

    top = chain_ids(rec.row.diff_ids)[-1]
    return (store.layers.path(top) / rel).read_bytes()


@pytest.mark.parametrize(("compression", "docker_types"), [("gzip", False), ("zstd", False), ("", False),
                                                           ("gzip", True)])
def test_pull_layer_formats(registry: Registry, store: ImageStore, tmp_path: Path, compression: str,
                            docker_types: bool) -> None:
    name = f"{registry.host}/formats/{compression or 'plain'}{'-docker' if docker_types else ''}:1"
    img = make_image(_layers(name), compression=compression, docker_types=docker_types)
    push_image(tmp_path, name, img)
    events: list[object] = []
    out = pull(store, name, progress=events.append)
    assert out.image_id == img.id and out.digest == img.digest and not out.up_to_date
    rec = store.inspect(name)
    assert rec.row.diff_ids == img.diff_ids
    assert rec.row.manifest_digest == img.digest
    assert rec.digests == [name.rsplit(":", 1)[0] + "@" + img.digest]
    assert _layer_file(store, name, "app/tag.txt") == name.encode()
    assert (store.layers.path(img.diff_ids[0]) / "bin" / "busybox").is_file()
    statuses = [e.status for e in events if isinstance(e, LayerEvent)]
    assert statuses.count("Pull complete") == 2
    assert any(isinstance(e, StatusLine) and e.text.startswith("Status: Downloaded newer image") for e in events)
    assert _state(store)["tmp"] == set()
    # Every stored blob is exactly what the registry serves, digest for digest.
    for digest in img.blobs:
        assert store.content.exists(digest)


def test_pull_index_picks_platform(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    amd = make_image(_layers("amd64"), arch="amd64")
    arm = make_image(_layers("arm64"), arch="arm64", variant="v8")
    armv7 = make_image(_layers("armv7"), arch="arm", variant="v7")
    index = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                        (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
                        (armv7, {"os": "linux", "architecture": "arm", "variant": "v7"})])
    name = f"{registry.host}/multi/app:1"
    index_digest = push_index(tmp_path, name, index, [amd, arm, armv7])

    out = pull(store, name, platform="linux/arm64")
    assert out.image_id == arm.id and out.digest == index_digest
    assert store.inspect(name).digests == [f"{registry.host}/multi/app@{index_digest}"]
    assert _layer_file(store, name, "app/tag.txt") == b"arm64"
    out = pull(store, name, platform="linux/arm")  # arm means v7
    assert out.image_id == armv7.id
    with pytest.raises(InvalidArgument, match=r"no matching manifest for linux/s390x.*available: linux/amd64, "
                                              r"linux/arm/v7, linux/arm64"):
        pull(store, name, platform="linux/s390x")
    out = pull(store, name)  # the host's platform
    from services.image.imageconfig import host_arch

    if host_arch() == "amd64":
        assert out.image_id == amd.id


def test_pull_by_digest_and_idempotent(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/bydigest/app"
    img = make_image(_layers("digest"))
    push_image(tmp_path, f"{name}:1", img)
    proxy = FaultProxy(registry.port)
    try:
        via = f"{proxy.host}/bydigest/app"
        out = pull(store, f"{via}@{img.digest}")
        assert out.image_id == img.id
        rec = store.inspect(f"{via}@{img.digest}")
        assert rec.tags == [] and rec.digests == [f"{via}@{img.digest}"]
        gets = proxy.blob_gets
        before = _state(store)
        events: list[object] = []
        again = pull(store, f"{via}@{img.digest}", progress=events.append)
        assert again.up_to_date
        assert proxy.blob_gets == gets  # nothing downloaded twice
        assert _state(store) == before
        # A tag for the same image: only the tag is new.
        out = pull(store, f"{via}:1")
        assert out.up_to_date and store.inspect(f"{via}:1").row.id == img.id
    finally:
        proxy.close()


def test_shared_layers_skip_download(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    base = images.busybox_rootfs_bytes()
    one = make_image([base, images.layer_tar({"one": b"1"})])
    two = make_image([base, images.layer_tar({"two": b"2"})])
    push_image(tmp_path, f"{registry.host}/shared/one:1", one)
    push_image(tmp_path, f"{registry.host}/shared/two:1", two)
    pull(store, f"{registry.host}/shared/one:1")
    events: list[object] = []
    pull(store, f"{registry.host}/shared/two:1", progress=events.append)
    statuses = {e.id: e.status for e in events if isinstance(e, LayerEvent)}
    base_blob = next(iter(d for d in one.blobs if one.blobs[d] != one.config and d in two.blobs))
    assert statuses[base_blob[7:19]] == "Already exists"


def test_resumes_when_connection_breaks_mid_blob(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/resume/app:1"
    img = make_image(_layers("resume", big=3 << 20))
    push_image(tmp_path, name, img)
    proxy = FaultProxy(registry.port, cut_after=1 << 20, cuts=1)
    try:
        out = pull(store, f"{proxy.host}/resume/app:1")
        assert out.image_id == img.id
        assert proxy.ranges and proxy.ranges[0].startswith("bytes=")  # it asked for the rest only
    finally:
        proxy.close()


def test_registry_closing_mid_blob_fails_cleanly(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/cut/app:1"
    img = make_image(_layers("cut", big=2 << 20))
    push_image(tmp_path, name, img)
    before = _state(store)
    proxy = FaultProxy(registry.port, cut_after=256 << 10, cuts=1000)
    try:
        with pytest.raises(RegistryError, match=r"connection closed after \d+ of \d+ bytes") as info:
            pull(store, f"{proxy.host}/cut/app:1")
        assert "\n" not in str(info.value)
    finally:
        proxy.close()
    assert _state(store) == before
    assert store.list() == []


def test_digest_mismatch_stores_nothing_and_keeps_other_images(registry: Registry, store: ImageStore,
                                                               tmp_path: Path) -> None:
    good = make_image(_layers("good"))
    push_image(tmp_path, f"{registry.host}/mismatch/good:1", good)
    pull(store, f"{registry.host}/mismatch/good:1")
    before = _state(store)
    bad = make_image(_layers("bad-" + "x" * 10))
    push_image(tmp_path, f"{registry.host}/mismatch/bad:1", bad)
    top_layer = [d for d in bad.blobs if d != bad.id and len(bad.blobs[d]) < 10000][0]
    registry.corrupt_blob(top_layer)
    with pytest.raises(InvalidArgument, match=f"error pulling layer {top_layer}: invalid layer tar"):
        pull(store, f"{registry.host}/mismatch/bad:1")
    assert _state(store) == before
    # An uncompressed layer with one byte changed is still a valid tar: the digests catch it.
    plain = make_image(_layers("plain-" + "y" * 10), compression="")
    push_image(tmp_path, f"{registry.host}/mismatch/plain:1", plain)
    top_plain = [d for d in plain.blobs if d != plain.id and len(plain.blobs[d]) < 100000][0]
    registry.corrupt_blob(top_plain)
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        pull(store, f"{registry.host}/mismatch/plain:1")
    assert _state(store) == before
    assert [r.row.id for r in store.list()] == [good.id]
    assert _layer_file(store, f"{registry.host}/mismatch/good:1", "app/tag.txt") == b"good"


def test_manifest_not_found(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(NotFound, match=r"manifest for 127\.0\.0\.1:\d+/nope/app:1 not found: manifest unknown"):
        pull(store, f"{registry.host}/nope/app:1")


def test_unsupported_media_type_and_malformed_manifests(registry: Registry, store: ImageStore,
                                                        tmp_path: Path) -> None:
    img = make_image(_layers("helm"))
    push_image(tmp_path, f"{registry.host}/odd/base:1", img)
    import json

    doc = json.loads(img.manifest)
    doc["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    registry.put_raw_manifest("odd/base", "helm", json.dumps(doc).encode())
    with pytest.raises(InvalidArgument, match="unsupported media type 'application/vnd.cncf.helm.config.v1"):
        pull(store, f"{registry.host}/odd/base:helm")
    doc = json.loads(img.manifest)
    doc["layers"][0]["digest"] = "sha256:not-a-digest"
    registry.put_raw_manifest("odd/base", "baddigest", json.dumps(doc).encode())
    with pytest.raises(InvalidArgument, match="malformed manifest: layers.0. has an invalid digest"):
        pull(store, f"{registry.host}/odd/base:baddigest")
    doc = json.loads(img.manifest)
    doc["layers"] = doc["layers"][:1]  # the config names two diff ids
    registry.put_raw_manifest("odd/base", "short", json.dumps(doc).encode())
    with pytest.raises(InvalidArgument, match="malformed manifest: 1 layers but 2 diff_ids"):
        pull(store, f"{registry.host}/odd/base:short")
    doc = json.loads(img.manifest)
    doc["layers"][0]["mediaType"] = "application/x-tar-but-not-really"
    registry.put_raw_manifest("odd/base", "layertype", json.dumps(doc).encode())
    with pytest.raises(InvalidArgument, match="unsupported media type 'application/x-tar-but-not-really'"):
        pull(store, f"{registry.host}/odd/base:layertype")
    assert store.list() == [] and _state(store)["blobs"] == set()


def test_connection_refused(store: ImageStore) -> None:
    port = free_port()
    with pytest.raises(RegistryError, match=rf'Get "http://127\.0\.0\.1:{port}/v2/x/manifests/1": dial tcp '
                                            rf"127\.0\.0\.1:{port}: connect: connection refused"):
        pull(store, f"127.0.0.1:{port}/x:1")


def test_unknown_host_without_network(tmp_path: Path) -> None:
    """In an empty network namespace: the lookup fails at once and no packet leaves the host."""
    code = ("import sys; from pathlib import Path; from services.image.store import ImageStore; "
            "from services.image.pull import pull; from services.common.errors import BerthError\n"
            f"s = ImageStore(Path({str(tmp_path)!r}) / 'i', 'sqlite:///{tmp_path}/db')\n"
            "try:\n pull(s, 'registry.berth-test.invalid:5000/x:1')\n"
            "except BerthError as e:\n print(type(e).__name__, e); sys.exit(3)\n")
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=60)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith('RegistryError Get "https://registry.berth-test.invalid:5000/v2/x/manifests/1": '
                               "dial tcp: lookup registry.berth-test.invalid:")


def test_basic_auth(basic_registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{basic_registry.host}/private/app:1"
    img = make_image(_layers("basic"))
    push_image(tmp_path, name, img, creds=f"alice:{_USERS['alice']}")
    with pytest.raises(Unauthorized, match="pull access denied for .*private/app.*authentication required"):
        pull(store, name)
    from services.image.registry import Credentials

    with pytest.raises(Unauthorized, match="unauthorized"):
        pull(store, name, creds=Credentials("alice", "wrong"))
    assert pull(store, name, creds=ALICE).image_id == img.id


def test_token_auth(token_registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{token_registry.host}/tok/app:1"
    img = make_image(_layers("token"))
    push_image(tmp_path, name, img, creds=f"alice:{_USERS['alice']}")
    assert token_registry.token is not None
    token_registry.token.requests.clear()
    assert pull(store, name).image_id == img.id  # anonymous token, pull scope
    assert token_registry.token.requests[0]["scopes"] == ["repository:tok/app:pull"]
    assert token_registry.token.requests[0]["user"] == ""
    from services.image.registry import Credentials

    with pytest.raises(Unauthorized, match="incorrect username or password"):
        pull(ImageStore(tmp_path / "other", f"sqlite:///{tmp_path}/other.db"), name,
             creds=Credentials("alice", "wrong"))
    fresh = ImageStore(tmp_path / "third", f"sqlite:///{tmp_path}/third.db")
    token_registry.token.requests.clear()
    assert pull(fresh, name, creds=ALICE).image_id == img.id
    assert [r["user"] for r in token_registry.token.requests] == ["alice"]  # one token, reused for every blob


def test_docker_hub_mirror(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    """`busybox-mirror-test` means docker.io/library/…: with a mirror configured it comes from the mirror."""
    img = make_image(_layers("mirror"))
    push_image(tmp_path, f"{registry.host}/library/berth-mirror-test:1", img)
    settings = Settings(mirrors=(f"http://{registry.host}",))
    out = pull(store, "berth-mirror-test:1", settings=settings)
    assert out.image_id == img.id and out.reference == "berth-mirror-test:1"
    assert store.inspect("berth-mirror-test:1").tags == ["docker.io/library/berth-mirror-test:1"]


def test_cancel_leaves_nothing(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/cancel/app:1"
    img = make_image(_layers("cancel", big=4 << 20), compression="")
    push_image(tmp_path, name, img)
    proxy = FaultProxy(registry.port, rate=2 << 20)
    cancel = threading.Event()

    def on(event: object) -> None:
        if isinstance(event, LayerEvent) and event.status == "Downloading" and event.current > 0:
            cancel.set()

    try:
        from services.image.registry import Cancelled

        with pytest.raises(Cancelled):
            pull(store, f"{proxy.host}/cancel/app:1", progress=on, cancel=cancel)
    finally:
        proxy.close()
    assert store.list() == [] and _state(store) == {"blobs": set(), "layers": set(), "tmp": set()}
