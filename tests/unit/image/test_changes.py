"""Upper dirs as OCI layers, diffs against lower layers, and merged trees, on real dirs."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

from services.image.changes import ADDED, DELETED, MODIFIED, diff, write_layer, write_merged
from services.image.layers import OPAQUE_XATTR, unpack


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def _opaque(path: Path) -> None:
    os.setxattr(path, OPAQUE_XATTR, b"y")


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    """lower1 (bottom), lower2, upper: the shapes overlayfs leaves behind."""
    low1, low2, upper = tmp_path / "l1", tmp_path / "l2", tmp_path / "up"
    for d in (low1 / "etc", low1 / "data" / "old", low1 / "bin", low2 / "etc", upper / "etc", upper / "data",
              upper / "bin", upper / "new"):
        d.mkdir(parents=True, exist_ok=True)
    (low1 / "etc" / "passwd").write_text("root\n")
    (low1 / "etc" / "gone").write_text("x")
    (low1 / "data" / "old" / "f").write_text("old")
    (low1 / "bin" / "sh").write_text("sh")
    (low2 / "etc" / "hosts").write_text("h\n")
    (upper / "etc" / "passwd").write_text("root\nme\n")
    _whiteout(upper / "etc" / "gone")
    _opaque(upper / "data")
    (upper / "data" / "fresh").write_text("new")
    (upper / "new" / "file").write_text("a")
    os.link(upper / "new" / "file", upper / "new" / "hard")
    os.symlink("/etc/passwd", upper / "new" / "link")
    _whiteout(upper / "bin" / "sh")
    return low1, low2, upper


def test_layer_translates_whiteouts_and_opaque_dirs(tmp_path):
    _, _, upper = _layers(tmp_path)
    buf = io.BytesIO()
    write_layer(upper, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "etc/.wh.gone" in members and members["etc/.wh.gone"].isfile()
    assert "data/.wh..wh..opq" in members
    assert "bin/.wh.sh" in members
    assert members["new/hard"].islnk() and members["new/hard"].linkname == "new/file"
    assert members["new/link"].issym() and members["new/link"].linkname == "/etc/passwd"
    assert all(m.uname == "" for m in members.values())
    assert not any("trusted.overlay" in k for m in members.values() for k in m.pax_headers)


def test_layer_round_trips_through_unpack(tmp_path):
    _, _, upper = _layers(tmp_path)
    buf = io.BytesIO()
    write_layer(upper, buf)
    buf.seek(0)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack(buf, dest)
    st = os.lstat(dest / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(dest / "data", OPAQUE_XATTR) == b"y"
    assert (dest / "new" / "hard").read_text() == "a"


def test_diff_against_lower_layers(tmp_path):
    low1, low2, upper = _layers(tmp_path)
    changes = [(c.kind, c.path) for c in diff(upper, [str(low2), str(low1)])]
    assert (MODIFIED, "/etc") in changes
    assert (MODIFIED, "/etc/passwd") in changes
    assert (DELETED, "/etc/gone") in changes
    assert (DELETED, "/bin/sh") in changes
    assert (MODIFIED, "/data") in changes
    assert (ADDED, "/data/fresh") in changes
    assert (ADDED, "/new") in changes and (ADDED, "/new/file") in changes
    assert [p for _, p in changes] == sorted(p for _, p in changes)


def test_merged_tree_is_what_overlayfs_would_show(tmp_path):
    low1, low2, upper = _layers(tmp_path)
    buf = io.BytesIO()
    write_merged([str(upper), str(low2), str(low1)], buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("etc/passwd").read() == b"root\nme\n"
    assert {"etc/hosts", "etc/passwd", "data/fresh", "new/file", "new/hard", "new/link"} <= names
    assert "etc/gone" not in names and "bin/sh" not in names
    assert "data/old" not in names and "data/old/f" not in names  # hidden by the opaque dir
    assert not any(".wh." in n for n in names)


def test_the_runtimes_mount_points_are_no_change(tmp_path):
    low = tmp_path / "low"
    (low / "etc").mkdir(parents=True)
    (low / "etc" / "passwd").write_text("root\n")
    upper = tmp_path / "up"
    (upper / "etc").mkdir(parents=True)
    for name in ("hostname", "hosts", "resolv.conf"):
        (upper / "etc" / name).write_text("")  # what the runtime bind-mounts over
    (upper / "proc").mkdir()
    (upper / "x").write_text("mine")
    assert [(c.kind, c.path) for c in diff(upper, [str(low)])] == [(ADDED, "/x")]
    buf = io.BytesIO()
    write_layer(upper, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
    assert "x" in names and not {"etc/hosts", "etc/hostname", "etc/resolv.conf", "proc"} & set(names)
    (upper / "etc" / "hosts").write_text("10.0.0.1 db\n")  # written on purpose (COPY): kept
    assert (MODIFIED, "/etc") in [(c.kind, c.path) for c in diff(upper, [str(low)])]
