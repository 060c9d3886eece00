"""Reference parsing and normalisation, checked against what Docker does."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.image import reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "normalized", "familiar"), [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("user/app:1", "docker.io/user/app:1", "user/app:1"),
    ("host:5000/ns/repo:tag", "host:5000/ns/repo:tag", "host:5000/ns/repo:tag"),
    ("127.0.0.1:5000/me/bb:2", "127.0.0.1:5000/me/bb:2", "127.0.0.1:5000/me/bb:2"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("quay.io/a/b-c_d.e:V1.0-rc", "quay.io/a/b-c_d.e:V1.0-rc", "quay.io/a/b-c_d.e:V1.0-rc"),
    (f"repo@{DIGEST}", f"docker.io/library/repo@{DIGEST}", f"repo@{DIGEST}"),
])
def test_normalize_and_familiar(text: str, normalized: str, familiar: str) -> None:
    assert reference.normalize(text) == normalized
    assert reference.familiar(normalized) == familiar


def test_parts() -> None:
    ref = reference.parse("host:5000/ns/repo:tag")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("host:5000", "ns/repo", "tag", None)
    assert reference.parse("busybox").tag is None  # the default is applied explicitly


@pytest.mark.parametrize("text", [
    "", "Busybox", "user/Case", "a:b:c", "../../etc", "/abs", "repo:", "repo:-tag", ":tag", "re po",
    "repo@sha256:short", "repo:" + "t" * 129, "a" * 256, "repo//x", "-repo", "repo_",
])
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference format"):
        reference.parse(text)


def test_lowercase_message() -> None:
    with pytest.raises(InvalidArgument, match=r"repository name \(Busybox\) must be lowercase"):
        reference.parse("Busybox:1")


def test_tag_target_refuses_digest() -> None:
    with pytest.raises(InvalidArgument):
        reference.parse_tag_target(f"repo@{DIGEST}")
    assert str(reference.parse_tag_target("repo")) == "docker.io/library/repo:latest"
