"""The default registry and its mirrors, against real docker-registry instances.

`mirrortest:1` means `docker.io/library/mirrortest:1`. With `default_registry`
set, such names come from (and are pushed to) that registry instead of Docker
Hub; mirrors are tried first for pulls and fall back to it when they fail,
lack the image or refuse us.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.image.pull import pull
from services.image.push import push
from services.image.registry import Settings
from services.image.store import ImageStore
from tests import images
from tests.registry import Registry, free_port, make_image, push_image


@pytest.fixture(scope="module")
def mirror() -> Iterator[Registry]:
    reg = Registry("none").start()
    try:
        yield reg
    finally:
        reg.close()


def _image(tag: str) -> object:
    return make_image([images.busybox_rootfs_bytes(), images.layer_tar({"which.txt": tag.encode()})])


def _fresh(tmp_path: Path, name: str) -> ImageStore:
    return ImageStore(tmp_path / name, f"sqlite:///{tmp_path}/{name}.db")


def _has_manifest(reg: Registry, repo: str, tag: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
    conn.request("HEAD", f"/v2/{repo}/manifests/{tag}",
                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    status = conn.getresponse().status
    conn.close()
    return status == 200


def test_default_registry_serves_unqualified_names(registry: Registry, tmp_path: Path) -> None:
    img = _image("upstream")
    push_image(tmp_path, f"{registry.host}/library/deftest:1", img)
    settings = Settings(default_registry=registry.host)  # host:port, no scheme: loopback is plain HTTP
    store = _fresh(tmp_path, "a")
    out = pull(store, "deftest:1", settings=settings)
    assert out.image_id == img.id and out.reference == "deftest:1"
    assert store.inspect("deftest:1").tags == ["docker.io/library/deftest:1"]
    # And a push of an unqualified name goes there too.
    store.tag("deftest:1", "deftest:pushed")
    push(store, "deftest:pushed", settings=settings)
    assert _has_manifest(registry, "library/deftest", "pushed")


def test_mirror_first_then_fallback(registry: Registry, mirror: Registry, basic_registry: Registry,
                                    tmp_path: Path) -> None:
    upstream_img, mirror_img = _image("upstream"), _image("mirror")
    push_image(tmp_path, f"{registry.host}/library/mirrortest:1", upstream_img)

    # The mirror lacks it (404): fall back to the default registry.
    settings = Settings(default_registry=registry.host, mirrors=(mirror.host,))
    assert pull(_fresh(tmp_path, "a"), "mirrortest:1", settings=settings).image_id == upstream_img.id

    # The mirror has it (here a different image, to tell them apart): the mirror wins.
    push_image(tmp_path, f"{mirror.host}/library/mirrortest:1", mirror_img)
    assert pull(_fresh(tmp_path, "b"), "mirrortest:1", settings=settings).image_id == mirror_img.id

    # A mirror that is down, then one that wants credentials we do not have: fall back.
    down = f"127.0.0.1:{free_port()}"
    for mirrors in ((down,), (f"http://{basic_registry.host}",), (down, f"http://{basic_registry.host}")):
        s = Settings(default_registry=registry.host, mirrors=mirrors)
        assert pull(_fresh(tmp_path, f"c{len(mirrors)}{mirrors[-1][-4:]}"), "mirrortest:1",
                    settings=s).image_id == upstream_img.id

    # Pushes never go to a mirror.
    store = _fresh(tmp_path, "d")
    pull(store, "mirrortest:1", settings=settings)
    store.tag("mirrortest:1", "mirrortest:2")
    push(store, "mirrortest:2", settings=settings)
    assert _has_manifest(registry, "library/mirrortest", "2")
    assert not _has_manifest(mirror, "library/mirrortest", "2")


def test_settings_from_environment_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "berth.toml"
    conf.write_text('default_registry = "reg.lan:5000"\nregistry_mirrors = ["mirror.lan", "https://m2.lan/"]\n'
                    'insecure_registries = ["reg.lan:5000"]\n')
    s = Settings.load({"BERTH_CONFIG": str(conf)})
    assert s.endpoints("docker.io") == ["https://mirror.lan", "https://m2.lan", "http://reg.lan:5000"]
    assert s.endpoints("docker.io", for_push=True) == ["http://reg.lan:5000"]
    env = Settings.load({"BERTH_CONFIG": str(conf), "BERTH_DEFAULT_REGISTRY": "127.0.0.1:5000",
                         "BERTH_REGISTRY_MIRRORS": ""})
    assert env.endpoints("docker.io") == ["http://127.0.0.1:5000"]
    assert Settings.load({"BERTH_CONFIG": "/nonexistent"}).endpoints("docker.io") == ["https://registry-1.docker.io"]
