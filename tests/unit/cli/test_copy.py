"""`cp` on the host side: a hostile archive cannot write outside the destination."""

from __future__ import annotations

import io
import tarfile

import pytest

from cli.commands.copy import _rename, split_arg
from services.common import tarsafe


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    buf.seek(0)
    return buf


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def extract(buf: io.BytesIO, dest, new_top=None) -> None:  # noqa: ANN001
    with tarfile.open(fileobj=buf, mode="r:") as tar:
        for member in _rename(tar, new_top):
            tarsafe.extract(tar, member, str(dest))


@pytest.mark.parametrize("members", [
    [link("out", "/"), (tarfile.TarInfo("out/evil"), b"x")],          # through a symlink
    [(tarfile.TarInfo("../evil"), b"x")],                             # dot-dot
    [link("hard", "../outside/evil", tarfile.LNKTYPE)],               # a hard link out
])
def test_hostile_archives_are_refused(tmp_path, members):
    dest = tmp_path / "dest"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil").write_text("host file")
    dest.mkdir()
    with pytest.raises(tarfile.TarError):
        extract(archive(*members), dest)
    assert (tmp_path / "outside" / "evil").read_text() == "host file"
    assert not (tmp_path / "evil").exists()


def test_absolute_names_land_inside_and_modes_are_kept(tmp_path):
    info = tarfile.TarInfo("/abs")
    info.mode = 0o4755
    extract(archive((info, b"x")), tmp_path)
    assert (tmp_path / "abs").stat().st_mode & 0o7777 == 0o4755


def test_rename_top_level(tmp_path):
    d = tarfile.TarInfo("dir")
    d.type = tarfile.DIRTYPE
    extract(archive((d, b""), (tarfile.TarInfo("dir/f"), b"x")), tmp_path, "new")
    assert (tmp_path / "new" / "f").read_text() == "x"
    d = tarfile.TarInfo(".")
    d.type = tarfile.DIRTYPE
    extract(archive((d, b""), (tarfile.TarInfo("./g"), b"y")), tmp_path, "contents")
    assert (tmp_path / "contents" / "g").read_text() == "y"


def test_split_arg():
    assert split_arg("box:/etc") == ("box", "/etc")
    assert split_arg("./a:b") == (None, "./a:b")
    assert split_arg("/x:y") == (None, "/x:y")
    assert split_arg("-") == (None, "-")
    assert split_arg("plain") == (None, "plain")
