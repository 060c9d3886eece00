"""A real runtime service (and its supervisor) on a private socket, plus busybox rootfs snapshots."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import grpc
import pytest

from berth.runtime.v1 import runtime_pb2, runtime_pb2_grpc
from berth.types.v1 import types_pb2
from services.common import tarsafe
from tests import images
from tests.harness import Services
from tests.hostcheck import HostState

if os.geteuid() != 0:  # namespaces, mounts and cgroups need root: skip the whole directory
    collect_ignore_glob = ["test_*.py"]


class Runtime:
    """A client for the runtime service with helpers to build busybox containers."""

    def __init__(self, svc: Services, lower: Path, base: Path) -> None:
        self.svc = svc
        self.lower = lower
        self.base = base
        self.channel = grpc.insecure_channel(f"unix://{svc.socket('runtime')}")
        self.stub = runtime_pb2_grpc.RuntimeServiceStub(self.channel)
        self.created: list[str] = []

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{self.svc.socket('runtime')}")
        self.stub = runtime_pb2_grpc.RuntimeServiceStub(self.channel)

    def snapshot(self, cid: str) -> types_pb2.Mount:
        d = self.base / "snapshots" / cid
        (d / "upper").mkdir(parents=True)
        (d / "work").mkdir()
        return types_pb2.Mount(type="overlay", lowerdirs=[str(self.lower)], upperdir=str(d / "upper"),
                               workdir=str(d / "work"))

    def create(self, *args: str, name: str = "", **spec_kw) -> runtime_pb2.Container:
        cid = secrets.token_hex(32)
        resources = spec_kw.pop("resources", None)
        spec = runtime_pb2.ContainerSpec(image="busybox", args=list(args), rootfs=self.snapshot(cid),
                                         stop_timeout=spec_kw.pop("stop_timeout", -1), **spec_kw)
        if resources is not None:
            spec.resources.CopyFrom(resources)
        c = self.stub.Create(runtime_pb2.CreateRequest(id=cid, name=name, spec=spec))
        self.created.append(cid)
        return c

    def run(self, *args: str, timeout: float = 60, **spec_kw) -> tuple[int, bytes, bytes, runtime_pb2.Container]:
        """Create, attach, start, collect output until exit: (exit_code, stdout, stderr, container)."""
        c = self.create(*args, **spec_kw)
        code, out, err = self.attach_and_start(c.id, timeout)
        return code, out, err, self.stub.Inspect(runtime_pb2.ContainerRef(id=c.id))

    def attach_and_start(self, cid: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
        responses = self.stub.Attach(iter([runtime_pb2.AttachRequest(id=cid)]), timeout=timeout)
        first = next(responses)
        assert first.WhichOneof("item") is None
        started = self.stub.Start(runtime_pb2.ContainerRef(id=cid))
        out, err, code = b"", b"", None
        for r in responses:
            kind = r.WhichOneof("item")
            if kind == "output":
                if r.output.stream == types_pb2.Output.STDERR:
                    err += r.output.data
                else:
                    out += r.output.data
            elif kind == "exit_code":
                code = r.exit_code
        assert code is not None, started
        return code, out, err

    def remove_all(self) -> None:
        for cid in self.created:
            with contextlib.suppress(grpc.RpcError):
                self.stub.Remove(runtime_pb2.RemoveRequest(id=cid, force=True), timeout=30)
        self.created.clear()


@pytest.fixture(scope="session")
def busybox_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="berth-busybox-"))
    with tarfile.open(fileobj=io.BytesIO(images.busybox_rootfs_bytes())) as tar:
        tar.extractall(d, **tarsafe.EXTRACT_KWARGS)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def runtime_service(busybox_dir: Path):
    base = Path(tempfile.mkdtemp(prefix="berth-rt-test-"))
    svc = Services(base)
    svc.start("runtime")
    rt = Runtime(svc, busybox_dir, base)
    yield rt
    rt.remove_all()
    rt.channel.close()
    svc.close()


@pytest.fixture
def rt(runtime_service: Runtime):
    """The runtime client; fails the test if it leaves mounts, cgroups, netns or links behind."""
    before = HostState.capture(runtime_service.svc.cgroup_parent)
    yield runtime_service
    runtime_service.remove_all()
    deadline = time.monotonic() + 5
    while True:
        leaks = HostState.capture(runtime_service.svc.cgroup_parent).leaks_since(before)
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaks, f"host not clean: {leaks}"
