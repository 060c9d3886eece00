"""Foreign / non-distributable layers, as the OCI image spec and Docker handle them.

`application/vnd.docker.image.rootfs.foreign.diff.tar.gzip` and
`application/vnd.oci.image.layer.nondistributable.v1.tar+gzip` layers may name
`urls`: a pull fetches the blob from there (the registry need not hold it), and
falls back to the registry when no URL works or none is given; a push does not
upload them when they have URLs. Real docker-registry; the "external" URL is a
blob URL of another repository on a registry, a plain HTTP GET like any CDN.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.image.pull import LayerEvent, pull
from services.image.push import push
from services.image.store import ImageStore
from tests import images
from tests.registry import Registry, free_port

FOREIGN_DOCKER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
NONDIST_OCI = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


class URLRegistry(Registry):
    """A registry that accepts layer URLs in manifests (distribution refuses them unless
    `validation.manifests.urls.allow` says which; Docker Hub allows a few vendors')."""

    def _config(self) -> str:
        return super()._config() + "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"


@pytest.fixture(scope="module")
def url_registry() -> Iterator[Registry]:
    reg = URLRegistry("none").start()
    try:
        yield reg
    finally:
        reg.close()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(reg: Registry, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status >= 400 and method != "HEAD":
        print(method, path, resp.status, body[:500])  # shown when a test fails
    return resp.status, dict(resp.getheaders())


def upload_blob(reg: Registry, repo: str, data: bytes) -> str:
    status, hdrs = _request(reg, "POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    assert status == 202, status
    location = hdrs["Location"]
    location = location.split(f"127.0.0.1:{reg.port}", 1)[-1]
    sep = "&" if "?" in location else "?"
    status, _ = _request(reg, "PUT", f"{location}{sep}digest={sha(data)}", data,
                         {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    assert status == 201, status
    return sha(data)


def has_blob(reg: Registry, repo: str, digest: str) -> bool:
    return _request(reg, "HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200


def put_manifest(reg: Registry, repo: str, tag: str, doc: dict) -> str:
    body = json.dumps(doc).encode()
    status, _ = _request(reg, "PUT", f"/v2/{repo}/manifests/{tag}", body,
                         {"Content-Type": doc["mediaType"], "Content-Length": str(len(body))})
    assert status == 201, f"registry refused the manifest: {status}"
    return sha(body)


def _image(reg: Registry, repo: str, foreign_type: str, urls: list[str], upload_foreign: bool,
           foreign: bytes) -> tuple[dict, str]:
    """An image of a normal base layer plus one foreign layer, in `repo`; returns (manifest, config digest)."""
    base = images.busybox_rootfs_bytes()
    base_gz = gzip.compress(base, mtime=0)
    foreign_gz = gzip.compress(foreign, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(base), sha(foreign)]}}).encode()
    upload_blob(reg, repo, base_gz)
    upload_blob(reg, repo, config)
    if upload_foreign:
        upload_blob(reg, repo, foreign_gz)
    docker = foreign_type == FOREIGN_DOCKER
    layer = {"mediaType": foreign_type, "digest": sha(foreign_gz), "size": len(foreign_gz)}
    if urls:
        layer["urls"] = urls
    doc = {
        "schemaVersion": 2,
        "mediaType": ("application/vnd.docker.distribution.manifest.v2+json" if docker
                      else "application/vnd.oci.image.manifest.v1+json"),
        "config": {"mediaType": ("application/vnd.docker.container.image.v1+json" if docker
                                 else "application/vnd.oci.image.config.v1+json"),
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                                  else "application/vnd.oci.image.layer.v1.tar+gzip"),
                    "digest": sha(base_gz), "size": len(base_gz)}, layer],
    }
    return doc, sha(config)


def _foreign_file(store: ImageStore, ref: str) -> bytes:
    from services.image.layers import chain_ids

    rec = store.inspect(ref)
    return (store.layers.path(chain_ids(rec.row.diff_ids)[-1]) / "licensed" / "blob.bin").read_bytes()


def test_foreign_layer_comes_from_its_urls_and_is_not_pushed(url_registry: Registry, store: ImageStore,
                                                             tmp_path: Path) -> None:
    registry = url_registry
    foreign = images.layer_tar({"licensed": None, "licensed/blob.bin": b"not redistributable\n"})
    foreign_gz = gzip.compress(foreign, mtime=0)
    # The "external server": another repository's blob URL (plain HTTP GET, no auth).
    upload_blob(registry, "cdn/files", foreign_gz)
    url = f"http://{registry.host}/v2/cdn/files/blobs/{sha(foreign_gz)}"
    dead = f"http://127.0.0.1:{free_port()}/gone"
    doc, config_digest = _image(registry, "foreign/app", FOREIGN_DOCKER, [dead, url], upload_foreign=False,
                                foreign=foreign)
    put_manifest(registry, "foreign/app", "1", doc)
    assert not has_blob(registry, "foreign/app", sha(foreign_gz))  # only the URL can serve it

    ref = f"{registry.host}/foreign/app:1"
    out = pull(store, ref)
    assert out.image_id == config_digest
    assert _foreign_file(store, ref) == b"not redistributable\n"

    # Push elsewhere: the foreign layer is skipped, the manifest (with its URLs) accepted.
    store.tag(ref, f"{registry.host}/foreign/copy:1")
    events: list[object] = []
    push(store, f"{registry.host}/foreign/copy:1", progress=events.append)
    assert any(isinstance(e, LayerEvent) and e.status == "Skipped foreign layer" for e in events)
    assert not has_blob(registry, "foreign/copy", sha(foreign_gz))
    assert has_blob(registry, "foreign/copy", doc["layers"][0]["digest"])
    fresh = ImageStore(tmp_path / "fresh", f"sqlite:///{tmp_path}/fresh.db")
    assert pull(fresh, f"{registry.host}/foreign/copy:1").image_id == config_digest


def test_non_distributable_layer_falls_back_to_the_registry(url_registry: Registry, store: ImageStore) -> None:
    registry = url_registry
    foreign = images.layer_tar({"licensed": None, "licensed/blob.bin": b"from the registry\n"})
    dead = f"http://127.0.0.1:{free_port()}/gone"
    for tag, urls in (("with-dead-url", [dead]), ("no-urls", [])):
        doc, config_digest = _image(registry, "nondist/app", NONDIST_OCI, urls, upload_foreign=True,
                                    foreign=foreign)
        put_manifest(registry, "nondist/app", tag, doc)
        ref = f"{registry.host}/nondist/app:{tag}"
        assert pull(store, ref).image_id == config_digest
        assert _foreign_file(store, ref) == b"from the registry\n"
