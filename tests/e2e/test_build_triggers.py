"""What the builder supports that the other build tests leave out: ONBUILD triggers firing in
a child build, `ADD` of a URL refused offline with the line named, and `--platform` (on FROM
or for the whole build) choosing the manifest pulled from an index."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.e2e.assertions import ok, one_line_error
from tests.registry import Registry, make_image, make_index, push_index

pytestmark = pytest.mark.usefixtures("clean_host")


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}:1"


def _ctx(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _build(services, ctx: Path, tag: str, *extra: str):
    return ok(services.berth("build", "--progress", "plain", "-t", tag, *extra, str(ctx)))


def _inspect(services, ref: str) -> dict:
    return json.loads(ok(services.berth("image", "inspect", ref)).stdout)[0]


def test_onbuild_triggers_run_in_the_child_build_only(services, tmp_path):
    parent, child, grandchild = _tag("onb-parent"), _tag("onb-child"), _tag("onb-grand")
    try:
        _build(services, _ctx(tmp_path / "p", {"Dockerfile": (
            "FROM busybox\nONBUILD COPY marker.txt /from-child-context.txt\n"
            "ONBUILD RUN echo triggered > /triggered\n")}), parent)
        assert _inspect(services, parent)["Config"]["OnBuild"] == [
            "COPY marker.txt /from-child-context.txt", "RUN echo triggered > /triggered"]
        # the triggers did not run in the parent's own build
        assert services.berth("run", "--rm", parent, "test", "-e", "/triggered").returncode == 1

        r = _build(services, _ctx(tmp_path / "c", {"Dockerfile": f"FROM {parent}\nCMD cat /triggered "
                                                                  "/from-child-context.txt\n",
                                                   "marker.txt": "child's file\n"}), child)
        assert "Executing ONBUILD trigger: RUN echo triggered > /triggered" in r.stderr
        assert ok(services.berth("run", "--rm", child)).stdout == "triggered\nchild's file\n"
        assert not _inspect(services, child)["Config"].get("OnBuild")  # triggers are not inherited

        _build(services, _ctx(tmp_path / "g", {"Dockerfile": f"FROM {child}\nRUN test ! -e /again\n"}), grandchild)
        assert ok(services.berth("run", "--rm", grandchild)).stdout == "triggered\nchild's file\n"
    finally:
        for t in (grandchild, child, parent):
            services.berth("rmi", t)


def test_a_failing_onbuild_trigger_names_the_from_line(services, tmp_path):
    parent = _tag("onb-fail")
    try:
        _build(services, _ctx(tmp_path / "p", {"Dockerfile": "FROM busybox\nONBUILD RUN exit 4\n"}), parent)
        r = services.berth("build", "--progress", "plain", str(_ctx(tmp_path / "c", {
            "Dockerfile": f"# a comment\nFROM {parent}\nRUN echo never\n"})))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "Dockerfile:2: RUN exit code 4" in r.stderr.strip().splitlines()[-1]
        assert "never" not in r.stderr
    finally:
        services.berth("rmi", parent)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/file.txt", "https://example.com/a.tar.gz",
                                 "git@github.com:user/repo.git"])
def test_add_of_a_url_is_refused_offline_naming_the_line(services, tmp_path, url):
    ctx = _ctx(tmp_path, {"Dockerfile": f"FROM busybox\n\nADD {url} /dl/\n"})
    r = services.berth("build", "--progress", "plain", str(ctx))
    one_line_error(r, 1, f"Dockerfile:3: ADD failed: ADD {url}: downloading from a URL is not supported",
                   max_lines=len(r.stderr.strip().splitlines()))
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: ") and "Dockerfile:3" in last and "COPY" in last


@pytest.fixture(scope="module")
def multi_arch_ref(tmp_path_factory) -> Iterator[str]:
    """A two-platform index in a real registry: the images differ in /arch.txt."""
    reg = Registry("none").start()
    try:
        work = tmp_path_factory.mktemp("index")
        amd = make_image([images.busybox_rootfs_bytes({"arch.txt": b"amd64\n"})], arch="amd64", cmd=["sh"])
        arm = make_image([images.busybox_rootfs_bytes({"arch.txt": b"arm64\n"})], arch="arm64", cmd=["sh"])
        index = make_index([(amd, {"os": "linux", "architecture": "amd64"}),
                            (arm, {"os": "linux", "architecture": "arm64"})])
        ref = f"{reg.host}/build/multi:1"
        push_index(work, ref, index, [amd, arm])
        yield ref
    finally:
        reg.close()


@pytest.mark.parametrize(("dockerfile_platform", "build_flag", "want"), [
    ("--platform=linux/arm64 ", (), "arm64"),  # FROM's own flag
    ("", ("--platform", "linux/arm64"), "arm64"),  # the build's --platform, for every FROM
    ("--platform=linux/amd64 ", ("--platform", "linux/arm64"), "amd64"),  # FROM's flag wins
])
def test_platform_picks_the_manifest_pulled_for_from(services, tmp_path, multi_arch_ref, dockerfile_platform,
                                                     build_flag, want):
    tag = _tag("plat")
    ctx = _ctx(tmp_path, {"Dockerfile": f"FROM {dockerfile_platform}{multi_arch_ref}\nCMD cat /arch.txt\n"})
    try:
        r = _build(services, ctx, tag, *build_flag)
        assert "Pulling" in r.stderr or "Pull" in r.stderr
        assert ok(services.berth("run", "--rm", tag)).stdout == f"{want}\n"
        assert _inspect(services, tag)["Architecture"] == want
    finally:
        services.berth("rmi", tag)
        services.berth("rmi", multi_arch_ref)


def test_an_unknown_platform_names_the_from_line(services, tmp_path, multi_arch_ref):
    ctx = _ctx(tmp_path, {"Dockerfile": f"FROM --platform=linux/riscv64 {multi_arch_ref}\n"})
    r = services.berth("build", "--progress", "plain", str(ctx))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Dockerfile:1: FROM" in last and "linux/riscv64" in last, last
