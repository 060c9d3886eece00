"""`run`/`create` with an image that is not stored: the pull's progress on stderr before
the container's output, credentials from config.json, `--pull` and `--platform`.
Real CLI, all three services, real docker-registry instances."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.e2e.assertions import ok, one_line_error
from tests.harness import Services
from tests.registry import USERS, Registry, make_image, make_index, push_image, push_index


@pytest.fixture(scope="module")
def berth() -> Iterator[Services]:
    base = Path(tempfile.mkdtemp(prefix="berth-e2e-run-pull-"))
    svc = Services(base, extra_env={"DOCKER_CONFIG": str(base / "docker-config")})
    try:
        svc.start()
        yield svc
    finally:
        svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
        svc.close()


def _app(text: str) -> bytes:
    return images.busybox_rootfs_bytes({"app.txt": text.encode()})


def test_run_pulls_a_missing_image_and_shows_progress_on_stderr(berth: Services, registry: Registry,
                                                                 tmp_path: Path) -> None:
    ref = f"{registry.host}/runpull/app:1"
    img = make_image([_app("v1\n"), images.layer_tar({"extra.txt": b"x\n"})], cmd=["cat", "/app.txt"])
    push_image(tmp_path, ref, img)
    r = ok(berth.berth("run", "--rm", ref))
    assert r.stdout == "v1\n"  # progress never mixes with the container's output
    lines = r.stderr.splitlines()
    assert lines[0] == f"Unable to find image '{ref}' locally"
    assert lines[1] == "1: Pulling from runpull/app"
    assert sum(line.endswith(": Pull complete") for line in lines) == 2
    assert f"Digest: {img.digest}" in lines
    assert lines[-1] == f"Status: Downloaded newer image for {ref}"
    # Stored now: the next run is silent.
    r = ok(berth.berth("run", "--rm", ref))
    assert r.stdout == "v1\n" and r.stderr == ""


def test_pull_policies(berth: Services, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/runpull/policy:1"
    one_line_error(berth.berth("run", "--rm", "--pull", "never", ref), 125, "No such image")
    one_line_error(berth.berth("run", "--rm", "--pull", "sometimes", ref), 125, "invalid pull option: 'sometimes'")
    push_image(tmp_path, ref, make_image([_app("old\n")], cmd=["cat", "/app.txt"]))
    assert ok(berth.berth("run", "--rm", ref)).stdout == "old\n"
    new = make_image([_app("new\n")], cmd=["cat", "/app.txt"])
    push_image(tmp_path, ref, new)  # the tag moves on in the registry
    r = ok(berth.berth("run", "--rm", "--pull", "never", ref))
    assert r.stdout == "old\n" and r.stderr == ""
    assert ok(berth.berth("run", "--rm", ref)).stdout == "old\n"  # missing (default): what is stored
    r = ok(berth.berth("run", "--rm", "--pull", "always", ref))
    assert r.stdout == "new\n"
    assert "Unable to find image" not in r.stderr and "1: Pulling from runpull/policy" in r.stderr
    r = ok(berth.berth("run", "--rm", "--pull", "always", ref))
    assert r.stdout == "new\n" and f"Status: Image is up to date for {ref}" in r.stderr
    # create takes the same flags
    ok(berth.berth("rmi", ref))
    one_line_error(berth.berth("create", "--pull", "never", ref), 125, "No such image")
    cid = ok(berth.berth("create", "--pull", "always", ref)).stdout.strip()
    ok(berth.berth("rm", cid))


def test_run_uses_the_credentials_from_config_json(berth: Services, basic_registry: Registry,
                                                   tmp_path: Path) -> None:
    host = basic_registry.host
    ref = f"{host}/private/app:1"
    push_image(tmp_path, ref, make_image([_app("secret\n")], cmd=["cat", "/app.txt"]),
               creds=f"alice:{USERS['alice']}")
    r = berth.berth("run", "--rm", ref)
    assert r.returncode == 125 and "Traceback" not in r.stderr
    assert "pull access denied" in r.stderr.splitlines()[-1]
    ok(berth.berth("login", host, "-u", "alice", "--password-stdin", input=USERS["alice"] + "\n"))
    try:
        assert ok(berth.berth("run", "--rm", ref)).stdout == "secret\n"
        for name in ("api", "image", "runtime"):
            assert USERS["alice"] not in berth.log(name)
    finally:
        ok(berth.berth("logout", host))


def test_run_platform_picks_from_an_index(berth: Services, registry: Registry, tmp_path: Path) -> None:
    amd = make_image([_app("amd64\n")], arch="amd64", cmd=["cat", "/app.txt"])
    arm = make_image([_app("arm64\n")], arch="arm64", cmd=["cat", "/app.txt"])
    index = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                        (arm, {"os": "linux", "architecture": "arm64"})])
    ref = f"{registry.host}/runpull/multi:1"
    push_index(tmp_path, ref, index, [amd, arm])
    # Like docker create: "Unable to find image", the pull's first line, then the error.
    one_line_error(berth.berth("create", "--platform", "linux/riscv64", ref), 125,
                   "no matching manifest for linux/riscv64", max_lines=3)
    cid = ok(berth.berth("create", "--platform", "linux/arm64", ref)).stdout.strip()
    try:
        got = json.loads(ok(berth.berth("image", "inspect", ref)).stdout)[0]
        assert got["Id"] == arm.id and got["Architecture"] == "arm64"
    finally:
        ok(berth.berth("rm", cid))
    ok(berth.berth("rmi", ref))
    assert ok(berth.berth("run", "--rm", "--platform", "linux/amd64", ref)).stdout == "amd64\n"


def test_push_all_tags(berth: Services, registry: Registry, tmp_path: Path) -> None:
    repo = f"{registry.host}/alltags/app"
    tar = tmp_path / "rootfs.tar"
    tar.write_bytes(_app("tagged\n"))
    ok(berth.berth("import", str(tar), f"{repo}:1"))
    ok(berth.berth("tag", f"{repo}:1", f"{repo}:2"))
    ok(berth.berth("tag", f"{repo}:1", f"{registry.host}/alltags/other:9"))  # another repository: not pushed
    one_line_error(berth.berth("push", "-a", f"{repo}:1"), 1, "tag can't be used with --all-tags/-a")
    one_line_error(berth.berth("push", "--all-tags", f"{registry.host}/alltags/none"), 1,
                   "An image does not exist locally")
    r = ok(berth.berth("push", "--all-tags", repo))
    assert r.stdout.count("The push refers to repository") == 1
    assert "1: digest: sha256:" in r.stdout and "2: digest: sha256:" in r.stdout
    from tests.registry import skopeo_inspect

    tags = skopeo_inspect(f"docker://{repo}:1")["RepoTags"]
    assert sorted(tags) == ["1", "2"]
    r = ok(berth.berth("push", "-a", "-q", repo))
    assert r.stdout.splitlines() == [f"{repo}:1", f"{repo}:2"]


def test_create_shows_the_pull_on_stderr(berth: Services, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/runpull/create:1"
    img = make_image([_app("created\n")], cmd=["cat", "/app.txt"])
    push_image(tmp_path, ref, img)
    r = ok(berth.berth("create", ref))
    cid = r.stdout.strip()
    assert len(cid) == 64 and r.stdout == cid + "\n"
    lines = r.stderr.splitlines()
    assert lines[0] == f"Unable to find image '{ref}' locally"
    assert "1: Pulling from runpull/create" in lines and f"Digest: {img.digest}" in lines
    try:
        r = ok(berth.berth("start", "-a", cid))
        assert r.stdout == "created\n"
    finally:
        ok(berth.berth("rm", "-f", cid))
    r = ok(berth.berth("create", ref))  # stored: silent
    assert r.stderr == ""
    ok(berth.berth("rm", r.stdout.strip()))


def test_interrupted_run_during_the_pull_creates_nothing(berth: Services, registry: Registry,
                                                         tmp_path: Path) -> None:
    """Ctrl-C (here SIGKILL) of `run` while the image downloads: no container appears
    afterwards, and the pull leaves no partial blob or layer behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.registry import FaultProxy

    img = make_image([_app("slow\n"), images.layer_tar({"big.bin": os.urandom(6 << 20)})], compression="",
                     cmd=["cat", "/app.txt"])
    proxy = FaultProxy(registry.port, rate=1 << 20)  # 1 MB/s: the pull takes several seconds
    ref = f"{proxy.host}/runpull/slow:1"
    try:
        push_image(tmp_path, f"{registry.host}/runpull/slow:1", img)
        before = set(ok(berth.berth("ps", "-aq", "--no-trunc")).stdout.split())
        from tests.harness import REPO

        proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "--rm", ref], env=berth.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        while "Pulling fs layer" not in (line := proc.stderr.readline()):
            assert line, "the pull never started"
        time.sleep(1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and list((berth.root_dir / "image" / "tmp").iterdir()):
            time.sleep(0.5)
        assert not list((berth.root_dir / "image" / "tmp").iterdir())  # the pull was cancelled, cleaned up
        time.sleep(2)
        assert set(ok(berth.berth("ps", "-aq", "--no-trunc")).stdout.split()) == before
        assert ok(berth.berth("images", "-q", ref)).stdout == ""
    finally:
        proxy.close()
