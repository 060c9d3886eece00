"""The threaded gzip inflater under `unpack`: what gzip(1) accepts it accepts, what is
corrupt fails as one InvalidArgument, and the diff id is the uncompressed stream's."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.image.layers import CORRUPT_ERRORS, LayerStore, unpack
from tests.unit.image.test_layers import entry, make_tar


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(n: int = 50) -> bytes:
    return make_tar(*(entry(f"d{i % 5}/f{i}", data=bytes([i % 256]) * (i * 997)) for i in range(n)))


def test_gzip_layer_unpacks_and_hashes_the_uncompressed_stream(tmp_path: Path) -> None:
    plain = _tar()
    result = unpack(io.BytesIO(gzip.compress(plain)), tmp_path)
    assert result.diff_id == sha(plain)
    assert (tmp_path / "d3" / "f13").read_bytes() == bytes([13]) * 13 * 997


def test_multi_member_gzip_and_zero_padding_are_accepted(tmp_path: Path) -> None:
    plain = _tar()
    cut = len(plain) // 3
    blob = gzip.compress(plain[:cut]) + gzip.compress(plain[cut:]) + b"\0" * 1000
    assert unpack(io.BytesIO(blob), tmp_path).diff_id == sha(plain)


def test_verify_only_reads_the_whole_stream() -> None:
    plain = _tar() + b"\0" * 10240  # extra tar padding counts in the diff id
    assert unpack(io.BytesIO(gzip.compress(plain)), None).diff_id == sha(plain)


@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "garbage-after", "flipped"])
def test_corrupt_gzip_fails_cleanly_and_leaves_nothing(tmp_path: Path, damage: str) -> None:
    blob = bytearray(gzip.compress(_tar(200)))
    if damage == "truncated":
        blob = blob[: len(blob) * 2 // 3]
    elif damage == "bad-crc":
        blob[-8] ^= 0xFF
    elif damage == "garbage-after":
        blob += b"not gzip at all"
    else:
        blob[len(blob) // 2] ^= 0xFF
    layers = LayerStore(tmp_path / "layers", tmp_path / "tmp")
    with pytest.raises(InvalidArgument, match="invalid layer tar"):
        layers.stage(io.BytesIO(bytes(blob)))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_reader_error_reaches_the_caller(tmp_path: Path) -> None:
    class Broken:
        def __init__(self) -> None:
            self.data = io.BytesIO(gzip.compress(_tar(200)))
            self.calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("the registry hung up")
            return self.data.read(min(n, 4096))

    with pytest.raises(ConnectionResetError):
        unpack(Broken(), tmp_path)


def test_corrupt_errors_cover_the_inflate_library() -> None:
    from services.image import layers

    assert zlib.error in CORRUPT_ERRORS and layers._inflate_lib.error in CORRUPT_ERRORS


def test_inflate_memory_is_bounded_for_a_gzip_bomb() -> None:
    """128 MB of zeros is ~130 kB of gzip: inflating it must never hold much of it at once."""
    import tracemalloc

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    blob = b"".join(comp.compress(zeros) for _ in range(128)) + comp.flush()
    assert len(blob) < 1 << 20
    tracemalloc.start()
    try:
        result = unpack(io.BytesIO(blob), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.diff_id == sha(bytes(128 << 20))
    assert peak < 40 << 20, f"peak {peak >> 20} MB"
