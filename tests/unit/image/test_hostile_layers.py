"""Hostile layer tars (issue 7): each test builds the artefact itself and checks that
nothing lands outside the layer dir, the error is one clear InvalidArgument, and no
scratch file stays behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.image.layers import LayerStore
from tests.unit.image.test_layers import entry, make_tar


def _store(tmp_path: Path, **kwargs: int) -> LayerStore:
    return LayerStore(tmp_path / "layers", tmp_path / "tmp", **kwargs)


def _nothing_left(tmp_path: Path) -> None:
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "layers") == []


def test_device_nodes_and_setuid_files_stay_inside_the_layer(tmp_path: Path) -> None:
    layers = _store(tmp_path)
    tar = make_tar(entry("dev/fake-sda", type_=tarfile.BLKTYPE, dev=(8, 0), mode=0o660),
                   entry("bin/su", data=b"#!/bin/sh\n", mode=0o4755))
    staged = layers.stage(io.BytesIO(tar))
    try:
        st = os.lstat(staged.tmp / "dev" / "fake-sda")
        assert stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == 8
        assert os.lstat(staged.tmp / "bin" / "su").st_mode & 0o7777 == 0o4755
        # The host's own device and binaries are untouched (the node is a new inode here).
        assert os.lstat("/dev").st_ino != os.lstat(staged.tmp / "dev").st_ino
    finally:
        layers.discard(staged)
    _nothing_left(tmp_path)


def test_duplicate_entries_last_one_wins_and_never_escapes(tmp_path: Path) -> None:
    layers = _store(tmp_path)
    tar = make_tar(entry("a", data=b"first"), entry("a", type_=tarfile.SYMTYPE, linkname="/etc/passwd"),
                   entry("a", data=b"last"), entry("d", type_=tarfile.DIRTYPE, mode=0o755),
                   entry("d", data=b"now a file"))
    staged = layers.stage(io.BytesIO(tar))
    try:
        assert (staged.tmp / "a").read_bytes() == b"last"
        assert not (staged.tmp / "a").is_symlink()
        assert (staged.tmp / "d").read_bytes() == b"now a file"
    finally:
        layers.discard(staged)


@pytest.mark.parametrize("name", [
    "/".join(["d" * 200] * 20)[:4090] + "/f",   # 4,092 bytes over many components: beyond PATH_MAX in place
    "x" * 4096,                                 # one component of 4,096 bytes (NAME_MAX is 255)
], ids=["deep-path", "long-component"])
def test_names_of_4096_bytes_fail_cleanly(tmp_path: Path, name: str) -> None:
    layers = _store(tmp_path)
    with pytest.raises(InvalidArgument, match="too long"):
        layers.stage(io.BytesIO(make_tar(entry("ok", data=b"fine"), entry(name, data=b"long"))))
    _nothing_left(tmp_path)


def test_gzip_bomb_stops_at_the_size_cap(tmp_path: Path) -> None:
    layers = _store(tmp_path, max_layer_size=8 << 20)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 64 << 20

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self) -> bool:
                return True

            def readinto(self, b) -> int:  # noqa: ANN001
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros()))
    bomb = buf.getvalue()
    assert len(bomb) < (1 << 20)  # small compressed, huge expanded
    with pytest.raises(InvalidArgument, match="exceeds"):
        layers.stage(io.BytesIO(bomb))
    _nothing_left(tmp_path)


def test_truncated_tar_leaves_nothing(tmp_path: Path) -> None:
    layers = _store(tmp_path)
    tar = make_tar(entry("a", data=os.urandom(10000)))
    with pytest.raises(InvalidArgument):
        layers.stage(io.BytesIO(tar[:5000]))
    _nothing_left(tmp_path)
