"""Push to a real registry (checked with skopeo), save archives (checked with skopeo), history, GC."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from services.common.errors import NotFound
from services.image import housekeeping
from services.image.archive import import_rootfs, load_archive
from services.image.pull import LayerEvent, pull
from services.image.push import push
from services.image.registry import Unauthorized
from services.image.save import save
from services.image.store import ImageStore
from tests import images
from tests.integration.registry.conftest import ALICE
from tests.registry import USERS, Registry, make_image, push_image, skopeo_inspect


def _import(store: ImageStore, data: bytes, ref: str) -> str:
    return import_rootfs(store, iter([data]), ref).row.id


def _pulled_layers(store: ImageStore, registry: Registry, tmp_path: Path, repo: str, tag: str, big: int = 0) -> str:
    files: dict[str, bytes | None] = {"app": None, "app/tag.txt": repo.encode()}
    if big:
        files["app/big.bin"] = os.urandom(big)
    img = make_image([images.busybox_rootfs_bytes(), images.layer_tar(files)])
    push_image(tmp_path, f"{registry.host}/{repo}:{tag}", img)
    pull(store, f"{registry.host}/{repo}:{tag}")
    return img.id


def test_push_monolithic_then_exists_then_mount(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/pushed/bb:2"
    image_id = _import(store, images.busybox_rootfs_bytes(), name)
    events: list[object] = []
    out = push(store, name, progress=events.append)
    rec = store.inspect(name)
    assert out.digest == rec.row.manifest_digest
    info = skopeo_inspect(f"docker://{name}")
    assert info["Digest"] == out.digest and info["Layers"] == [rec.row.blobs[2]]
    raw = skopeo_inspect(f"docker://{name}", raw=True)
    assert raw["config"]["digest"] == image_id
    assert any(isinstance(e, LayerEvent) and e.status == "Pushed" for e in events)
    assert f"{registry.host}/pushed/bb@{out.digest}" in rec.digests

    events.clear()
    push(store, name, progress=events.append)  # again: the registry has every blob
    assert [e.status for e in events if isinstance(e, LayerEvent) and e.status != "Preparing"] == \
        ["Layer already exists"]

    # Another repository of the same registry: mounted, no bytes uploaded.
    other = f"{registry.host}/elsewhere/bb:1"
    store.tag(name, other)
    events.clear()
    push(store, other, progress=events.append)
    assert [e.status for e in events if isinstance(e, LayerEvent) and e.status not in ("Preparing",)] == \
        ["Mounted from pushed/bb"]
    assert skopeo_inspect(f"docker://{other}")["Digest"] == out.digest

    # Pull it back into a fresh store: the same image.
    fresh = ImageStore(tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    assert pull(fresh, other).image_id == image_id


def test_push_chunked_and_by_digest(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    name = f"{registry.host}/chunked/app:1"
    big = images.busybox_rootfs_bytes({"data.bin": os.urandom(600 << 10)})
    image_id = _import(store, big, name)
    from services.image.push import Uploader

    calls: list[str] = []
    original = Uploader.push_blob

    def spy(self: Uploader, desc, sources, show=True):  # noqa: ANN001 - records how each blob went
        how = original(self, desc, sources, show)
        calls.append(how)
        return how

    Uploader.push_blob = spy  # type: ignore[method-assign]
    try:
        out = push(store, name, chunk_size=128 << 10)
    finally:
        Uploader.push_blob = original  # type: ignore[method-assign]
    assert calls == ["chunked", "monolithic"]  # the big layer in chunks, the small config in one PUT
    assert skopeo_inspect(f"docker://{name}")["Digest"] == out.digest
    fresh = ImageStore(tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    assert pull(fresh, name).image_id == image_id

    other_repo = f"{registry.host}/digestonly/app"
    store.tag(name, f"{other_repo}:tmp")
    out2 = push(store, f"{other_repo}@{out.digest}")
    assert out2.digest == out.digest and out2.tag == ""
    assert skopeo_inspect(f"docker://{other_repo}@{out.digest}", raw=True)["config"]["digest"] == image_id
    # Pushed by digest: the registry holds the manifest but no tag for it.
    r = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{other_repo}"],
                       capture_output=True, text=True)
    assert (r.returncode != 0 and "404" in r.stderr) or json.loads(r.stdout)["Tags"] in ([], None)


def test_push_errors(registry: Registry, basic_registry: Registry, token_registry: Registry, store: ImageStore) -> None:
    with pytest.raises(NotFound, match="An image does not exist locally with the tag: "):
        push(store, f"{registry.host}/none/here:1")
    name = f"{basic_registry.host}/locked/bb:1"
    _import(store, images.busybox_rootfs_bytes(), name)
    with pytest.raises(Unauthorized):
        push(store, name)
    push(store, name, creds=ALICE)
    assert skopeo_inspect(f"docker://{name}", creds=f"alice:{USERS['alice']}")["Name"].endswith("locked/bb")
    tname = f"{token_registry.host}/locked/bb:1"
    store.tag(name, tname)
    with pytest.raises(Unauthorized):
        push(store, tname)  # anonymous tokens only grant pull
    assert push(store, tname, creds=ALICE).digest


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_is_valid_for_skopeo_and_loads_back(registry: Registry, store: ImageStore, tmp_path: Path,
                                                 fmt: str) -> None:
    image_id = _pulled_layers(store, registry, tmp_path, "save/app", "1")
    name = f"{registry.host}/save/app:1"
    out = tmp_path / "out.tar"
    with open(out, "wb") as f:
        save(store, [name], f, fmt)
    info = skopeo_inspect(f"{fmt}:{out}")
    rec = store.inspect(name)
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 2
    if fmt == "oci-archive":
        assert info["Digest"] == rec.row.manifest_digest
        assert info["Layers"] == rec.row.blobs[2:]
    else:
        assert info["Layers"] == rec.row.diff_ids  # uncompressed layers: their digests are the diff ids
    fresh = ImageStore(tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    loaded = load_archive(fresh, iter([out.read_bytes()]))
    assert [r.row.id for r in loaded.images] == [image_id]
    assert fresh.inspect(name).row.id == image_id


def test_history(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    hist = [{"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:rootfs in /"},
            {"created": "2024-01-01T00:00:01Z", "created_by": "/bin/sh -c #(nop) ENV A=b", "empty_layer": True},
            {"created": "2024-01-01T00:00:02Z", "created_by": "COPY app /app", "comment": "buildkit"}]
    img = make_image([images.busybox_rootfs_bytes(), images.layer_tar({"app": None, "app/x": b"12345"})],
                     history=hist)
    name = f"{registry.host}/hist/app:1"
    push_image(tmp_path, name, img)
    pull(store, name)
    entries = housekeeping.history(store, name)
    assert [e.created_by for e in entries] == ["COPY app /app", "/bin/sh -c #(nop) ENV A=b",
                                               "/bin/sh -c #(nop) ADD file:rootfs in /"]
    assert entries[0].id == img.id and entries[1].id == "<missing>"
    assert entries[0].size == 5 and entries[1].size == 0 and entries[2].size > 1_000_000
    assert entries[0].comment == "buildkit" and entries[0].tags == [name]


def test_gc_keeps_shared_layers_and_prune(registry: Registry, store: ImageStore, tmp_path: Path) -> None:
    one = _pulled_layers(store, registry, tmp_path, "gc/one", "1")
    two = _pulled_layers(store, registry, tmp_path, "gc/two", "1")
    rec_one, rec_two = store.inspect(one), store.inspect(two)
    base_chain = rec_one.row.diff_ids[0]
    assert rec_two.row.diff_ids[0] == base_chain  # the busybox layer is shared
    store.remove(f"{registry.host}/gc/one:1")
    with pytest.raises(NotFound):
        store.inspect(one)
    assert store.layers.exists(base_chain)  # still used by two
    assert all(store.content.exists(b) for b in rec_two.row.blobs)
    only_one = set(rec_one.row.blobs) - set(rec_two.row.blobs)
    assert only_one and not any(store.content.exists(b) for b in only_one)

    # A dangling image (no tag, no digest) goes with prune; a tagged one only with prune -a.
    dangling = _import(store, images.busybox_rootfs_bytes({"dangling": b"1"}), "")
    used = _import(store, images.busybox_rootfs_bytes({"used": b"1"}), "used:1")
    store.prepare_snapshot("c0ffee", used)  # a container holds it
    # Garbage a crash could leave: an unreferenced blob and layer dir.
    stray_blob = store.content.write_bytes(b"stray")
    (store.layers.root / ("ab" * 32)).mkdir()
    out = housekeeping.prune(store)
    assert out.deleted[0] == dangling and out.space_reclaimed > 0
    assert not store.content.exists(stray_blob) and not (store.layers.root / ("ab" * 32)).exists()
    assert {r.row.id for r in store.list()} == {two, used}
    out = housekeeping.prune(store, all_=True)
    assert f"{registry.host}/gc/two:1" in out.untagged and two in out.deleted
    assert {r.row.id for r in store.list()} == {used}
    usage = housekeeping.disk_usage(store)
    assert [u.containers for u in usage.images] == [1] and usage.snapshots[0].key == "c0ffee"
    store.remove_snapshot("c0ffee")
    housekeeping.prune(store, all_=True)
    assert store.list() == [] and list(store.content.digests()) == [] and store.layers.chain_ids() == []

