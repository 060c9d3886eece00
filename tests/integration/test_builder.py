"""The Builder service over gRPC with RUN executed for real by the runtime service.

A real image service and a real runtime service (with its supervisor) run on
private sockets; `answer_runs` plays the api's part: it runs each RunStep as a
container on the step's snapshot mount and answers with the exit code.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from berth.image.v1 import image_pb2, image_pb2_grpc
from berth.runtime.v1 import network_pb2, runtime_pb2, runtime_pb2_grpc
from tests import images
from tests.harness import Services
from tests.hostcheck import HostState

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class Env:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.image_ch = grpc.insecure_channel(f"unix://{svc.socket('image')}")
        self.rt_ch = grpc.insecure_channel(f"unix://{svc.socket('runtime')}")
        self.images = image_pb2_grpc.ImageServiceStub(self.image_ch)
        self.builder = image_pb2_grpc.BuilderStub(self.image_ch)
        self.runtime = runtime_pb2_grpc.RuntimeServiceStub(self.rt_ch)

    def run_step(self, step: image_pb2.RunStep, out: list[bytes]) -> image_pb2.RunResult:
        """What the api does for a RunStep: a container on the step's mount, its exit code."""
        cid = secrets.token_hex(32)
        spec = runtime_pb2.ContainerSpec(image="build", args=list(step.args), env=list(step.env), cwd=step.cwd,
                                         user=step.user, rootfs=step.rootfs, stop_timeout=-1,
                                         network=network_pb2.NetworkConfig(mode=step.network or "none"))
        try:
            self.runtime.Create(runtime_pb2.CreateRequest(id=cid, spec=spec))
        except grpc.RpcError as exc:
            return image_pb2.RunResult(id=step.id, exit_code=-1, error=exc.details() or "")
        try:
            responses = self.runtime.Attach(iter([runtime_pb2.AttachRequest(id=cid)]), timeout=120)
            next(responses)
            self.runtime.Start(runtime_pb2.ContainerRef(id=cid))
            code = None
            for r in responses:
                kind = r.WhichOneof("item")
                if kind == "output":
                    out.append(r.output.data)
                elif kind == "exit_code":
                    code = r.exit_code
            return image_pb2.RunResult(id=step.id, exit_code=code if code is not None else -1)
        finally:
            with contextlib.suppress(grpc.RpcError):
                self.runtime.Remove(runtime_pb2.RemoveRequest(id=cid, force=True), timeout=30)

    def build(self, files: dict[str, bytes | str], **opts) -> tuple[list[image_pb2.BuildEvent], bytes]:
        """Build a context made of `files`; (events, RUN output). Raises grpc.RpcError on failure."""
        import queue

        inbox: queue.Queue = queue.Queue()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in files.items():
                raw = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(raw), 0o755 if name.endswith(".sh") else 0o644, 1700000000
                tar.addfile(info, io.BytesIO(raw))
        ctx = buf.getvalue()

        def inputs() -> Iterator[image_pb2.BuildInput]:
            yield image_pb2.BuildInput(options=image_pb2.BuildOptions(**opts))
            for i in range(0, len(ctx), 1 << 16):
                yield image_pb2.BuildInput(context=ctx[i:i + (1 << 16)])
            yield image_pb2.BuildInput(context_end=True)
            while (item := inbox.get()) is not None:
                yield image_pb2.BuildInput(run_result=item)

        events: list[image_pb2.BuildEvent] = []
        out: list[bytes] = []
        try:
            for ev in self.builder.Build(inputs(), timeout=300):
                events.append(ev)
                if ev.WhichOneof("item") == "run":
                    inbox.put(self.run_step(ev.run, out))
        finally:
            inbox.put(None)
        return events, b"".join(out)

    def close(self) -> None:
        self.image_ch.close()
        self.rt_ch.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    svc = Services(Path(tempfile.mkdtemp(prefix="berth-build-test-")))
    try:
        svc.start("image", "runtime")
        e = Env(svc)
        data = images.busybox_rootfs_bytes()

        def reqs():
            yield image_pb2.ImportRequest(meta=image_pb2.ImportMeta(reference="busybox:latest"))
            for i in range(0, len(data), 1 << 18):
                yield image_pb2.ImportRequest(chunk=data[i:i + (1 << 18)])
        e.images.Import(reqs())
        yield e
        e.close()
    finally:
        svc.close()


@pytest.fixture
def clean(env: Env):
    before = HostState.capture(env.svc.cgroup_parent)
    snaps = env.svc.root_dir / "image" / "snapshots"
    yield
    deadline = time.monotonic() + 5
    while True:
        leaks = HostState.capture(env.svc.cgroup_parent).leaks_since(before)
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not leaks, f"host not clean: {leaks}"
    assert not list(snaps.iterdir()), "a build left a snapshot behind"
    assert not [p for p in (env.svc.root_dir / "image" / "tmp").iterdir()], "a build left scratch files"


