"""Receiving a build context: hostile tars are refused without touching anything outside,
odd but harmless names arrive as they are, and .dockerignore still applies."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.image.build import context as ctxmod


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return [buf.getvalue()]


def _file(name: str, data: bytes = b"x\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_text("untouched\n")
    return d


def _scratch(tmp_path: Path) -> Path:
    s = tmp_path / "scratch"
    s.mkdir(exist_ok=True)
    return s


@pytest.mark.parametrize("members", [
    lambda out: [_link("a", str(out)), _file("a/victim", b"owned\n")],  # write through a symlinked dir
    lambda out: [_link("a", "../../outside"), _file("a/victim", b"owned\n")],
    lambda out: [_file("../outside/victim", b"owned\n")],  # climb out by name
    lambda out: [_link("h", str(out / "victim"), tarfile.LNKTYPE)],  # hard link to a host file
    lambda out: [_link("h", "../outside/victim", tarfile.LNKTYPE)],
    lambda out: [_dir(".wh.x"), _link(".wh.x", str(out)), _file(".wh.x/victim", b"owned\n")],  # dir, then link
    lambda out: [_dir("d"), _link("d", str(out)), _file("d/victim", b"owned\n")],
])
def test_hostile_contexts_are_refused_and_leave_nothing(tmp_path: Path, outside: Path, members) -> None:
    scratch = _scratch(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid build context"):
        ctxmod.receive(iter(_tar(*members(outside))), scratch)
    assert (outside / "victim").read_text() == "untouched\n"
    assert os.stat(outside / "victim").st_nlink == 1
    assert list(scratch.iterdir()) == []  # the half-received context is gone


def test_a_file_replaces_a_symlink_without_writing_through_it(tmp_path: Path, outside: Path) -> None:
    ctx = ctxmod.receive(iter(_tar(_link("f", str(outside / "victim")), _file("f", b"mine\n"))), _scratch(tmp_path))
    try:
        assert (ctx.root / "f").read_text() == "mine\n" and not (ctx.root / "f").is_symlink()
        assert (outside / "victim").read_text() == "untouched\n"
    finally:
        ctx.close()


def test_symlinks_arrive_verbatim_and_whiteout_like_names_stay_files(tmp_path: Path) -> None:
    wh_dir = tarfile.TarInfo(".wh.dir")
    wh_dir.type, wh_dir.mode, wh_dir.mtime = tarfile.DIRTYPE, 0o750, 1_600_000_000
    ctx = ctxmod.receive(iter(_tar(_link("etc-link", "/etc/passwd"), _file("d/.wh.keep", b"plain\n"),
                                   _file(".wh..wh..opq", b"also plain\n"), (wh_dir, None),
                                   _file(".wh.dir/inside", b"in\n"))), _scratch(tmp_path))
    try:
        st = os.lstat(ctx.root / ".wh.dir")
        assert (st.st_mode & 0o7777, st.st_mtime) == (0o750, 1_600_000_000)
        assert (ctx.root / ".wh.dir" / "inside").read_text() == "in\n"
        assert os.readlink(ctx.root / "etc-link") == "/etc/passwd"
        assert (ctx.root / "d" / ".wh.keep").read_text() == "plain\n"
        assert (ctx.root / ".wh..wh..opq").read_text() == "also plain\n"
        assert sorted(os.listdir(ctx.root / "d")) == [".wh.keep"]
    finally:
        ctx.close()


def test_dockerignore_applies_before_and_after_it_arrives(tmp_path: Path) -> None:
    ctx = ctxmod.receive(iter(_tar(_file("early.key"), _file(".dockerignore", b"*.key\nlogs/\n"),
                                   _file("late.key"), _file("logs/a.log"), _file("keep.txt"))),
                         _scratch(tmp_path))
    try:
        assert sorted(p.name for p in ctx.root.iterdir()) == [".dockerignore", "keep.txt"]
    finally:
        ctx.close()


@pytest.mark.parametrize("name", ["x" * 300, "/".join(["d" * 200] * 25) + "/f"])
def test_names_too_long_for_the_file_system_are_one_clear_error(tmp_path: Path, name: str) -> None:
    scratch = _scratch(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid build context: File name too long"):
        ctxmod.receive(iter(_tar(_file(name))), scratch)
    assert list(scratch.iterdir()) == []
