"""A real overlay mount of a snapshot, and start-up recovery after SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc
from tests import images
from tests.harness import Services
from tests.integration.image.helpers import import_image, load

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def mountpoint() -> Iterator[Path]:
    """A private dir to mount on; whatever is mounted there is unmounted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="berth-overlay-test-"))
    target = base / "rootfs"
    target.mkdir()
    try:
        yield target
    finally:
        while os.path.ismount(target):
            subprocess.run(["umount", str(target)], check=True)
        shutil.rmtree(base)


@needs_root
def test_overlay_mount_applies_whiteouts_and_opaque_dirs(stub, mountpoint: Path) -> None:  # noqa: ANN001
    lower = images.layer_tar({"keep": b"kept", "gone": b"gone", "opq": None, "opq/old": b"old",
                              "d": None, "d/stays": b"s"})
    upper = images.layer_tar({".wh.gone": b"", "opq": None, "opq/.wh..wh..opq": b"", "opq/new": b"new"})
    load(stub, images.docker_save_archive([lower, upper], "overlay:test"))
    snap = stub.PrepareSnapshot(image_pb2.PrepareSnapshotRequest(key="ovl", image="overlay:test"))
    m = snap.mount
    assert len(m.lowerdirs) == 2 and Path(m.lowerdirs[0], "opq/new").exists()  # topmost first
    opts = f"lowerdir={':'.join(m.lowerdirs)},upperdir={m.upperdir},workdir={m.workdir}"
    subprocess.run(["mount", "-t", m.type, "overlay", "-o", opts, str(mountpoint)], check=True)
    try:
        assert (mountpoint / "keep").read_bytes() == b"kept"
        assert not (mountpoint / "gone").exists()
        assert sorted(os.listdir(mountpoint / "opq")) == ["new"]
        assert (mountpoint / "d/stays").read_bytes() == b"s"
        assert not any(n.startswith(".wh.") for n in os.listdir(mountpoint))
        (mountpoint / "written").write_bytes(b"w")
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert Path(m.upperdir, "written").read_bytes() == b"w"
    assert not Path(m.lowerdirs[0], "written").exists()


def test_restart_after_sigkill_sweeps_leftovers() -> None:
    base = Path(tempfile.mkdtemp(prefix="berth-image-recovery-"))
    svc = Services(base)
    try:
        svc.start("image")
        with grpc.insecure_channel(f"unix://{svc.socket('image')}") as ch:
            img = import_image(image_pb2_grpc.ImageServiceStub(ch), images.busybox_rootfs_bytes(), "survivor")
        svc.stop("image", sig=signal.SIGKILL)
        image_dir = svc.root_dir / "image"
        # what a crash mid-write could leave: scratch files, and files renamed before their rows were written
        (image_dir / "tmp/layer-half").mkdir()
        (image_dir / "tmp/blob-half").write_bytes(b"partial")
        orphan_layer = image_dir / "layers" / ("ab" * 32)
        orphan_layer.mkdir()
        orphan_blob = image_dir / "blobs/sha256" / ("cd" * 32)
        orphan_blob.write_bytes(b"orphan")
        orphan_snapshot = image_dir / "snapshots" / "norow"
        (orphan_snapshot / "upper").mkdir(parents=True)

        start = time.monotonic()
        svc.start("image")
        assert time.monotonic() - start < 3
        assert not orphan_layer.exists() and not orphan_blob.exists() and not orphan_snapshot.exists()
        assert os.listdir(image_dir / "tmp") == []
        deadline = time.monotonic() + 5
        while any(p.name.startswith("trash-") for p in image_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(p.name.startswith("trash-") for p in image_dir.iterdir())
        with grpc.insecure_channel(f"unix://{svc.socket('image')}") as ch:
            stub = image_pb2_grpc.ImageServiceStub(ch)
            got = stub.Inspect(image_pb2.InspectImageRequest(reference="survivor"))
            assert got.id == img.id
            snap = stub.PrepareSnapshot(image_pb2.PrepareSnapshotRequest(key="after", image="survivor"))
            assert all(Path(p).is_dir() for p in snap.mount.lowerdirs)
    finally:
        svc.close()
