"""`berth build` end to end: the real CLI, the api relay, the image service's builder,
RUN steps as real containers, the cache, multi-stage builds and a registry push."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.assertions import ok, one_line_error
from tests.registry import Registry, skopeo_inspect

pytestmark = pytest.mark.usefixtures("clean_host")


def _tag(prefix: str = "built") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}:1.0"


def _write(ctx: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def _inspect(services, ref: str) -> dict:
    return json.loads(ok(services.berth("image", "inspect", ref)).stdout)[0]


def _containers(services) -> set[str]:
    return set(ok(services.berth("ps", "-aq", "--no-trunc")).stdout.split())


def test_build_run_and_config(services, tmp_path):
    ctx = _write(tmp_path, {
        "Dockerfile": """# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE}
ARG GREETING=hello
ENV APP_HOME=/app \\
    MODE=prod
WORKDIR $APP_HOME
COPY greet.sh ./
COPY conf/ conf/
RUN chmod +x greet.sh && echo "$GREETING from build" > built.txt && rm -f /bin/vi
USER nobody
EXPOSE 8080/tcp
LABEL org.example.name="demo app" version=1
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD true
ENTRYPOINT ["/app/greet.sh"]
CMD ["world"]
""",
        "greet.sh": "#!/bin/sh\ncat /app/built.txt; echo \"hi $1 ($MODE) $(id -u)\"; cat /app/conf/a.conf\n",
        "conf/a.conf": "a=1\n",
        "secret.key": "do not send\n",
        ".dockerignore": "*.key\n",
    })
    tag = _tag()
    r = ok(services.berth("build", "-t", tag, "--build-arg", "GREETING=howdy", "--progress", "plain", str(ctx)))
    assert "RUN chmod +x greet.sh" in r.stderr and "naming to" in r.stderr
    try:
        assert ok(services.berth("run", "--rm", tag)).stdout == "howdy from build\nhi world (prod) 65534\na=1\n"
        assert ok(services.berth("run", "--rm", "--entrypoint", "ls", tag, "/app")).stdout.split() == \
            ["built.txt", "conf", "greet.sh"]  # secret.key was ignored
        assert services.berth("run", "--rm", "--entrypoint", "ls", tag, "/bin/vi").returncode != 0
        cfg = _inspect(services, tag)["Config"]
        assert cfg["Env"][-2:] == ["APP_HOME=/app", "MODE=prod"]
        assert cfg["WorkingDir"] == "/app" and cfg["User"] == "nobody"
        assert cfg["Entrypoint"] == ["/app/greet.sh"] and cfg["Cmd"] == ["world"]
        assert cfg["ExposedPorts"] == {"8080/tcp": {}} and cfg["Volumes"] == {"/data": {}}
        assert cfg["Labels"] == {"org.example.name": "demo app", "version": "1"}
        assert cfg["StopSignal"] == "SIGINT"
        assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]  # shell form, as Docker records it
        history = ok(services.berth("history", "--no-trunc", tag)).stdout
        # Docker's classic builder shapes: the shell command for RUN, "#(nop)" for metadata.
        assert "/bin/sh -c chmod +x greet.sh" in history and "COPY" in history
        assert '#(nop)  CMD ["world"]' in history
    finally:
        services.berth("rmi", tag)


def test_rebuild_is_cached_and_one_changed_file_invalidates_the_rest(services, tmp_path):
    ctx = _write(tmp_path, {
        "Dockerfile": "FROM busybox\nRUN echo one > /one\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy\n"
                      "COPY b.txt /b.txt\nCMD [\"cat\", \"/copy\", \"/b.txt\"]\n",
        "a.txt": "A1\n", "b.txt": "B1\n"})
    tag = _tag("cache")
    ok(services.berth("build", "-t", tag, "--progress", "plain", str(ctx)))
    try:
        first = _inspect(services, tag)["Id"]
        start = time.monotonic()
        r = ok(services.berth("build", "-t", tag, "--progress", "plain", str(ctx)))
        cached_time = time.monotonic() - start
        assert r.stderr.count("CACHED") == 5, r.stderr
        assert _inspect(services, tag)["Id"] == first
        assert cached_time < 5, cached_time
        (ctx / "b.txt").write_text("B2\n")
        r = ok(services.berth("build", "-t", tag, "--progress", "plain", str(ctx)))
        assert r.stderr.count("CACHED") == 3, r.stderr  # FROM-less steps before COPY b.txt
        assert ok(services.berth("run", "--rm", tag)).stdout == "A1\nB2\n"
        r = ok(services.berth("build", "--no-cache", "-t", tag, "--progress", "plain", str(ctx)))
        assert "CACHED" not in r.stderr
    finally:
        services.berth("rmi", tag)
        services.berth("image", "prune", "-f")


def test_multi_stage_build_keeps_only_the_artefact(services, tmp_path):
    ctx = _write(tmp_path, {
        "Dockerfile": """FROM busybox AS build
WORKDIR /src
COPY gen.sh .
RUN sh gen.sh > /src/artefact.txt && echo junk > /src/build-only.txt

