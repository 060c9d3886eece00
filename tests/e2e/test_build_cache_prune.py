"""`berth builder prune` and the Build Cache row of `berth system df`, end to end.

The cache keeps each step's layer for the next build; pruning gives back what
only the cache holds, never what an image uses, and the next build is then a
real one again."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")

MB = 1 << 20


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}:1"


def _cache_row(services) -> list[str]:
    out = ok(services.berth("system", "df")).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("Build Cache"))
    return re.split(r"\s{2,}", line.strip())  # TYPE, TOTAL, ACTIVE, SIZE, RECLAIMABLE


def _bytes(text: str) -> float:
    m = re.match(r"([\d.]+)\s*([kMG]?B)", text)
    assert m, text
    return float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]


def _store_bytes(services) -> int:
    """Bytes of every layer file and blob in the image service's store."""
    total = 0
    for sub in ("layers", "blobs"):
        for dirpath, _dirs, files in os.walk(Path(services.root_dir) / "image" / sub):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def _build(services, ctx: Path, tag: str, *extra: str) -> str:
    return ok(services.berth("build", "--progress", "plain", "-t", tag, *extra, str(ctx))).stderr


def test_builder_prune_returns_cache_only_layers_and_keeps_images(services, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "Dockerfile").write_text("FROM busybox\nRUN head -c 1048576 /dev/urandom > /kept\n"
                                     "RUN echo kept > /x\nCMD cat /x\n")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "Dockerfile").write_text(f"FROM busybox\nRUN head -c 3145728 /dev/urandom > /junk-{uuid.uuid4().hex}\n")
    tag, junk_tag = _tag("keep"), _tag("junk")
    try:
        first = _build(services, keep, tag)
        assert "CACHED" not in first
        assert "CACHED" in _build(services, keep, tag)  # the second build comes from the cache
        _build(services, junk, junk_tag)
        ok(services.berth("rmi", junk_tag))  # its 3 MB layer is now held by the cache alone
        row = _cache_row(services)
        assert int(row[1]) >= 4 and _bytes(row[3]) >= 3 * MB and _bytes(row[4]) >= 3 * MB, row
        before = _store_bytes(services)

        r = ok(services.berth("builder", "prune", "-f"))  # dangling only
        assert r.stdout.startswith("Deleted build cache objects:\n"), r.stdout
        reclaimed = _bytes(r.stdout.strip().splitlines()[-1].removeprefix("Total reclaimed space: "))
        assert reclaimed >= 3 * MB * 2 * 0.99  # the layer dir and its blob
        assert before - _store_bytes(services) >= 6 * MB * 0.99
        assert _bytes(_cache_row(services)[3]) == 0
        assert "CACHED" in _build(services, keep, tag)  # the image's steps were not dangling

        r = ok(services.berth("builder", "prune", "-f", "--filter", "until=24h"))
        assert r.stdout == "Total reclaimed space: 0B\n"

        r = ok(services.berth("builder", "prune", "-a", "-f"))
        assert "Deleted build cache objects:" in r.stdout
        assert int(_cache_row(services)[1]) == 0
        assert ok(services.berth("run", "--rm", tag)).stdout == "kept\n"  # the image's layers stayed
        again = _build(services, keep, tag)
        assert "CACHED" not in again  # nothing left to reuse
    finally:
        services.berth("rmi", tag)
        services.berth("rmi", junk_tag)
        services.berth("builder", "prune", "-a", "-f")


def test_builder_prune_bad_input(services):
    one_line_error(services.berth("builder", "prune", "-f", "--filter", "label=x"), 125, "invalid filter 'label'")
    one_line_error(services.berth("builder", "prune", "-f", "--filter", "until=soon"), 125, "until=soon")
    r = ok(services.berth("builder", "prune", input="n\n"))
    assert "WARNING! This will remove all dangling build cache." in r.stdout
