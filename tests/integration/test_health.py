"""Health checks through the api and runtime services: probes really run in the container.

A private set of services (so the runtime can be restarted here without disturbing the
session's) runs containers whose checks pass, fail, hang or are switched off, and an image
loaded from a `docker save` archive whose config carries a HEALTHCHECK. Intervals are
200 ms so that each case takes a second or two.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.api.v1 import api_pb2, api_pb2_grpc
from berth.image.v1 import image_pb2
from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from tests import images
from tests.harness import EXTERNAL, Services
from tests.hostcheck import HostState

pytestmark = pytest.mark.skipif(EXTERNAL or os.geteuid() != 0, reason="starts its own services; needs root")

MS = 1_000_000


class Api:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.channel = grpc.insecure_channel(f"unix://{svc.socket('api')}")
        self.stub = api_pb2_grpc.BerthStub(self.channel)
        self.created: list[str] = []

    def run(self, *command: str, image: str = "busybox", hc: types_pb2.HealthCheck | None = None
            ) -> runtime_pb2.Container:
        spec = api_pb2.RunSpec(image=image, command=list(command), healthcheck=hc)
        c = self.stub.CreateContainer(spec)
        self.created.append(c.id)
        return self.stub.StartContainer(api_pb2.ContainerRequest(id=c.id))

    def inspect(self, cid: str) -> runtime_pb2.Container:
        return self.stub.InspectContainer(api_pb2.ContainerRequest(id=cid))

    def wait_status(self, cid: str, status: str, timeout: float = 10) -> runtime_pb2.Container:
        deadline = time.monotonic() + timeout
        while True:
            c = self.inspect(cid)
            if c.health.status == status:
                return c
            assert time.monotonic() < deadline, f"health still {c.health.status!r}: {c.health}"
            time.sleep(0.05)

    def remove_all(self) -> None:
        for cid in self.created:
            with contextlib.suppress(grpc.RpcError):
                self.stub.RemoveContainer(runtime_pb2.RemoveRequest(id=cid, force=True), timeout=30)
        self.created.clear()


@pytest.fixture(scope="module")
def svc() -> Iterator[Services]:
    s = Services(Path(tempfile.mkdtemp(prefix="berth-health-")))
    try:
        s.start()
        tar = s.base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        r = s.berth("import", str(tar), "busybox:latest")
        assert r.returncode == 0, r.stderr
        yield s
    finally:
        s.close()


@pytest.fixture
def api(svc: Services) -> Iterator[Api]:
    """The api client; the test fails if it leaves mounts, cgroups, netns or links behind."""
    before = HostState.capture(svc.cgroup_parent)
    a = Api(svc)
    yield a
    a.remove_all()
    a.channel.close()
    deadline = time.monotonic() + 5
    while (leaks := HostState.capture(svc.cgroup_parent).leaks_since(before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not leaks, f"host not clean: {leaks}"


def shell_check(cmd: str, **kw: int) -> types_pb2.HealthCheck:
    return types_pb2.HealthCheck(test=["CMD-SHELL", cmd], **kw)


def processes(api: Api, cid: str, cmd: str) -> int:
    """How many of the container's processes run exactly ``cmd``."""
    procs = api.stub.TopContainer(api_pb2.ContainerRequest(id=cid)).processes
    return sum(1 for p in procs if p.cmd == cmd)


def test_passing_check_becomes_healthy_within_an_interval(api):
    c = api.run("sleep", "60", hc=shell_check("echo ok from $HOSTNAME", interval_ns=200 * MS))
    assert api.inspect(c.id).health.status == "starting"
    start = time.monotonic()
    healthy = api.wait_status(c.id, "healthy")
    assert time.monotonic() - start < 2.0
    entry = healthy.health.log[-1]
    assert entry.exit_code == 0 and entry.output == f"ok from {c.id[:12]}\n"  # ran inside the container
    assert entry.end_unix_nano >= entry.start_unix_nano > c.started_unix_nano
    assert healthy.health.failing_streak == 0
    time.sleep(1.6)  # keeps probing, keeps only the last five results
    again = api.inspect(c.id).health
    assert again.status == "healthy" and len(again.log) == 5
    assert again.log[-1].start_unix_nano > entry.start_unix_nano


