"""Credential helpers, as Docker runs them: config.json `credHelpers` (per registry) or
`credsStore` (all registries) names `docker-credential-<name>`, which `get`s the
credentials for a server read from stdin (and `store`s / `erase`s them at login and
logout). The helper here is a tiny shell script the test puts on PATH, keeping one
file per server next to itself. Real CLI and services, a real htpasswd registry."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.e2e.assertions import ok, one_line_error
from tests.harness import Services
from tests.registry import USERS, Registry, make_image, push_image

PASSWORD = USERS["alice"]

HELPER = r"""#!/bin/sh
# docker-credential-berthtest: a credential store in files beside this script.
dir=$(dirname "$0")/store
mkdir -p "$dir"
echo "$1" >> "$dir/calls"
input=$(cat)
name() { printf %s "$1" | tr -c 'A-Za-z0-9' _; }
case "$1" in
  get)   f="$dir/$(name "$input")"
         if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store) server=$(printf %s "$input" | sed -n 's/.*"ServerURL": *"\([^"]*\)".*/\1/p')
         printf %s "$input" > "$dir/$(name "$server")" ;;
  erase) rm -f "$dir/$(name "$input")" ;;
  *)     echo "unknown action $1" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def bindir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="berth-cred-helper-"))
    helper = d / "docker-credential-berthtest"
    helper.write_text(HELPER)
    helper.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def berth(bindir: Path) -> Iterator[Services]:
    base = Path(tempfile.mkdtemp(prefix="berth-e2e-cred-"))
    svc = Services(base, extra_env={"DOCKER_CONFIG": str(base / "docker-config"),
                                    "PATH": f"{bindir}:{os.environ['PATH']}"})
    try:
        svc.start()
        yield svc
    finally:
        svc.berth("rm", "-f", *svc.berth("ps", "-aq").stdout.split())
        svc.close()


def _config(berth: Services, doc: dict) -> Path:
    path = Path(berth.env["DOCKER_CONFIG"]) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _store(bindir: Path, server: str) -> Path:
    return bindir / "store" / "".join(c if c.isalnum() else "_" for c in server)


def test_cred_helper_supplies_pull_and_run_credentials(berth: Services, basic_registry: Registry, bindir: Path,
                                                       tmp_path: Path) -> None:
    host = basic_registry.host
    ref = f"{host}/helped/app:1"
    img = make_image([images.busybox_rootfs_bytes({"who.txt": b"helped\n"})], cmd=["cat", "/who.txt"])
    push_image(tmp_path, ref, img, creds=f"alice:{PASSWORD}")

    _config(berth, {"credHelpers": {host: "berthtest"}})
    one_line_error(berth.berth("pull", ref), 1, "pull access denied")  # the helper has nothing yet
    _store(bindir, host).parent.mkdir(parents=True, exist_ok=True)
    _store(bindir, host).write_text(json.dumps({"ServerURL": host, "Username": "alice", "Secret": PASSWORD}))
    assert ok(berth.berth("pull", "-q", ref)).stdout.strip() == img.digest
    ok(berth.berth("rmi", ref))
    assert ok(berth.berth("run", "--rm", ref)).stdout == "helped\n"
    assert "get" in (bindir / "store" / "calls").read_text().split()

    # credHelpers wins over credsStore; a wrong secret is "unauthorized", one line.
    _store(bindir, host).write_text(json.dumps({"ServerURL": host, "Username": "alice", "Secret": "wrong"}))
    _config(berth, {"credsStore": "nonexistent", "credHelpers": {host: "berthtest"}})
    ok(berth.berth("rmi", ref))
    one_line_error(berth.berth("pull", ref), 1, "unauthorized")
    for name in ("api", "image", "runtime"):
        assert PASSWORD not in berth.log(name)


def test_missing_helper_is_one_line(berth: Services, basic_registry: Registry) -> None:
    _config(berth, {"credsStore": "nonexistent"})
    one_line_error(berth.berth("pull", f"{basic_registry.host}/x/y:1"), 1,
                   '"docker-credential-nonexistent": executable file not found')
    one_line_error(berth.berth("run", "--rm", f"{basic_registry.host}/x/y:1"), 125,
                   '"docker-credential-nonexistent": executable file not found')


def test_login_and_logout_go_through_creds_store(berth: Services, basic_registry: Registry, bindir: Path,
                                                 tmp_path: Path) -> None:
    host = basic_registry.host
    config = _config(berth, {"credsStore": "berthtest"})
    _store(bindir, host).unlink(missing_ok=True)
    ok(berth.berth("login", host, "-u", "alice", "--password-stdin", input=PASSWORD + "\n"))
    stored = json.loads(_store(bindir, host).read_text())
    assert stored == {"ServerURL": host, "Username": "alice", "Secret": PASSWORD}
    doc = json.loads(config.read_text())
    assert doc["auths"] == {host: {}} and PASSWORD not in config.read_text()  # the secret stays in the helper

    ref = f"{host}/helped/login:1"
    push_image(tmp_path, ref, make_image([images.busybox_rootfs_bytes()]), creds=f"alice:{PASSWORD}")
    ok(berth.berth("pull", ref))
    ok(berth.berth("rmi", ref))

    r = ok(berth.berth("logout", host))
    assert r.stdout.strip() == f"Removing login credentials for {host}"
    assert not _store(bindir, host).exists()
    one_line_error(berth.berth("pull", ref), 1, "pull access denied")
