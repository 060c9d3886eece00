"""Kill the image service (SIGKILL) in the middle of a pull: nothing partial is visible, the next pull works."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import grpc

from berth.image.v1 import image_pb2, image_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests import images
from tests.harness import Services
from tests.registry import FaultProxy, Registry, make_image, push_image


def test_sigkill_mid_pull_then_pull_completes(registry: Registry, tmp_path: Path) -> None:
    img = make_image([images.busybox_rootfs_bytes(), images.layer_tar({"big.bin": os.urandom(6 << 20)})],
                     compression="")
    push_image(tmp_path, f"{registry.host}/killed/app:1", img)
    proxy = FaultProxy(registry.port, rate=1 << 20)  # ~6 s for the big layer: time to kill mid-blob
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-registry-kill-")))
    try:
        svc.start("image")
        downloading = threading.Event()
        errors: list[grpc.RpcError] = []

        def run_pull() -> None:
            with grpc.insecure_channel(f"unix://{svc.socket('image')}") as ch:
                try:
                    for msg in registry_pb2_grpc.RegistryStub(ch).Pull(
                            registry_pb2.PullRequest(reference=f"{proxy.host}/killed/app:1")):
                        if msg.HasField("layer") and msg.layer.status == "Downloading" and msg.layer.current > 1 << 20:
                            downloading.set()
                except grpc.RpcError as err:
                    errors.append(err)

        t = threading.Thread(target=run_pull)
        t.start()
        assert downloading.wait(30), "the pull never got going"
        svc.stop("image", sig=signal.SIGKILL)
        t.join(30)
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE
        blobs = svc.root_dir / "image" / "blobs" / "sha256"
        layers = svc.root_dir / "image" / "layers"
        big = [d for d in img.blobs if len(img.blobs[d]) > 5 << 20][0]
        assert not (blobs / big.split(":")[1]).exists()  # no partial blob under its name
        assert list(layers.iterdir()) == [] or all(len(p.name) == 64 for p in layers.iterdir())
        leftovers = list((svc.root_dir / "image" / "tmp").iterdir())
        assert leftovers  # the staged data is in scratch space only...

        svc.start("image")  # ...and the restart sweeps it
        time.sleep(0.2)
        assert not any(p.exists() for p in leftovers)
        with grpc.insecure_channel(f"unix://{svc.socket('image')}") as ch:
            msgs = list(registry_pb2_grpc.RegistryStub(ch).Pull(
                registry_pb2.PullRequest(reference=f"{registry.host}/killed/app:1")))
            assert msgs[-1].result.image_id == img.id
            got = image_pb2_grpc.ImageServiceStub(ch).Inspect(
                image_pb2.InspectImageRequest(reference=f"{registry.host}/killed/app:1"))
            assert list(got.diff_ids) == img.diff_ids
        assert (blobs / big.split(":")[1]).stat().st_size == len(img.blobs[big])
    finally:
        proxy.close()
        svc.close()
