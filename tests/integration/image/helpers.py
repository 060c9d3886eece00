"""Small helpers shared by the image service integration tests."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc

CHUNK = 256 << 10


def chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def import_image(stub: image_pb2_grpc.ImageServiceStub, data: bytes, ref: str = "") -> image_pb2.Image:
    def reqs() -> Iterator[image_pb2.ImportRequest]:
        yield image_pb2.ImportRequest(meta=image_pb2.ImportMeta(reference=ref))
        for c in chunks(data):
            yield image_pb2.ImportRequest(chunk=c)
    return stub.Import(reqs())


def load(stub: image_pb2_grpc.ImageServiceStub, data: bytes) -> image_pb2.LoadResponse:
    return stub.Load(image_pb2.LoadRequest(chunk=c) for c in chunks(data))


def rpc_error(fn, *args) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    return info.value


def replace_member(archive: bytes, name: str, data: bytes) -> bytes:
    """Copy a tar, swapping one member's content."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            if m.name == name:
                m.size = len(data)
                dst.addfile(m, io.BytesIO(data))
            else:
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    return out.getvalue()


def state(image_dir: Path) -> dict[str, set[str]]:
    """What is on disk: blobs, layers, snapshots and scratch entries."""
    def ls(p: Path) -> set[str]:
        return set(os.listdir(p)) if p.exists() else set()
    return {"blobs": ls(image_dir / "blobs/sha256"), "layers": ls(image_dir / "layers"),
            "snapshots": ls(image_dir / "snapshots"), "tmp": ls(image_dir / "tmp")}
