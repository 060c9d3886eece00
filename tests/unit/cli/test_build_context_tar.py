"""The build context as the CLI sends it: Dockerfile and .dockerignore first, then the tree
sorted and depth first, owners root, whole-second mtimes, symlinks verbatim, hard links as
plain files (the builder may ignore the first name)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from cli.commands.build import context_chunks


def _members(root: Path) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    data = b"".join(context_chunks(root, ("Dockerfile", ".dockerignore")))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        contents = {m.name: tar.extractfile(m).read() for m in members if m.isreg()}  # type: ignore[union-attr]
    return members, contents


def test_order_owners_links_and_times(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z\n")
    (tmp_path / "a.txt").write_text("a\n")
    os.link(tmp_path / "a.txt", tmp_path / "b" / "hard.txt")
    os.symlink("/etc/passwd", tmp_path / "link")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    os.utime(tmp_path / "a.txt", (1_700_000_000.75, 1_700_000_000.75))
    os.chown(tmp_path / "a.txt", 1234, 5678)
    members, contents = _members(tmp_path)
    assert [m.name for m in members] == ["Dockerfile", "a.txt", "b", "b/hard.txt", "b/z.txt", "link"]
    by = {m.name: m for m in members}
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
    assert by["a.txt"].mtime == 1_700_000_000 and not by["a.txt"].pax_headers
    assert by["b/hard.txt"].isreg() and contents["b/hard.txt"] == b"a\n"
    assert by["link"].issym() and by["link"].linkname == "/etc/passwd"
    assert by["b"].isdir() and contents["b/z.txt"] == b"z\n"


def test_many_small_files_cost_one_header_each(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_text("x")
    data = b"".join(context_chunks(tmp_path))
    assert len(data) <= 50 * 1024 + 10240  # header + one data block per file, plus the tar's end
