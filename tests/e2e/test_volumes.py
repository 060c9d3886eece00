"""Volumes and mounts, end to end: named volumes, binds, tmpfs, --read-only, -w, bad input."""

from __future__ import annotations

import os

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")






def test_named_volume_outlives_containers(services):
    ok(services.berth("volume", "create", "vdata"))
    try:
        ok(services.berth("run", "--rm", "-v", "vdata:/data", "busybox", "sh", "-c", "echo kept > /data/f"))
        r = ok(services.berth("run", "--rm", "-v", "vdata:/data:ro", "busybox", "cat", "/data/f"))
        assert r.stdout == "kept\n"
        r = services.berth("run", "--rm", "-v", "vdata:/data:ro", "busybox", "touch", "/data/g")
        assert r.returncode == 1 and "Read-only file system" in r.stderr
        assert "vdata" in ok(services.berth("volume", "ls", "-q")).stdout.split()
        mp = ok(services.berth("volume", "inspect", "-f", "{{.Mountpoint}}", "vdata")).stdout.strip()
        with open(os.path.join(mp, "f")) as f:
            assert f.read() == "kept\n"
    finally:
        ok(services.berth("volume", "rm", "vdata"))
    one_line_error(services.berth("volume", "inspect", "vdata"), 1, "no such volume")


def test_volume_created_on_first_use_and_seeded_from_image(services):
    # /etc of busybox has passwd: an empty volume mounted there gets the image's files.
    r = ok(services.berth("run", "--rm", "-v", "vseed:/etc", "busybox", "cat", "/etc/passwd"))
    assert "root:" in r.stdout
    try:
        r = ok(services.berth("run", "--rm", "--mount", "type=volume,src=vseed,dst=/mnt", "busybox", "ls", "/mnt"))
        assert "passwd" in r.stdout.split()
    finally:
        ok(services.berth("volume", "rm", "vseed"))


def test_volume_in_use_is_refused_and_prune(services):
    ok(services.berth("volume", "create", "vbusy"))
    ok(services.berth("volume", "create", "vidle"))
    cid = ok(services.berth("create", "-v", "vbusy:/x", "busybox", "true")).stdout.strip()
    try:
        one_line_error(services.berth("volume", "rm", "vbusy"), 1, "volume is in use")
        r = ok(services.berth("volume", "prune", "-f", "-a"))
        assert "vidle" in r.stdout and "vbusy" not in r.stdout
        assert "vbusy" in services.berth("volume", "ls", "-q").stdout.split()
        assert "vidle" not in services.berth("volume", "ls", "-q").stdout.split()
    finally:
        ok(services.berth("rm", cid))
        ok(services.berth("volume", "rm", "vbusy"))


def test_anonymous_volume_removed_with_rm(services):
    before = set(services.berth("volume", "ls", "-q").stdout.split())
    ok(services.berth("run", "--rm", "-v", "/anon", "busybox", "sh", "-c", "echo x > /anon/f"))
    assert set(services.berth("volume", "ls", "-q").stdout.split()) == before
    cid = ok(services.berth("create", "-v", "/anon", "busybox", "true")).stdout.strip()
    try:
        created = set(services.berth("volume", "ls", "-q").stdout.split()) - before
        assert len(created) == 1 and len(next(iter(created))) == 64
    finally:
        ok(services.berth("rm", cid))
    r = ok(services.berth("volume", "prune", "-f"))
    assert next(iter(created)) in r.stdout


def test_bind_mount_rw_and_ro(services, tmp_path):
    host = tmp_path / "share"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    r = ok(services.berth("run", "--rm", "-v", f"{host}:/share", "busybox", "sh", "-c",
                          "cat /share/in.txt; echo back > /share/out.txt"))
    assert r.stdout == "from host\n"
    assert (host / "out.txt").read_text() == "back\n"
    r = services.berth("run", "--rm", "--mount", f"type=bind,source={host},target=/share,readonly", "busybox",
                       "touch", "/share/nope")
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    assert not (host / "nope").exists()


def test_bind_target_symlink_cannot_escape(services, tmp_path):
    """A symlink in the container pointing out of it resolves inside the root, never on the host."""
    host = tmp_path / "src"
    host.mkdir()
    (host / "marker").write_text("x")
    escape = f"/tmp/berth-escape-{os.getpid()}"
    r = ok(services.berth("run", "--rm", "-v", f"{host}:/../../../..{escape}", "busybox", "cat", f"{escape}/marker"))
    assert r.stdout == "x"
    assert not os.path.exists(escape)


def test_tmpfs_and_read_only_root(services):
    r = ok(services.berth("run", "--rm", "--read-only", "--tmpfs", "/run:size=16m,mode=1777", "-w", "/work",
                          "busybox", "sh", "-c", "touch /run/ok && pwd && grep ' /run ' /proc/mounts"))
    lines = r.stdout.splitlines()
    assert lines[0] == "/work"
    assert "tmpfs /run tmpfs rw,nosuid,nodev,noexec" in lines[1] and "size=16384k" in lines[1]
    r = services.berth("run", "--rm", "--read-only", "busybox", "touch", "/x")
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    r = ok(services.berth("run", "--rm", "--mount", "type=tmpfs,target=/scratch,tmpfs-size=1m", "busybox",
                          "sh", "-c", "grep ' /scratch ' /proc/mounts"))
    assert "size=1024k" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["-v", "relative:dir"], "invalid volume specification"),
    (["-v", "a:b:c:d"], "invalid volume specification"),
    (["-v", "/tmp:/x:bogus"], "invalid mode"),
    (["--mount", "type=bind,target=/x"], "source is required"),
    (["--mount", "type=nfs,target=/x"], "unknown mount type"),
    (["--mount", "type=bind,src=/tmp,dst=/x,colour=blue"], "unexpected key"),
    (["--tmpfs", "run"], "must be absolute"),
])
def test_malformed_mount_flags(services, args, needle):
    one_line_error(services.berth("run", "--rm", *args, "busybox", "true"), 125, needle)


def test_missing_bind_source_refused_and_nothing_left(services):
    before = services.berth("ps", "-aq").stdout
    one_line_error(services.berth("run", "--rm", "-v", "/nonexistent-berth:/x", "busybox", "true"), 125,
                   "bind source path does not exist: /nonexistent-berth")
    assert services.berth("ps", "-aq").stdout == before
