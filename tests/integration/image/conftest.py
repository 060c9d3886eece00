"""A real image service process on a private socket and state dir, driven over gRPC."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc
from tests.harness import Services


@pytest.fixture(scope="module")
def image_service() -> Iterator[Services]:
    base = Path(tempfile.mkdtemp(prefix="berth-image-test-"))
    svc = Services(base)
    try:
        svc.start("image")
        yield svc
    finally:
        svc.close()


@pytest.fixture
def stub(image_service: Services) -> Iterator[image_pb2_grpc.ImageServiceStub]:
    """A client; afterwards every snapshot and image the test made is removed."""
    with grpc.insecure_channel(f"unix://{image_service.socket('image')}") as ch:
        client = image_pb2_grpc.ImageServiceStub(ch)
        yield client
        for snap in client.ListSnapshots(image_pb2.ListSnapshotsRequest()).snapshots:
            client.RemoveSnapshot(image_pb2.RemoveSnapshotRequest(key=snap.key))
        for img in client.List(image_pb2.ListImagesRequest()).images:
            client.Remove(image_pb2.RemoveImageRequest(reference=img.id, force=True))


@pytest.fixture
def image_dir(image_service: Services) -> Path:
    return image_service.root_dir / "image"