def test_failing_check_becomes_unhealthy_after_retries(api):
    c = api.run("sleep", "60", hc=shell_check("echo nope >&2; exit 3", interval_ns=200 * MS, retries=3))
    seen = []
    deadline = time.monotonic() + 10
    while (h := api.inspect(c.id).health).status != "unhealthy":
        seen.append((h.status, h.failing_streak))
        assert time.monotonic() < deadline, h
        time.sleep(0.02)
    assert ("starting", 2) in seen and all(s == "starting" for s, _ in seen)  # not before the 3rd failure
    assert h.failing_streak >= 3
    assert h.log[-1].exit_code == 3 and h.log[-1].output == "nope\n"
    # Stopping ends the probes; a stopped container is not healthy.
    api.stub.StopContainer(runtime_pb2.StopRequest(id=c.id, timeout=1))
    stopped = api.inspect(c.id)
    assert stopped.status == "exited" and stopped.health.status == "unhealthy"
    n = len(stopped.health.log)
    time.sleep(0.6)
    assert len(api.inspect(c.id).health.log) == n


def test_recovery_resets_the_streak(api):
    c = api.run("sh", "-c", "sleep 1; touch /tmp/up; sleep 60",
                hc=shell_check("test -f /tmp/up", interval_ns=150 * MS, retries=2))
    api.wait_status(c.id, "unhealthy", timeout=5)
    h = api.wait_status(c.id, "healthy", timeout=5).health
    assert h.failing_streak == 0 and h.log[-1].exit_code == 0


def test_timeout_kills_the_probe_and_counts_as_failure(api):
    # The probe is a shell with a child: the whole probe goes, not just the shell.
    hc = shell_check("sleep 31; echo never", interval_ns=200 * MS, timeout_ns=300 * MS, retries=2)
    c = api.run("sleep", "60", hc=hc)
    h = api.wait_status(c.id, "unhealthy", timeout=10).health
    assert h.log[-1].exit_code == -1 and "exceeded timeout" in h.log[-1].output
    assert all(0.25e9 < e.end_unix_nano - e.start_unix_nano < 2e9 for e in h.log)
    time.sleep(1.5)  # six more probes: without the kill they would pile up
    assert processes(api, c.id, "sleep 31") <= 1


def test_start_period_failures_do_not_count(api):
    hc = shell_check("exit 1", interval_ns=200 * MS, retries=1, start_period_ns=1500 * MS,
                     start_interval_ns=200 * MS)
    c = api.run("sleep", "60", hc=hc)
    time.sleep(1.0)
    h = api.inspect(c.id).health
    assert h.status == "starting" and h.failing_streak == 0 and len(h.log) >= 2  # probed, not counted
    h = api.wait_status(c.id, "unhealthy", timeout=5).health
    assert h.log[-1].start_unix_nano - c.started_unix_nano > 1.4e9


def test_start_interval_probes_faster_while_starting(api):
    hc = shell_check("test -f /tmp/up", interval_ns=30_000 * MS, start_period_ns=20_000 * MS,
                     start_interval_ns=100 * MS)
    c = api.run("sh", "-c", "sleep 0.5; touch /tmp/up; sleep 60", hc=hc)
    start = time.monotonic()
    api.wait_status(c.id, "healthy", timeout=5)
    assert time.monotonic() - start < 2.0  # the 30 s interval would not have probed yet


def test_probe_that_cannot_run_is_a_failure(api):
    hc = types_pb2.HealthCheck(test=["CMD", "/no/such/probe"], interval_ns=100 * MS, retries=1)
    c = api.run("sleep", "60", hc=hc)
    h = api.wait_status(c.id, "unhealthy").health
    assert h.log[-1].exit_code == 127


def test_invalid_check_is_refused_and_leaves_nothing(api, svc):
    snapshots = svc.root_dir / "image" / "snapshots"
    before = set(os.listdir(snapshots)) if snapshots.is_dir() else set()
    for hc, needle in ((types_pb2.HealthCheck(test=["BOGUS", "x"]), "BOGUS"),
                       (shell_check("true", interval_ns=5), "Interval"),
                       (types_pb2.HealthCheck(test=["CMD"]), "needs a command")):
        with pytest.raises(grpc.RpcError) as err:
            api.stub.CreateContainer(api_pb2.RunSpec(image="busybox", command=["true"], healthcheck=hc))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    assert (set(os.listdir(snapshots)) if snapshots.is_dir() else set()) == before