FROM busybox AS test
RUN echo never-needed > /x

FROM busybox AS runtime
COPY --from=build /src/artefact.txt /opt/app/
CMD ["cat", "/opt/app/artefact.txt"]
""",
        "gen.sh": "for i in 1 2 3; do echo \"line $i\"; done\n"})
    tag = _tag("multi")
    r = ok(services.berth("build", "-t", tag, "--progress", "plain", str(ctx)))
    assert "never-needed" not in r.stderr  # an unused stage is not built
    try:
        assert ok(services.berth("run", "--rm", tag)).stdout == "line 1\nline 2\nline 3\n"
        assert services.berth("run", "--rm", tag, "ls", "/src").returncode != 0
        base_layers = len(_inspect(services, "busybox")["RootFS"]["Layers"])
        assert len(_inspect(services, tag)["RootFS"]["Layers"]) == base_layers + 1
        target = _tag("target")
        ok(services.berth("build", "--target", "build", "-t", target, str(ctx)))
        try:
            assert ok(services.berth("run", "--rm", target, "cat", "/src/build-only.txt")).stdout == "junk\n"
        finally:
            services.berth("rmi", target)
    finally:
        services.berth("rmi", tag)


def test_failing_run_names_the_step_and_leaves_nothing(services, tmp_path):
    ctx = _write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo before\nRUN echo oops >&2; exit 3\nCMD true\n"})
    images_before = ok(services.berth("images", "-q", "-a")).stdout
    containers_before = _containers(services)
    r = services.berth("build", "-t", _tag("fail"), "--progress", "plain", str(ctx))
    assert r.returncode == 1
    assert "oops" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Dockerfile:3" in last and "exit code 3" in last.lower() or "returned a non-zero code: 3" in last
    assert "Traceback" not in r.stderr
    assert ok(services.berth("images", "-q", "-a")).stdout == images_before
    assert _containers(services) == containers_before


@pytest.mark.parametrize(("dockerfile", "needle"), [
    ("FROM busybox\nFORM x\n", "Dockerfile:2"),
    ("FROM busybox\nCOPY missing.txt /\n", "missing.txt"),
    ("FROM 127.0.0.1:1/nothing/here:1\n", "127.0.0.1:1"),
    ("FROM busybox\nCOPY --from=nostage /x /\n", "nostage"),
])
def test_bad_dockerfiles_name_the_problem(services, tmp_path, dockerfile, needle):
    ctx = _write(tmp_path, {"Dockerfile": dockerfile})
    r = services.berth("build", "-t", _tag("bad"), "--progress", "plain", str(ctx))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert needle in r.stderr.strip().splitlines()[-1], r.stderr


def test_bad_cli_input(services, tmp_path):
    one_line_error(services.berth("build", str(tmp_path / "nope")), 1, "not found")
    one_line_error(services.berth("build", str(tmp_path)), 1, "Dockerfile not found")
    one_line_error(services.berth("build", "--progress", "fancy", str(tmp_path)), 125, "--progress")


def test_dockerfile_outside_the_context_and_build_args(services, tmp_path):
    ctx = _write(tmp_path / "ctx", {"data.txt": "payload\n"})
    other = tmp_path / "other.Dockerfile"
    other.write_text("FROM busybox\nARG V=1\nCOPY data.txt /data.txt\nRUN echo v$V > /v\nCMD cat /data.txt /v\n")
    tag = _tag("outside")
    ok(services.berth("build", "-f", str(other), "--build-arg", "V=2", "-t", tag, str(ctx)))
    try:
        assert ok(services.berth("run", "--rm", tag)).stdout == "payload\nv2\n"
    finally:
        services.berth("rmi", tag)


def test_large_context_of_many_small_files(services, tmp_path):
    ctx = tmp_path / "many"
    for i in range(100):
        d = ctx / f"d{i:03d}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"f{j:03d}").write_text(f"{i}-{j}\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx\nRUN ls -R /ctx | grep -c '^f' > /count\n"
                                    "CMD cat /count\n")
    tag = _tag("many")
    ok(services.berth("build", "-q", "-t", tag, str(ctx)), )
    try:
        assert ok(services.berth("run", "--rm", tag)).stdout == "10000\n"
    finally:
        services.berth("rmi", tag)


def test_built_image_pushes_and_is_valid_for_skopeo(services, tmp_path):
    reg = Registry("none").start()
    try:
        ctx = _write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo pushed > /p\nCMD cat /p\n"})
        ref = f"{reg.host}/me/built:1"
        ok(services.berth("build", "-t", ref, str(ctx)))
        ok(services.berth("push", ref))
        doc = skopeo_inspect(f"docker://{ref}")
        assert len(doc["Layers"]) == len(_inspect(services, ref)["RootFS"]["Layers"])
        ok(services.berth("rmi", ref))
        ok(services.berth("pull", ref))
        assert ok(services.berth("run", "--rm", ref)).stdout == "pushed\n"
        services.berth("rmi", ref)
    finally:
        reg.close()
