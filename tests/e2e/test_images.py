"""Image commands end to end: import, load (docker-save and OCI), images, rmi, inspect."""

from __future__ import annotations

import json
import os

import pytest

from tests import images
from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")


def _store_files(services) -> set[str]:
    root = services.root_dir / "image"
    found = set()
    for sub in ("blobs", "layers"):
        for dirpath, dirnames, filenames in os.walk(root / sub):
            found |= {os.path.join(dirpath, n) for n in filenames + dirnames}
    return found


def test_import_images_inspect_rmi(services, busybox_tar):
    out = ok(services.berth("import", str(busybox_tar), "mybox:1")).stdout.strip()
    assert out.startswith("sha256:")
    listing = ok(services.berth("images")).stdout
    assert "REPOSITORY" in listing and "mybox" in listing
    info = json.loads(ok(services.berth("image", "inspect", "mybox:1")).stdout)[0]
    assert info["Id"] == out and info["RepoTags"] == ["mybox:1"] and len(info["RootFS"]["Layers"]) == 1
    r = ok(services.berth("run", "--rm", "mybox:1", "echo", "from-mybox"))
    assert r.stdout == "from-mybox\n"
    r = ok(services.berth("rmi", "mybox:1"))
    assert "Untagged: mybox:1" in r.stdout
    one_line_error(services.berth("image", "inspect", "mybox:1"), 1, "No such image")


@pytest.mark.parametrize(("builder", "ref"), [(images.docker_save_archive, "saved:1"),
                                            (images.oci_layout_archive, "example.com/oci/app:2")])
def test_load_docker_save_and_oci_layout(services, tmp_path, builder, ref):
    top = images.layer_tar({"app": None, "app/hello.txt": ref.encode() + b"\n"})
    archive = tmp_path / "image.tar"
    archive.write_bytes(builder([images.busybox_rootfs_bytes(), top], ref, cmd=["cat", "/app/hello.txt"]))
    r = ok(services.berth("load", "-i", str(archive)))
    assert f"Loaded image: {ref}" in r.stdout
    assert ok(services.berth("run", "--rm", ref)).stdout == ref + "\n"
    ok(services.berth("rmi", ref))


def test_bad_archives_leave_nothing(services, tmp_path):
    before = _store_files(services)
    images_before = ok(services.berth("images", "-q")).stdout
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive at all" * 100)
    one_line_error(services.berth("load", "-i", str(junk)), 1, "archive")

    base = images.busybox_rootfs_bytes()
    top = images.layer_tar({"evil.txt": b"x"})
    archive = bytearray(images.docker_save_archive([base, top], "bad:1"))
    # Corrupt one byte of the top layer's content so its digest no longer matches.
    at = bytes(archive).index(b"evil.txt") + 512
    archive[at] = ord("y")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(archive))
    one_line_error(services.berth("load", "-i", str(bad)), 1, "sha256:")
    assert _store_files(services) == before
    assert ok(services.berth("images", "-q")).stdout == images_before
    one_line_error(services.berth("load", "-i", str(tmp_path / "missing.tar")), 1, "no such file")


def test_rmi_in_use_is_refused(services):
    ok(services.berth("create", "--name", "holder", "busybox", "true"))
    one_line_error(services.berth("rmi", "busybox"), 1, "conflict")
    ok(services.berth("rm", "holder"))
