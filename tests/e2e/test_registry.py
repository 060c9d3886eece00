"""The registry commands end to end: the real CLI, all three services, real registries.

pull/push/login/logout/save/history/images --digests/image prune/system df,
`ensure_image` (what `run` uses to pull a missing image), and the one-line
errors for bad input. Credentials live in a private DOCKER_CONFIG.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc, registry_pb2_grpc
from services.api.images import ensure_image
from tests import images
from tests.e2e.assertions import ok, one_line_error
from tests.harness import Services
from tests.registry import USERS, Registry, free_port, make_image, make_index, push_image, push_index, skopeo_inspect

PASSWORD = USERS["alice"]


@pytest.fixture(scope="module")
def berth() -> Iterator[Services]:
    """A private Berth whose CLI keeps its credentials in a temp DOCKER_CONFIG."""
    base = Path(tempfile.mkdtemp(prefix="berth-e2e-registry-"))
    svc = Services(base, extra_env={"DOCKER_CONFIG": str(base / "docker-config")})
    try:
        svc.start()
        tar = base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        ok(svc.berth("import", str(tar), "busybox:latest"))
        yield svc
    finally:
        svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
        svc.close()


def test_push_pull_run_save_history_prune(berth: Services, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/me/bb:2"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(images.busybox_rootfs_bytes({"me.txt": b"me\n"}))
    ok(berth.berth("import", str(rootfs), ref))
    r = ok(berth.berth("push", ref))
    assert f"The push refers to repository [{registry.host}/me/bb]" in r.stdout
    assert ": Pushed" in r.stdout and "2: digest: sha256:" in r.stdout
    digest = r.stdout.split("digest: ")[1].split()[0]
    assert skopeo_inspect(f"docker://{ref}")["Digest"] == digest

    ok(berth.berth("rmi", ref))
    r = ok(berth.berth("pull", ref))
    lines = r.stdout.splitlines()
    assert lines[0] == "2: Pulling from me/bb"
    assert f"Digest: {digest}" in lines and lines[-1] == ref
    assert any(line.endswith(": Pull complete") for line in lines)
    assert f"Status: Downloaded newer image for {ref}" in lines
    assert ok(berth.berth("pull", ref)).stdout.splitlines()[-2] == f"Status: Image is up to date for {ref}"

    listing = ok(berth.berth("images", "--digests", f"{registry.host}/me/bb")).stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    assert listing[1].split()[:3] == [f"{registry.host}/me/bb", "2", digest]
    info = json.loads(ok(berth.berth("image", "inspect", ref)).stdout)[0]
    assert info["RepoDigests"] == [f"{registry.host}/me/bb@{digest}"]

    ok(berth.berth("rmi", ref))
    assert ok(berth.berth("pull", "-q", ref)).stdout == digest + "\n"
    assert ok(berth.berth("run", "--rm", ref, "cat", "/me.txt")).stdout == "me\n"

    hist = ok(berth.berth("history", ref)).stdout.splitlines()
    assert hist[0].split()[:3] == ["IMAGE", "CREATED", "CREATED"] and "berth import" in hist[1]

    for fmt in ("docker-archive", "oci-archive"):
        out = tmp_path / f"{fmt}.tar"
        ok(berth.berth("save", "-o", str(out), "--format", fmt, ref))
        inspected = skopeo_inspect(f"{fmt}:{out}")
        assert len(inspected["Layers"]) == 1
    one_line_error(berth.berth("save", "-o", str(tmp_path / "x.tar"), "no-such:image"), 1, "No such image")
    assert not (tmp_path / "x.tar").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # save | load round trip through stdout.
    r = berth.berth("save", ref, input=b"")
    assert r.returncode == 0 and r.stdout[:512].strip(b"\0")
    ok(berth.berth("rmi", ref))
    archive = tmp_path / "stdout.tar"
    archive.write_bytes(r.stdout)
    assert f"Loaded image: {ref}" in ok(berth.berth("load", "-i", str(archive))).stdout

    ok(berth.berth("create", "--name", "prune-holder", "busybox", "true"))
    try:
        r = ok(berth.berth("image", "prune", "-a", "-f"))
        assert f"untagged: {ref}" in r.stdout and "Total reclaimed space:" in r.stdout
        assert ok(berth.berth("images", "-q", f"{registry.host}/me/bb")).stdout == ""
        ok(berth.berth("image", "inspect", "busybox"))  # a container uses it: it stays
    finally:
        ok(berth.berth("rm", "prune-holder"))


def test_login_logout_private_registry(berth: Services, basic_registry: Registry) -> None:
    host = basic_registry.host
    ref = f"{host}/private/bb:1"
    ok(berth.berth("tag", "busybox", ref))
    one_line_error(berth.berth("push", ref), 1, "unauthorized")
    one_line_error(berth.berth("login", host, "-u", "alice", "--password-stdin", input="wrong\n"), 1,
                   "unauthorized")
    config = Path(berth.env["DOCKER_CONFIG"]) / "config.json"
    assert not config.exists() or host not in config.read_text()

    r = ok(berth.berth("login", host, "-u", "alice", "--password-stdin", input=PASSWORD + "\n"))
    assert r.stdout.strip() == "Login Succeeded"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    entry = json.loads(config.read_text())["auths"][host]
    import base64

    assert base64.b64decode(entry["auth"]).decode() == f"alice:{PASSWORD}"

    ok(berth.berth("push", ref))
    ok(berth.berth("rmi", ref))
    ok(berth.berth("pull", ref))
    for name in ("api", "image", "runtime"):
        assert PASSWORD not in berth.log(name)  # never logged

    r = ok(berth.berth("logout", host))
    assert r.stdout.strip() == f"Removing login credentials for {host}"
    assert host not in json.loads(config.read_text()).get("auths", {})
    ok(berth.berth("rmi", ref))
    one_line_error(berth.berth("pull", ref), 1, "pull access denied")


def test_bad_input_is_one_line(berth: Services, registry: Registry, tmp_path: Path) -> None:
    images_before = ok(berth.berth("images", "-q")).stdout
    port = free_port()
    one_line_error(berth.berth("pull", f"127.0.0.1:{port}/x:1"), 1, "connection refused")
    one_line_error(berth.berth("pull", f"{registry.host}/missing/app:1"), 1,
                   f"manifest for {registry.host}/missing/app:1 not found")
    amd = make_image([images.layer_tar({"a": b"1"})], arch="amd64")
    arm = make_image([images.layer_tar({"a": b"2"})], arch="arm64")
    index = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                        (arm, {"os": "linux", "architecture": "arm64"})])
    push_index(tmp_path, f"{registry.host}/multi/x:1", index, [amd, arm])
    one_line_error(berth.berth("pull", "--platform", "linux/riscv64", f"{registry.host}/multi/x:1"), 1,
                   "no matching manifest for linux/riscv64")
    img = make_image([images.layer_tar({"a": b"3"})])
    push_image(tmp_path, f"{registry.host}/odd/x:1", img)
    doc = json.loads(img.manifest)
    doc["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    registry.put_raw_manifest("odd/x", "helm", json.dumps(doc).encode())
    one_line_error(berth.berth("pull", f"{registry.host}/odd/x:helm"), 1, "unsupported media type")
    one_line_error(berth.berth("pull", "Bad/Name"), 1, "invalid reference format")
    one_line_error(berth.berth("push", f"{registry.host}/not/local:1"), 1, "An image does not exist locally")
    assert ok(berth.berth("images", "-q")).stdout == images_before
    blobs = berth.root_dir / "image" / "tmp"
    assert not list(blobs.iterdir())


def test_system_df(berth: Services) -> None:
    ok(berth.berth("create", "--name", "df-holder", "busybox", "true"))
    try:
        lines = ok(berth.berth("system", "df")).stdout.splitlines()
        assert lines[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert rows["Images"][2] == "1"  # busybox is used by the container
        assert rows["Containers"][1:3] == ["1", "0"]
        verbose = ok(berth.berth("system", "df", "-v")).stdout
        assert "Images space usage:" in verbose and "busybox" in verbose
    finally:
        ok(berth.berth("rm", "df-holder"))


def test_ensure_image_pulls_what_run_needs(berth: Services, registry: Registry, tmp_path: Path) -> None:
    """The function the gateway's Run uses: inspect, pull on NOT_FOUND, inspect again."""
    img = make_image([images.busybox_rootfs_bytes()], cmd=["echo", "ensured"])
    ref = f"{registry.host}/ensure/app:1"
    push_image(tmp_path, ref, img)
    with grpc.insecure_channel(f"unix://{berth.socket('image')}") as ch:
        image_stub = image_pb2_grpc.ImageServiceStub(ch)
        registry_stub = registry_pb2_grpc.RegistryStub(ch)
        seen: list[str] = []
        got = ensure_image(image_stub, registry_stub, ref, on_progress=lambda p: seen.append(p.WhichOneof("item")))
        assert got.id == img.id and "result" in seen
        seen.clear()
        assert ensure_image(image_stub, registry_stub, ref, on_progress=seen.append).id == img.id
        assert seen == []  # present: no pull
        with pytest.raises(grpc.RpcError) as info:
            ensure_image(image_stub, registry_stub, "sha256:" + "0" * 64)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        image_stub.Remove(image_pb2.RemoveImageRequest(reference=ref))
    assert os.path.exists(berth.socket("api"))