def final_image(events: list[image_pb2.BuildEvent]) -> image_pb2.Image:
    assert events[-1].WhichOneof("item") == "image"
    return events[-1].image


def steps(events: list[image_pb2.BuildEvent]) -> list[image_pb2.BuildStep]:
    return [e.step for e in events if e.WhichOneof("item") == "step" and e.step.done]


def run_image(env: Env, image: str, *args: str) -> tuple[int, bytes]:
    """Run a container of a built image (snapshot from the image service, container from the runtime)."""
    key = secrets.token_hex(32)
    snap = env.images.PrepareSnapshot(image_pb2.PrepareSnapshotRequest(key=key, image=image))
    try:
        out: list[bytes] = []
        res = env.run_step(image_pb2.RunStep(id="x", rootfs=snap.mount, args=list(args),
                                             env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], cwd="/"), out)
        return res.exit_code, b"".join(out)
    finally:
        env.images.RemoveSnapshot(image_pb2.RemoveSnapshotRequest(key=key))


MULTI = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS build
WORKDIR /src
COPY gen.sh ./
RUN ./gen.sh > /src/artefact.txt && echo built
RUN echo scratch-file > /src/only-in-build

FROM busybox
LABEL org.example.app=demo
ENV GREETING=hello \\
    TARGET=world
COPY --from=build /src/artefact.txt /app/
WORKDIR /app
EXPOSE 8080/tcp 53/udp
USER nobody
CMD ["cat", "/app/artefact.txt"]
"""


def test_multistage_build_runs_and_keeps_only_final_stage(env: Env, clean: None) -> None:
    events, out = env.build({"Dockerfile": MULTI, "gen.sh": "#!/bin/sh\necho artefact-$((6*7))\n"},
                            tags=["app:1.0"])
    assert b"built" in out
    img = final_image(events)
    assert img.repo_tags == ["app:1.0"]
    cfg = img.config
    assert cfg.cmd == ["cat", "/app/artefact.txt"]
    assert cfg.working_dir == "/app" and cfg.user == "nobody"
    assert "GREETING=hello" in cfg.env and "TARGET=world" in cfg.env
    assert sorted(cfg.exposed_ports) == ["53/udp", "8080/tcp"]
    assert cfg.labels["org.example.app"] == "demo"
    import json
    raw = json.loads(img.config_json)
    created_by = [h["created_by"] for h in raw["history"]]
    assert any(c.startswith("/bin/sh -c #(nop)  CMD [\"cat\" \"/app/artefact.txt\"]") for c in created_by)
    assert any(" COPY file:" in c and " in /app/ " in c for c in created_by)
    assert len(img.diff_ids) == 2  # busybox + the COPY (WORKDIR /app exists after COPY)
    code, data = run_image(env, "app:1.0", "cat", "/app/artefact.txt")
    assert code == 0 and data == b"artefact-42\n"
    code, _ = run_image(env, "app:1.0", "test", "-e", "/src/only-in-build")
    assert code == 1  # the build stage's files are not in the image


def test_rebuild_is_fully_cached_and_one_changed_file_invalidates_from_there(env: Env, clean: None) -> None:
    df = ("FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy.txt\nCOPY b.txt /b.txt\n"
          "RUN cat /b.txt >> /copy.txt\nCMD [\"cat\", \"/copy.txt\"]\n")
    files = {"Dockerfile": df, "a.txt": "A\n", "b.txt": "B\n"}
    first, _ = env.build(files, tags=["cached:1"])
    t0 = time.monotonic()
    again, _ = env.build(files, tags=["cached:1"])
    elapsed = time.monotonic() - t0
    print(f"fully cached rebuild: {elapsed:.3f}s")
    assert all(s.cached for s in steps(again) if not s.instruction.startswith("FROM"))
    assert not any(e.WhichOneof("item") == "run" for e in again)
    assert final_image(again).id == final_image(first).id
    changed, _ = env.build({**files, "b.txt": "B2\n"}, tags=["cached:2"])
    cached = {s.instruction: s.cached for s in steps(changed)}
    assert cached["COPY a.txt /a.txt"] and cached["RUN cat /a.txt > /copy.txt"]
    assert not cached["COPY b.txt /b.txt"] and not cached["RUN cat /b.txt >> /copy.txt"]
    code, data = run_image(env, "cached:2", "cat", "/copy.txt")
    assert (code, data) == (0, b"A\nB2\n")
    nocache, _ = env.build(files, tags=["cached:3"], no_cache=True)
    assert not any(s.cached for s in steps(nocache))


def test_failing_run_names_line_and_exit_code_and_leaves_nothing(env: Env, clean: None) -> None:
    before = {i.id for i in env.images.List(image_pb2.ListImagesRequest()).images}
    with pytest.raises(grpc.RpcError) as info:
        env.build({"Dockerfile": "FROM busybox\nRUN echo ok\n\nRUN echo failing; exit 3\n"}, tags=["broken:1"])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Dockerfile:4: RUN exit code 3" in info.value.details()
    after = {i.id for i in env.images.List(image_pb2.ListImagesRequest()).images}
    assert after == before


@pytest.mark.parametrize(("dockerfile", "files", "needle"), [
    ("FROM busybox\nFORM x\n", {}, "Dockerfile:2: unknown instruction: FORM"),
    ("FROM busybox\nCOPY missing.txt /x\n", {}, "Dockerfile:2: COPY failed: file not found"),
    ("FROM 127.0.0.1:1/nope/nothing:1\n", {}, "Dockerfile:1: FROM 127.0.0.1:1/nope/nothing:1"),
    ("FROM busybox\nCOPY --from=nostage /x /y\n", {}, "Dockerfile:2: COPY --from=nostage"),
])
def test_bad_input_names_the_line(env: Env, clean: None, dockerfile: str, files: dict, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        env.build({"Dockerfile": dockerfile, **files})
    assert needle in info.value.details()


def test_instructions_and_config(env: Env, clean: None) -> None:
    import json
    df = """\
