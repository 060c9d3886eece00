"""Build cache garbage collection: rows lease their layers, prune returns the leases.

A real store (SQLite, real directories); layers are made the way the builder
commits them (a blob plus a layer dir with a row), so `reconcile` decides.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from services.image.build.builder import _record_layer
from services.image.build.cache import BuildCache, State, record_id, step_key
from services.image.ingest import Ingest, next_chain
from services.image.store import ImageStore, NewImage


def make_store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "image", f"sqlite:///{tmp_path / 'image.db'}")


def add_layer(store: ImageStore, parent: State, payload: bytes) -> State:
    """A step's layer: its blob (the diff id) and its dir, as Builder._commit_layer leaves them."""
    diff_id = store.content.write_bytes(payload)
    chains = parent.chains
    chain = next_chain(chains[-1] if chains else None, diff_id)
    path = store.layers.path(chain)
    path.mkdir(parents=True, exist_ok=True)
    (path / "f").write_bytes(payload)
    _record_layer(store, chain, diff_id, len(payload))
    state = parent.copy()
    state.layers.append({"mediaType": "x", "digest": diff_id, "size": len(payload), "diffID": diff_id})
    return state


def base_state() -> State:
    return State({"config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []})


def publish(store: ImageStore, state: State, tag: str) -> None:
    """An image made of `state`'s layers (config and manifest blobs are stand-ins)."""
    with Ingest(store) as ingest:
        for name in (*state.chains, *state.blobs):
            ingest.hold(name)
        cfg = ingest.add_blob(b'{"config":{},"rootfs":{"type":"layers","diff_ids":%b}}' %
                              str(state.diff_ids).replace("'", '"').encode())
        man = ingest.add_blob(hashlib.sha256(cfg.encode()).hexdigest().encode())
        ingest.publish([NewImage(config_json=b"{}", config_digest=cfg, manifest_digest=man,
                                 diff_ids=state.diff_ids, blobs=[man, cfg, *state.blobs], created_unix=0,
                                 architecture="amd64", os="linux", tags=[tag])])
        ingest.finish()


def test_cache_rows_survive_collection_until_pruned(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    cache = BuildCache(store)
    one = add_layer(store, base_state(), b"one" * 1000)
    key = step_key(base_state(), "RUN one", {})
    cache.put(key, one)
    store.reconcile()
    assert cache.get(key) is not None  # the row's lease kept the layer and blob

    usage = cache.usage()
    assert (usage.total, usage.active) == (1, 0) and usage.size == 2 * 3000 and usage.reclaimable == usage.size

    out = cache.prune()
    assert out.deleted == [record_id(key)] and out.space_reclaimed == 2 * 3000
    assert cache.get(key) is None
    assert not store.layers.exists(one.chains[0]) and not store.content.exists(one.blobs[0])
    assert cache.usage().total == 0


def test_layers_an_image_uses_stay(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    cache = BuildCache(store)
    one = add_layer(store, base_state(), b"shared" * 100)
    two = add_layer(store, one, b"only-cache" * 100)
    k1, k2 = step_key(base_state(), "RUN one", {}), step_key(one, "RUN two", {})
    cache.put(k1, one)
    cache.put(k2, two)
    publish(store, one, "docker.io/library/app:1")

    assert cache.usage().size == 2 * 1000  # only the layer no image has (dir + blob)
    out = cache.prune()  # dangling only: the row whose layers are all in an image stays
    assert out.deleted == [record_id(k2)] and out.space_reclaimed == 2 * 1000
    assert cache.get(k1) is not None and not store.layers.exists(two.chains[-1])

    out = cache.prune(all_=True)
    assert out.deleted == [record_id(k1)] and out.space_reclaimed == 0
    assert store.layers.exists(one.chains[0]) and store.content.exists(one.blobs[0])  # the image's


def test_rows_in_use_and_newer_than_until_stay(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    cache = BuildCache(store)
    one = add_layer(store, base_state(), b"x" * 10)
    key = step_key(base_state(), "RUN x", {})
    cache.put(key, one)
    assert cache.prune(all_=True, until_unix=int(time.time()) - 3600).deleted == []
    cache.use(key)
    assert cache.usage().active == 1 and cache.usage().reclaimable == 0
    assert cache.prune(all_=True).deleted == []
    cache.unuse([key])
    assert cache.prune(all_=True).deleted == [record_id(key)]


def test_leases_reload_at_start_and_rewrites_do_not_leak(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    cache = BuildCache(store)
    one = add_layer(store, base_state(), b"y" * 10)
    key = step_key(base_state(), "RUN y", {})
    cache.put(key, one)
    cache.put(key, one)  # a --no-cache rebuild writes the same key again
    store2 = ImageStore(tmp_path / "image", f"sqlite:///{tmp_path / 'image.db'}")  # a restart
    cache2 = BuildCache(store2)
    store2.reconcile()
    assert cache2.get(key) is not None
    assert cache2.prune(all_=True).deleted == [record_id(key)]
    assert not store2.layers.exists(one.chains[0])
