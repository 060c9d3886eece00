"""ImageService over gRPC against the real service process."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2
from services.image.imageconfig import host_arch
from services.image.layers import chain_ids
from tests import images
from tests.integration.image.helpers import import_image, load, replace_member, rpc_error, state

BUSYBOX = images.busybox_rootfs_bytes()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def inspect(stub, ref: str) -> image_pb2.Image:  # noqa: ANN001
    return stub.Inspect(image_pb2.InspectImageRequest(reference=ref))


# ---- import -----------------------------------------------------------------------


def test_import_busybox(stub, image_dir: Path) -> None:  # noqa: ANN001
    img = import_image(stub, BUSYBOX, "busybox")
    assert img.id.startswith("sha256:") and list(img.repo_tags) == ["busybox:latest"]
    assert img.architecture == host_arch() and img.os == "linux"
    assert list(img.diff_ids) == [sha(BUSYBOX)]
    assert img.size > 1_000_000 and img.created_unix > 0
    assert not img.config.cmd and not img.config.env  # like docker import
    config = json.loads(img.config_json)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha(BUSYBOX)]}
    assert len(config["history"]) == 1 and config["config"] == {}
    assert sha(img.config_json.encode()) == img.id
    blobs = image_dir / "blobs/sha256"
    assert (blobs / sha(BUSYBOX)[7:]).read_bytes() == BUSYBOX  # layer stored uncompressed
    manifest = json.loads((blobs / img.manifest_digest[7:]).read_bytes())
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert manifest["config"]["digest"] == img.id
    assert (image_dir / "layers" / sha(BUSYBOX)[7:] / "bin/busybox").is_file()
    assert inspect(stub, "docker.io/library/busybox:latest").id == img.id


def test_import_gzip_shares_the_layer_and_retag_moves(stub, image_dir: Path) -> None:  # noqa: ANN001
    first = import_image(stub, BUSYBOX, "bb:1")
    layers = state(image_dir)["layers"]
    second = import_image(stub, gzip.compress(BUSYBOX), "bb:1")
    assert list(second.diff_ids) == list(first.diff_ids)
    assert state(image_dir)["layers"] == layers
    assert inspect(stub, "bb:1").id == second.id
    assert list(inspect(stub, first.id).repo_tags) == []  # dangling, like Docker


def test_import_corrupt_leaves_nothing(stub, image_dir: Path) -> None:  # noqa: ANN001
    before = state(image_dir)
    err = rpc_error(import_image, stub, gzip.compress(BUSYBOX)[:-5000], "broken")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert state(image_dir) == before
    assert rpc_error(inspect, stub, "broken").code() == grpc.StatusCode.NOT_FOUND


# ---- load -------------------------------------------------------------------------


def test_load_docker_save(stub) -> None:  # noqa: ANN001
    layers = [images.layer_tar({"etc": None, "etc/a": b"a"}), gzip.compress(images.layer_tar({"b": b"b"}))]
    archive = images.docker_save_archive(layers, "me/app:1", cmd=["/bin/app", "-v"])
    # docker_save_archive hashes what it is given: make diff_ids the uncompressed digests
    archive = _fix_docker_save_diff_ids(archive, [images.layer_tar({"etc": None, "etc/a": b"a"}),
                                                  images.layer_tar({"b": b"b"})])
    resp = load(stub, archive)
    assert list(resp.loaded) == ["Loaded image: me/app:1"]
    img = inspect(stub, "me/app:1")
    assert list(img.config.cmd) == ["/bin/app", "-v"] and img.config.env
    assert len(img.diff_ids) == 2 and img.size == 2


def _fix_docker_save_diff_ids(archive: bytes, plain_layers: list[bytes]) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        config_name = manifest[0]["Config"]
        config = json.loads(tar.extractfile(config_name).read())
    config["rootfs"]["diff_ids"] = [sha(layer) for layer in plain_layers]
    return replace_member(archive, config_name, json.dumps(config).encode())


def test_load_oci_layout(stub) -> None:  # noqa: ANN001
    layers = [images.layer_tar({"a": b"1"}), images.layer_tar({"b": b"2"})]
    resp = load(stub, images.oci_layout_archive(layers, "127.0.0.1:5000/me/bb:2", cmd=["echo", "hi"]))
    assert list(resp.loaded) == ["Loaded image: 127.0.0.1:5000/me/bb:2"]
    img = resp.images[0]
    assert list(img.repo_tags) == ["127.0.0.1:5000/me/bb:2"]
    assert list(img.config.cmd) == ["echo", "hi"] and list(img.diff_ids) == [sha(x) for x in layers]
    assert img.manifest_digest.startswith("sha256:")


def test_load_oci_tag_only_ref_name_is_untagged(stub) -> None:  # noqa: ANN001
    resp = load(stub, images.oci_layout_archive([images.layer_tar({"c": b"3"})], "latest"))
    assert list(resp.loaded) == [f"Loaded image ID: {resp.images[0].id}"]
    assert list(resp.images[0].repo_tags) == []


def test_load_with_wrong_diff_id_changes_nothing(stub, image_dir: Path) -> None:  # noqa: ANN001
    import_image(stub, BUSYBOX, "keep")
    before, count = state(image_dir), len(stub.List(image_pb2.ListImagesRequest()).images)
    good, bad = images.layer_tar({"ok": b"ok"}), images.layer_tar({"evil": b"evil"})
    archive = images.docker_save_archive([good, images.layer_tar({"x": b"x"})], "bad:1")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        second = json.loads(tar.extractfile("manifest.json").read())[0]["Layers"][1]
    err = rpc_error(load, stub, replace_member(archive, second, bad))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256:" in err.details() and sha(images.layer_tar({"x": b"x"})) in err.details()
    assert state(image_dir) == before
    assert len(stub.List(image_pb2.ListImagesRequest()).images) == count
    assert list(inspect(stub, "keep").repo_tags) == ["keep:latest"]


def test_load_oci_blob_digest_mismatch(stub, image_dir: Path) -> None:  # noqa: ANN001
    before = state(image_dir)
    layer = images.layer_tar({"z": b"z"})
    archive = images.oci_layout_archive([layer], "oci/bad:1")
    gz_digest = sha(gzip.compress(layer, mtime=0))
    err = rpc_error(load, stub, replace_member(archive, "blobs/sha256/" + gz_digest[7:],
                                               gzip.compress(layer, mtime=1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and gz_digest in err.details()
    assert state(image_dir) == before


@pytest.mark.parametrize("data", [b"definitely not a tar", images.layer_tar({"just": b"files"})])
def test_load_not_an_image_archive(stub, image_dir: Path, data: bytes) -> None:  # noqa: ANN001
    before = state(image_dir)
    err = rpc_error(load, stub, data)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a docker-save or OCI image-layout archive" in err.details() and "\n" not in err.details()
    assert state(image_dir) == before


def test_shared_base_layer_is_unpacked_once(stub, image_dir: Path) -> None:  # noqa: ANN001
    base, a, b = (images.layer_tar({n: n.encode()}) for n in ("base", "a", "b"))
    before = state(image_dir)["layers"]
    load(stub, images.docker_save_archive([base, a], "shared:a"))
    base_dir = image_dir / "layers" / sha(base)[7:]
    inode = base_dir.stat().st_ino
    load(stub, images.oci_layout_archive([base, b], "docker.io/library/shared:b"))
    added = state(image_dir)["layers"] - before
    expected = {c[7:] for c in chain_ids([sha(base), sha(a)]) + chain_ids([sha(base), sha(b)])}
    assert added == expected and len(added) == 3
    assert base_dir.stat().st_ino == inode
    # removing one image keeps the shared layer for the other
    stub.Remove(image_pb2.RemoveImageRequest(reference="shared:a"))
    assert base_dir.is_dir() and not (image_dir / "layers" / chain_ids([sha(base), sha(a)])[1][7:]).exists()


def test_concurrent_imports(stub, image_dir: Path) -> None:  # noqa: ANN001
    before = state(image_dir)["layers"]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            import_image(stub, BUSYBOX, f"conc:{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state(image_dir)["layers"] - before == {sha(BUSYBOX)[7:]}
    assert state(image_dir)["tmp"] == set()
    assert len(stub.List(image_pb2.ListImagesRequest(reference="conc")).images) == 4


# ---- list, inspect, tag ------------------------------------------------------------


def test_list_newest_first_and_filter(stub) -> None:  # noqa: ANN001
    old = load(stub, images.docker_save_archive([images.layer_tar({"o": b"o"})], "list/old:1")).images[0]
    new = import_image(stub, BUSYBOX, "list/new:1")
    ids = [i.id for i in stub.List(image_pb2.ListImagesRequest()).images]
    assert ids.index(new.id) < ids.index(old.id)
    assert [i.id for i in stub.List(image_pb2.ListImagesRequest(reference="list/old")).images] == [old.id]
    assert [i.id for i in stub.List(image_pb2.ListImagesRequest(reference="list/new:1")).images] == [new.id]
    assert not stub.List(image_pb2.ListImagesRequest(reference="list/new:2")).images


def test_inspect_by_id_forms_and_tag(stub) -> None:  # noqa: ANN001
    img = import_image(stub, BUSYBOX)
    hexid = img.id[7:]
    for ref in (img.id, hexid, hexid[:12], "sha256:" + hexid[:12]):
        assert inspect(stub, ref).id == img.id
    tagged = stub.Tag(image_pb2.TagImageRequest(source=hexid[:12], target="127.0.0.1:5000/me/bb:2"))
    assert list(tagged.repo_tags) == ["127.0.0.1:5000/me/bb:2"]
    stub.Tag(image_pb2.TagImageRequest(source="127.0.0.1:5000/me/bb:2", target="bb"))
    assert list(inspect(stub, "bb").repo_tags) == ["127.0.0.1:5000/me/bb:2", "bb:latest"]


@pytest.mark.parametrize(("call", "arg", "code"), [
    ("Inspect", "Bad/Name", grpc.StatusCode.INVALID_ARGUMENT),
    ("Inspect", "../../etc", grpc.StatusCode.INVALID_ARGUMENT),
    ("Inspect", "sha256:nothex", grpc.StatusCode.INVALID_ARGUMENT),
    ("Inspect", "nosuchimage", grpc.StatusCode.NOT_FOUND),
    ("Inspect", "sha256:" + "0" * 64, grpc.StatusCode.NOT_FOUND),
    ("Remove", "nosuchimage:1", grpc.StatusCode.NOT_FOUND),
    ("Remove", "a:b:c", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_references(stub, call: str, arg: str, code: grpc.StatusCode) -> None:  # noqa: ANN001
    req = image_pb2.InspectImageRequest(reference=arg) if call == "Inspect" else \
        image_pb2.RemoveImageRequest(reference=arg)
    err = rpc_error(getattr(stub, call), req)
    assert err.code() == code
    if code == grpc.StatusCode.NOT_FOUND:
        assert err.details() == f"No such image: {arg}"
    else:
        assert err.details()


def test_bad_tag_and_import_refs(stub) -> None:  # noqa: ANN001
    img = import_image(stub, BUSYBOX, "good")
    err = rpc_error(stub.Tag, image_pb2.TagImageRequest(source=img.id, target="BAD:x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid reference format" in err.details()
    err = rpc_error(stub.Tag, image_pb2.TagImageRequest(source="missing", target="ok"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(import_image, stub, BUSYBOX, "x::y")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- snapshots and rmi --------------------------------------------------------------


def _prepare(stub, key: str, image: str) -> image_pb2.Snapshot:  # noqa: ANN001
    return stub.PrepareSnapshot(image_pb2.PrepareSnapshotRequest(key=key, image=image))


def test_snapshot_keys_and_errors(stub, image_dir: Path) -> None:  # noqa: ANN001
    import_image(stub, BUSYBOX, "snap")
    for key in ("../../etc", "/abs", "a/b", "", ".hidden", "x" * 129):
        assert rpc_error(_prepare, stub, key, "snap").code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (image_dir / "etc").exists()
    snap = _prepare(stub, "c1", "snap")
    assert rpc_error(_prepare, stub, "c1", "snap").code() == grpc.StatusCode.ALREADY_EXISTS
    assert rpc_error(_prepare, stub, "c2", "nosuch").code() == grpc.StatusCode.NOT_FOUND
    assert snap.mount.type == "overlay" and list(snap.mount.lowerdirs) == [str(image_dir / "layers" /
                                                                               sha(BUSYBOX)[7:])]
    assert Path(snap.mount.upperdir).is_dir() and Path(snap.mount.workdir).is_dir()
    assert [s.key for s in stub.ListSnapshots(image_pb2.ListSnapshotsRequest()).snapshots] == ["c1"]
    stub.RemoveSnapshot(image_pb2.RemoveSnapshotRequest(key="c1"))
    assert not (image_dir / "snapshots" / "c1").exists()
    err = rpc_error(stub.RemoveSnapshot, image_pb2.RemoveSnapshotRequest(key="c1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(stub.RemoveSnapshot, image_pb2.RemoveSnapshotRequest(key="../../etc"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_zero_layer_image_gets_an_empty_lower(stub) -> None:  # noqa: ANN001
    load(stub, images.docker_save_archive([], "empty:1"))
    snap = _prepare(stub, "empty-snap", "empty:1")
    (lower,) = snap.mount.lowerdirs
    assert Path(lower).is_dir() and os.listdir(lower) == []


def test_rmi_semantics(stub, image_dir: Path) -> None:  # noqa: ANN001
    img = import_image(stub, BUSYBOX, "rmi:1")
    stub.Tag(image_pb2.TagImageRequest(source="rmi:1", target="rmi:2"))
    err = rpc_error(stub.Remove, image_pb2.RemoveImageRequest(reference=img.id))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "image is referenced in multiple repositories" in err.details()

    out = stub.Remove(image_pb2.RemoveImageRequest(reference="rmi:2"))
    assert list(out.untagged) == ["rmi:2"] and not out.deleted

    _prepare(stub, "holder0123456789", "rmi:1")
    err = rpc_error(stub.Remove, image_pb2.RemoveImageRequest(reference="rmi:1"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == ('conflict: unable to remove repository reference "rmi:1" (must force) - container '
                             f"holder012345 is using its referenced image {img.id[7:19]}")
    out = stub.Remove(image_pb2.RemoveImageRequest(reference="rmi:1", force=True))
    assert list(out.untagged) == ["rmi:1"] and not out.deleted
    assert inspect(stub, img.id).id == img.id  # still there while in use
    assert rpc_error(stub.Remove, image_pb2.RemoveImageRequest(reference=img.id)).code() == \
        grpc.StatusCode.FAILED_PRECONDITION

    stub.RemoveSnapshot(image_pb2.RemoveSnapshotRequest(key="holder0123456789"))
    out = stub.Remove(image_pb2.RemoveImageRequest(reference=img.id[7:19]))
    assert list(out.deleted)[0] == img.id
    assert rpc_error(inspect, stub, img.id).code() == grpc.StatusCode.NOT_FOUND
    disk = state(image_dir)
    assert sha(BUSYBOX)[7:] not in disk["layers"]
    assert img.id[7:] not in disk["blobs"] and img.manifest_digest[7:] not in disk["blobs"]


def _nest_index(archive: bytes, ref: str) -> bytes:
    """Wrap an OCI layout's manifest in a platform index, as multi-arch images are."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        index = json.loads(tar.extractfile("index.json").read())
    desc = index["manifests"][0]
    desc.pop("annotations")
    other = dict(desc, platform={"os": "linux", "architecture": "s390x" if host_arch() != "s390x" else "arm64"},
                 digest="sha256:" + "e" * 64)
    nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": [other, dict(desc, platform={"os": "linux", "architecture": host_arch()})]
                         }).encode()
    top = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(nested), "size": len(nested),
        "annotations": {"io.containerd.image.name": ref}}]}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            if m.name != "index.json":
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
        for name, data in (("index.json", top), ("blobs/sha256/" + sha(nested)[7:], nested)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_load_oci_nested_index_picks_host_platform(stub) -> None:  # noqa: ANN001
    layer = images.layer_tar({"nested": b"n"})
    archive = _nest_index(images.oci_layout_archive([layer], "unused"), "docker.io/me/multi:1")
    resp = load(stub, archive)
    assert list(resp.loaded) == ["Loaded image: me/multi:1"]
    assert list(resp.images[0].diff_ids) == [sha(layer)]
