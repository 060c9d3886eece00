"""`berth cp` both ways, running and stopped containers, and symlinks that must not lead out."""

from __future__ import annotations

import io
import os
import tarfile
import uuid

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")


@pytest.fixture
def box(services):
    name = "cp-" + uuid.uuid4().hex[:6]
    ok(services.berth("run", "-d", "--name", name, "busybox", "sleep", "300"))
    yield name
    services.berth("rm", "-f", name)


def test_copy_in_and_out_keeps_modes_owners_and_symlinks(services, box, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chown(src / "sub" / "run.sh", 1234, 2345)
    os.chmod(src / "sub" / "run.sh", 0o4751)  # after chown, which clears setuid
    os.symlink("sub/run.sh", src / "link")
    ok(services.berth("cp", str(src), f"{box}:/tmp/"))          # into an existing directory
    ok(services.berth("cp", str(src), f"{box}:/tmp/renamed"))   # a new name
    r = ok(services.berth("exec", box, "sh", "-c",
                          "stat -c '%a %u %g' /tmp/tree/sub/run.sh; readlink /tmp/tree/link; "
                          "/tmp/renamed/link; ls /tmp/renamed"))
    assert r.stdout == "4751 1234 2345\nsub/run.sh\nran\nlink\nsub\n"
    out = tmp_path / "back"
    ok(services.berth("cp", f"{box}:/tmp/tree", str(out)))
    assert (out / "sub" / "run.sh").read_text() == "#!/bin/sh\necho ran\n"
    st = os.stat(out / "sub" / "run.sh")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4751, 1234, 2345)
    assert os.readlink(out / "link") == "sub/run.sh"
    hostname = ok(services.berth("exec", box, "hostname")).stdout
    ok(services.berth("cp", f"{box}:/etc/hostname", str(tmp_path)))
    assert (tmp_path / "hostname").read_text() == hostname
    r = services.berth("cp", f"{box}:/tmp/tree/sub", "-", input=b"")
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        names = tar.getnames()
    assert sorted(names) == ["sub", "sub/run.sh"]


def test_symlinks_never_lead_out_of_the_container(services, box, tmp_path):
    marker = "berth-cp-" + uuid.uuid4().hex[:8]
    f = tmp_path / marker
    f.write_text("inside\n")
    ok(services.berth("exec", box, "ln", "-s", "/etc", "/tmp/hostetc"))
    ok(services.berth("cp", str(f), f"{box}:/tmp/hostetc/"))
    try:
        assert not os.path.exists(f"/etc/{marker}")  # the host's /etc is untouched
        assert ok(services.berth("exec", box, "cat", f"/etc/{marker}")).stdout == "inside\n"
        ok(services.berth("exec", box, "sh", "-c", "echo container-passwd > /etc/passwd"))
        ok(services.berth("cp", f"{box}:/tmp/hostetc/passwd", str(tmp_path / "p")))
        assert (tmp_path / "p").read_text() == "container-passwd\n"
        ok(services.berth("exec", box, "ln", "-s", "../../../../../../etc", "/tmp/up"))
        ok(services.berth("cp", str(f), f"{box}:/tmp/up/"))
        assert not os.path.exists(f"/etc/{marker}")
    finally:
        if os.path.exists(f"/etc/{marker}"):
            os.unlink(f"/etc/{marker}")


def test_links_are_copied_as_links(services, box, tmp_path):
    ok(services.berth("exec", box, "sh", "-c", "mkdir /tmp/l && ln -s /etc /tmp/l/out && echo x > /tmp/l/f"))
    ok(services.berth("cp", f"{box}:/tmp/l", str(tmp_path / "dest")))
    assert os.readlink(tmp_path / "dest" / "out") == "/etc"  # kept, not followed
    assert (tmp_path / "dest" / "f").read_text() == "x\n"


def test_copy_with_a_stopped_container(services, tmp_path):
    ok(services.berth("create", "--name", "cold-cp", "busybox", "cat", "/data"))
    try:
        (tmp_path / "msg").write_text("hello from the host\n")
        ok(services.berth("cp", str(tmp_path / "msg"), "cold-cp:/data"))  # a new name at /data
        r = ok(services.berth("start", "cold-cp"))
        assert r.stdout.strip() == "cold-cp"
        ok(services.berth("wait", "cold-cp"))
        assert ok(services.berth("logs", "cold-cp")).stdout == "hello from the host\n"
        ok(services.berth("cp", "cold-cp:/data", str(tmp_path / "again")))  # and out of an exited one
        assert (tmp_path / "again").read_text() == "hello from the host\n"
    finally:
        services.berth("rm", "-f", "cold-cp")


def test_copy_errors_are_one_line(services, box, tmp_path):
    one_line_error(services.berth("cp", f"{box}:/no/such/file", str(tmp_path)), 1, "Could not find the file")
    one_line_error(services.berth("cp", str(tmp_path), "ghost:/tmp"), 1, "No such container: ghost")
    one_line_error(services.berth("cp", str(tmp_path / "missing"), f"{box}:/tmp"), 1, "no such file")
    one_line_error(services.berth("cp", str(tmp_path), f"{box}:/no/such/dir/"), 1, "does not exist")
    one_line_error(services.berth("cp", "a", "b"), 1, "at least one container")
