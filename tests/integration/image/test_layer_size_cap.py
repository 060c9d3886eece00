"""The configurable layer size cap (issue 7): a gzip bomb imported into a real image
service with BERTH_MAX_LAYER_SIZE stops at the cap, as one INVALID_ARGUMENT, with
nothing stored and the scratch space empty."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc
from tests.harness import Services
from tests.integration.image.helpers import import_image, rpc_error


@pytest.fixture(scope="module")
def capped() -> Iterator[Services]:
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-image-cap-")), extra_env={"BERTH_MAX_LAYER_SIZE": "8m"})
    try:
        svc.start("image")
        yield svc
    finally:
        svc.close()


def _bomb(expanded: int) -> bytes:
    """A gzip'd tar of one file of zeros: tiny compressed, `expanded` bytes inflated."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = expanded
        zeros = io.BytesIO(bytes(1 << 20))
        tar.fileobj.write(info.tobuf(tar.format, tar.encoding, tar.errors))
        for _ in range(expanded >> 20):
            zeros.seek(0)
            tar.fileobj.write(zeros.read())
        tar.offset += tarfile.BLOCKSIZE + expanded
    return buf.getvalue()


def test_gzip_bomb_stops_at_the_cap(capped: Services) -> None:
    bomb = _bomb(256 << 20)
    assert len(bomb) < 1 << 20
    with grpc.insecure_channel(f"unix://{capped.socket('image')}") as ch:
        stub = image_pb2_grpc.ImageServiceStub(ch)
        err = rpc_error(import_image, stub, bomb, "bomb:1")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "size cap" in err.details() and "\n" not in err.details()
        assert list(stub.List(image_pb2.ListImagesRequest()).images) == []
        # A layer under the cap still imports.
        assert import_image(stub, _bomb(4 << 20), "small:1").repo_tags
    scratch = capped.root_dir / "image" / "tmp"
    assert os.listdir(scratch) == []
    assert sum(f.stat().st_size for f in (capped.root_dir / "image" / "blobs").rglob("*") if f.is_file()) < 8 << 20