FROM busybox
ARG VERSION=1
ENV APP_VERSION=${VERSION:-0} EMPTY=${NOPE:+set}
SHELL ["/bin/sh", "-c"]
RUN echo "v=$VERSION" > /v.txt
RUN ["/bin/sh", "-c", "echo exec-form > /e.txt"]
RUN <<EOF
echo heredoc > /h.txt
EOF
ADD layer.tar /opt/
COPY --chown=nobody:nogroup own.txt /own.txt
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD true
ONBUILD RUN echo child
ENTRYPOINT ["/bin/sh", "-c"]
"""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("inner/file.txt")
        info.size = 6
        t.addfile(info, io.BytesIO(b"inner\n"))
    events, _ = env.build({"Dockerfile": df, "layer.tar": tar.getvalue(), "own.txt": "x"},
                          tags=["cfg:1"], build_args={"VERSION": "7"})
    img = final_image(events)
    raw = json.loads(img.config_json)["config"]
    assert "APP_VERSION=7" in raw["Env"] and "EMPTY=" in raw["Env"]
    assert raw["Volumes"] == {"/data": {}} and raw["StopSignal"] == "SIGTERM"
    assert raw["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert raw["OnBuild"] == ["RUN echo child"] and raw["Shell"] == ["/bin/sh", "-c"]
    assert raw["Entrypoint"] == ["/bin/sh", "-c"] and "Cmd" not in raw
    history = json.loads(img.config_json)["history"]
    assert any(h["created_by"] == "|1 VERSION=7 /bin/sh -c echo \"v=$VERSION\" > /v.txt" for h in history)
    for path, want in (("/v.txt", b"v=7\n"), ("/e.txt", b"exec-form\n"), ("/h.txt", b"heredoc\n"),
                       ("/opt/inner/file.txt", b"inner\n")):
        code, data = run_image(env, "cfg:1", "cat", path)
        assert (code, data) == (0, want), path
    code, data = run_image(env, "cfg:1", "stat", "-c", "%u:%g", "/own.txt")
    assert data.strip() == b"65534:65534"


def test_dockerignore_and_target(env: Env, clean: None) -> None:
    df = "FROM busybox AS first\nCOPY . /ctx/\nFROM first AS second\nRUN exit 9\n"
    files = {"Dockerfile": df, ".dockerignore": "*.log\nsecret/\n!keep.log\n", "a.log": "x", "keep.log": "k",
             "secret/key": "s", "app.txt": "a"}
    events, _ = env.build(files, tags=["ign:1"], target="first")
    img = final_image(events)
    code, data = run_image(env, img.id, "ls", "-a", "/ctx")
    names = set(data.decode().split())
    assert {"app.txt", "keep.log", "Dockerfile", ".dockerignore"} <= names
    assert "a.log" not in names and "secret" not in names
    with pytest.raises(grpc.RpcError) as info:
        env.build(files, target="nosuch")
    assert "nosuch" in info.value.details()


def test_large_context_of_small_files(env: Env, clean: None) -> None:
    files: dict[str, bytes | str] = {"Dockerfile": "FROM busybox\nCOPY many /many\nRUN ls /many | wc -l\n"}
    for i in range(10_000):
        files[f"many/d{i % 50}/f{i}.txt"] = f"{i}\n"
    t0 = time.monotonic()
    events, out = env.build(files, tags=["many:1"])
    print(f"10,000-file context build: {time.monotonic() - t0:.2f}s")
    assert b"50" in out
    code, data = run_image(env, "many:1", "cat", "/many/d7/f9957.txt")
    assert (code, data) == (0, b"9957\n")
