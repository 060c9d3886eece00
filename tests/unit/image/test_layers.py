"""Layer unpacking: chain ids, whiteouts, metadata, and hostile tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.image.layers import LayerStore, chain_ids, unpack
from tests import images

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def entry(name: str, *, data: bytes | None = None, type_: bytes = tarfile.REGTYPE, mode: int = 0o644,
          linkname: str = "", uid: int = 0, gid: int = 0, mtime: int = 1600000000,
          dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.linkname = linkname
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.devmajor, info.devminor = dev
    if data is not None:
        info.size = len(data)
    return info, data


def make_tar(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- chain ids ------------------------------------------------------------------


def test_chain_ids_follow_the_oci_spec() -> None:
    a, b, c = (sha(x) for x in (b"a", b"b", b"c"))
    ab = sha(f"{a} {b}".encode())
    assert chain_ids([]) == []
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b, c]) == [a, ab, sha(f"{ab} {c}".encode())]


# ---- whiteouts and metadata ------------------------------------------------------


@needs_root
def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    tar = make_tar(entry("dir", type_=tarfile.DIRTYPE, mode=0o755), entry("dir/.wh..wh..opq", data=b""),
                   entry("dir/new", data=b"n"), entry(".wh.gone", data=b""), entry("x/.wh.deep", data=b""))
    result = unpack(io.BytesIO(tar), tmp_path)
    assert result.diff_id == sha(tar)
    assert os.getxattr(tmp_path / "dir", "trusted.overlay.opaque") == b"y"
    for wh in (tmp_path / "gone", tmp_path / "x" / "deep"):
        st = os.lstat(wh)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not any(p.name.startswith(".wh.") for p in tmp_path.rglob("*"))
    assert (tmp_path / "dir" / "new").read_bytes() == b"n"


@needs_root
def test_metadata_is_preserved(tmp_path: Path) -> None:
    tar = make_tar(
        entry("bin", type_=tarfile.DIRTYPE, mode=0o755, mtime=1500000000),
        entry("bin/su", data=b"#!", mode=0o4755, uid=0, gid=0),
        entry("bin/owned", data=b"o", mode=0o640, uid=1234, gid=5678),
        entry("bin/link", type_=tarfile.SYMTYPE, linkname="/bin/su", uid=7, gid=8),
        entry("bin/hard", type_=tarfile.LNKTYPE, linkname="bin/owned"),
        entry("dev", type_=tarfile.DIRTYPE, mode=0o755),
        entry("dev/null", type_=tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        entry("fifo", type_=tarfile.FIFOTYPE, mode=0o600),
        entry("tmp", type_=tarfile.DIRTYPE, mode=0o1777),
    )
    result = unpack(io.BytesIO(tar), tmp_path)
    assert result.size == 3
    su = os.lstat(tmp_path / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime == 1600000000
    owned = os.lstat(tmp_path / "bin/owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 5678, 0o640)
    link = os.lstat(tmp_path / "bin/link")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(tmp_path / "bin/link") == "/bin/su"
    assert (link.st_uid, link.st_gid) == (7, 8)
    assert os.lstat(tmp_path / "bin/hard").st_ino == owned.st_ino
    null = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(tmp_path / "tmp").st_mode) == 0o1777
    assert os.lstat(tmp_path / "bin").st_mtime == 1500000000  # set after its children


def test_gzip_is_detected_and_diff_id_is_uncompressed(tmp_path: Path) -> None:
    tar = make_tar(entry("f", data=b"hello"))
    result = unpack(io.BytesIO(gzip.compress(tar)), tmp_path)
    assert result.diff_id == sha(tar)
    assert (tmp_path / "f").read_bytes() == b"hello"


def test_busybox_unpacks_fast(tmp_path: Path) -> None:
    data = images.busybox_rootfs_bytes()
    start = time.perf_counter()
    unpack(io.BytesIO(data), tmp_path)
    elapsed = time.perf_counter() - start
    assert (tmp_path / "bin/busybox").stat().st_size > 0
    assert elapsed < 1.0, f"busybox unpack took {elapsed * 1000:.0f} ms"


# ---- hostile tars -----------------------------------------------------------------


def _outside_untouched(tmp_path: Path) -> None:
    assert not (tmp_path / "victim").exists()
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("name", ["../victim", "a/../../victim", "./../victim"])
def test_dotdot_cannot_escape(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    with pytest.raises(InvalidArgument, match="outside"):
        unpack(io.BytesIO(make_tar(entry(name, data=b"pwned"))), dest)
    _outside_untouched(tmp_path)


def test_absolute_paths_stay_inside(tmp_path: Path) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    unpack(io.BytesIO(make_tar(entry(f"{tmp_path}/victim", data=b"x"))), dest)
    _outside_untouched(tmp_path)
    assert (dest / str(tmp_path).lstrip("/") / "victim").read_bytes() == b"x"


@pytest.mark.parametrize("target", ["/", "..", "../.."])
def test_writes_through_symlinks_are_refused(tmp_path: Path, target: str) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    victim = tmp_path / "victim"
    tar = make_tar(entry("escape", type_=tarfile.SYMTYPE, linkname=target if target != "/" else str(tmp_path)),
                   entry("escape/victim", data=b"pwned"))
    with pytest.raises(InvalidArgument, match="not a directory"):
        unpack(io.BytesIO(tar), dest)
    assert not victim.exists()


def test_symlink_replaced_not_followed_by_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"safe")
    tar = make_tar(entry("f", type_=tarfile.SYMTYPE, linkname=str(victim)), entry("f", data=b"pwned"))
    unpack(io.BytesIO(tar), dest)
    assert victim.read_bytes() == b"safe"
    assert (dest / "f").read_bytes() == b"pwned" and not (dest / "f").is_symlink()


@pytest.mark.parametrize("linkname", ["../victim", "/etc/passwd", "missing"])
def test_hardlinks_only_inside(tmp_path: Path, linkname: str) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    (tmp_path / "victim").write_bytes(b"safe")
    with pytest.raises(InvalidArgument):
        unpack(io.BytesIO(make_tar(entry("h", type_=tarfile.LNKTYPE, linkname=linkname))), dest)
    assert not (dest / "h").exists()


def test_hardlink_through_symlink_refused(tmp_path: Path) -> None:
    dest = tmp_path / "layer"
    dest.mkdir()
    (tmp_path / "victim").write_bytes(b"safe")
    tar = make_tar(entry("up", type_=tarfile.SYMTYPE, linkname=str(tmp_path)),
                   entry("h", type_=tarfile.LNKTYPE, linkname="up/victim"))
    with pytest.raises(InvalidArgument):
        unpack(io.BytesIO(tar), dest)
    assert not (dest / "h").exists()


# ---- corrupt input and staging -----------------------------------------------------


@pytest.mark.parametrize("mangle", [
    lambda t: t[: len(t) // 2 + 100],                 # truncated inside a member
    lambda t: gzip.compress(t)[:-40],                 # truncated gzip
    lambda t: b"\x1f\x8b" + b"garbage" * 100,         # not really gzip
    lambda t: b"\x00\x01" * 600,                       # not a tar
])
def test_corrupt_tar_is_invalid_and_leaves_nothing(tmp_path: Path, mangle) -> None:  # noqa: ANN001
    layers = LayerStore(tmp_path / "layers", tmp_path / "tmp")
    tar = make_tar(entry("a", data=os.urandom(4096)), entry("b", data=os.urandom(4096)))
    with pytest.raises(InvalidArgument):
        layers.stage(io.BytesIO(mangle(tar)))
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "layers") == []


def test_stage_commit_and_delete(tmp_path: Path) -> None:
    layers = LayerStore(tmp_path / "layers", tmp_path / "tmp")
    tar = make_tar(entry("f", data=b"1"))
    staged = layers.stage(io.BytesIO(tar))
    assert not layers.exists(staged.diff_id)
    layers.commit(staged, staged.diff_id)
    assert (layers.path(staged.diff_id) / "f").read_bytes() == b"1"
    again = layers.stage(io.BytesIO(tar))
    layers.commit(again, again.diff_id)  # already there: the copy is dropped
    assert layers.chain_ids() == [staged.diff_id]
    assert os.listdir(tmp_path / "tmp") == []
    layers.delete(staged.diff_id)
    assert layers.chain_ids() == [] and os.listdir(tmp_path / "tmp") == []


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd tool not installed")
def test_zstd_layers(tmp_path: Path) -> None:
    tar = make_tar(entry("z", data=b"zstd"))
    compressed = subprocess.run(["zstd", "-c", "-q"], input=tar, capture_output=True, check=True).stdout
    result = unpack(io.BytesIO(compressed), tmp_path)
    assert result.diff_id == sha(tar) and (tmp_path / "z").read_bytes() == b"zstd"
    with pytest.raises(InvalidArgument):
        unpack(io.BytesIO(compressed[:-8]), tmp_path)