# ---- the image's HEALTHCHECK ----------------------------------------------------------------

def save_archive_with_healthcheck(repo_tag: str, healthcheck: dict) -> bytes:
    """A `docker save` archive of busybox whose config has a Healthcheck (and Shell)."""
    layer = images.busybox_rootfs_bytes()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.loads(images.image_config([diff_id], ["sleep", "60"]))
    config["config"]["Healthcheck"] = healthcheck
    config["config"]["Shell"] = ["/bin/sh", "-c"]
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = hashlib.sha256(layer).hexdigest() + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [repo_tag], "Layers": [layer_name]}]).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in ((layer_name, layer), (config_name, config_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def checked_image(svc: Services) -> str:
    ref = "checked:1"
    data = save_archive_with_healthcheck(ref, {"Test": ["CMD-SHELL", "echo from-image"], "Interval": 200 * MS,
                                               "Timeout": 2000 * MS, "Retries": 2})
    channel = grpc.insecure_channel(f"unix://{svc.socket('api')}")
    try:
        stub = api_pb2_grpc.BerthStub(channel)
        stub.LoadImage(iter([image_pb2.LoadRequest(chunk=data)]))
        cfg = stub.InspectImage(image_pb2.InspectImageRequest(reference=ref)).config
    finally:
        channel.close()
    assert list(cfg.healthcheck.test) == ["CMD-SHELL", "echo from-image"]
    assert cfg.healthcheck.interval_ns == 200 * MS and cfg.healthcheck.retries == 2
    assert list(cfg.shell) == ["/bin/sh", "-c"]
    return ref


def test_image_healthcheck_is_used(api, checked_image):
    c = api.run(image=checked_image)
    assert list(c.spec.healthcheck.test) == ["CMD-SHELL", "echo from-image"]
    h = api.wait_status(c.id, "healthy", timeout=5).health
    assert h.log[-1].output == "from-image\n"


def test_run_overrides_inherit_the_rest_from_the_image(api, checked_image):
    c = api.run(image=checked_image, hc=types_pb2.HealthCheck(retries=7))
    hc = c.spec.healthcheck
    assert list(hc.test) == ["CMD-SHELL", "echo from-image"] and hc.retries == 7 and hc.interval_ns == 200 * MS
    c = api.run(image=checked_image, hc=shell_check("echo mine", start_period_ns=1000 * MS, start_interval_ns=100 * MS))
    assert list(c.spec.healthcheck.test) == ["CMD-SHELL", "echo mine"]
    assert c.spec.healthcheck.interval_ns == 200 * MS and c.spec.healthcheck.start_period_ns == 1000 * MS
    assert api.wait_status(c.id, "healthy", timeout=5).health.log[-1].output == "mine\n"


def test_no_healthcheck_disables_the_images(api, checked_image):
    c = api.run(image=checked_image, hc=types_pb2.HealthCheck(test=["NONE"]))
    assert list(c.spec.healthcheck.test) == ["NONE"]
    time.sleep(0.8)  # four intervals of the image's check
    got = api.inspect(c.id)
    assert got.status == "running" and not got.HasField("health")


# ---- a runtime restart -----------------------------------------------------------------------

def test_probing_resumes_after_a_runtime_restart(api, svc):
    c = api.run("sh", "-c", "while true; do sleep 1; done",
                hc=shell_check("test ! -f /tmp/sick", interval_ns=200 * MS, retries=1))
    api.wait_status(c.id, "healthy")
    svc.stop("runtime")  # SIGTERM: live restore, the container keeps running
    svc.start("runtime")
    assert api.inspect(c.id).health.status == "healthy"  # kept, not reset
    n = len(api.inspect(c.id).health.log)
    time.sleep(0.7)
    assert len(api.inspect(c.id).health.log) > n or n == 5
    execute = api.stub.ExecContainer(iter([runtime_pb2.ExecRequest(
        spec=runtime_pb2.ExecSpec(container=c.id, args=["touch", "/tmp/sick"]))]))
    assert [r.exit_code for r in execute if r.WhichOneof("item") == "exit_code"] == [0]
    h = api.wait_status(c.id, "unhealthy", timeout=5).health
    assert h.log[-1].exit_code == 1
