"""diff, commit and export: a container's changes become an image (the roll-back story)."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")


@pytest.fixture
def box(services):
    name = "chg-" + uuid.uuid4().hex[:6]
    ok(services.berth("run", "-d", "--name", name, "-e", "GREETING=hi", "busybox", "sleep", "300"))
    # An addition, a change below an existing dir, a deletion, and a deleted+recreated dir.
    ok(services.berth("exec", name, "sh", "-c",
                      "mkdir -p /app && echo v1 > /app/version && echo x >> /etc/motd && rm /bin/vi "
                      "&& rm -rf /home && mkdir /home && touch /home/new"))
    yield name
    services.berth("rm", "-f", name)


def test_diff_lists_added_changed_and_deleted(services, box):
    lines = ok(services.berth("diff", box)).stdout.splitlines()
    assert "A /app" in lines and "A /app/version" in lines
    assert "C /etc" in lines and "A /etc/motd" in lines or "C /etc/motd" in lines
    assert "D /bin/vi" in lines and "C /bin" in lines
    assert "C /home" in lines and "A /home/new" in lines
    assert lines == sorted(lines, key=lambda line: line[2:])


def test_commit_makes_a_runnable_image_with_one_more_layer(services, box):
    tag = "committed-" + uuid.uuid4().hex[:6] + ":v2"
    image_id = ok(services.berth("commit", "-m", "add app", "-a", "tester", "--change", 'CMD ["cat", "/app/version"]',
                                 "--change", "ENV STAGE=prod", box, tag)).stdout.strip()
    assert image_id.startswith("sha256:")
    try:
        # The new image runs, shows the change, and keeps the container's env.
        assert ok(services.berth("run", "--rm", tag)).stdout == "v1\n"
        env = ok(services.berth("run", "--rm", tag, "env")).stdout
        assert "GREETING=hi" in env and "STAGE=prod" in env
        # Deletions travel as whiteouts: /bin/vi is gone, /home holds only the new file.
        r = services.berth("run", "--rm", tag, "sh", "-c", "ls /bin/vi; ls -A /home")
        assert r.stdout == "new\n" and r.returncode == 0 or "new" in r.stdout
        assert "No such file" in r.stderr
        base = json.loads(ok(services.berth("image", "inspect", "busybox")).stdout)[0]
        new = json.loads(ok(services.berth("image", "inspect", tag)).stdout)[0]
        assert new["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
        assert len(new["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
        assert new["Config"]["Cmd"] == ["cat", "/app/version"]
        hist = ok(services.berth("history", "--no-trunc", tag)).stdout.splitlines()
        assert "add app" in hist[1] and "sleep 300" in hist[1]
        # The container was paused for the commit, and runs on.
        assert ok(services.berth("inspect", "-f", "{{.State.Status}}", box)).stdout.strip() == "running"
    finally:
        services.berth("rmi", tag)


def test_roll_back_by_running_the_earlier_tag(services, box):
    repo = "app-" + uuid.uuid4().hex[:6]
    ok(services.berth("commit", "--change", 'CMD ["cat", "/app/version"]', box, f"{repo}:1"))
    ok(services.berth("exec", box, "sh", "-c", "echo v2 > /app/version"))
    # Docker records the container's own command (here `sleep 300`) unless told otherwise.
    ok(services.berth("commit", "-c", 'CMD ["cat", "/app/version"]', box, f"{repo}:2"))
    try:
        assert ok(services.berth("run", "--rm", f"{repo}:2")).stdout == "v2\n"
        assert ok(services.berth("run", "--rm", f"{repo}:1")).stdout == "v1\n"
    finally:
        services.berth("rmi", f"{repo}:1", f"{repo}:2")


def test_export_is_the_merged_file_system(services, box, tmp_path):
    out = tmp_path / "fs.tar"
    ok(services.berth("export", box, "-o", str(out)))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("app/version").read() == b"v1\n"
        assert "bin/sh" in names and "bin/vi" not in names
        assert "home/new" in names
        assert not any(".wh." in n for n in names)
    r = services.berth("export", box, input=b"")
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        assert "app/version" in tar.getnames()


def test_bad_input(services):
    one_line_error(services.berth("diff", "no-such-box"), 1, "No such container")
    one_line_error(services.berth("commit", "no-such-box"), 1, "No such container")
    one_line_error(services.berth("export", "no-such-box", "-o", "/tmp/never.tar"), 1, "No such container")
