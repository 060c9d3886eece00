"""The content store publishes only verified, complete blobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.image.content import LocalContentStore, sha256_digest


@pytest.fixture
def store(tmp_path: Path) -> LocalContentStore:
    return LocalContentStore(tmp_path / "blobs", tmp_path / "tmp")


def test_write_and_read(store: LocalContentStore) -> None:
    digest = store.write_bytes(b"hello")
    assert digest == sha256_digest(b"hello")
    assert store.read(digest) == b"hello"
    assert store.path(digest).name == digest.split(":")[1]
    assert list(store.digests()) == [digest]
    assert store.write_bytes(b"hello", expected=digest) == digest  # idempotent


def test_mismatch_leaves_nothing(store: LocalContentStore) -> None:
    wrong = sha256_digest(b"other")
    with pytest.raises(InvalidArgument, match=wrong):
        store.write_bytes(b"hello", expected=wrong)
    assert list(store.digests()) == []
    assert os.listdir(store.scratch) == []


def test_streamed_writer_is_invisible_until_commit(store: LocalContentStore) -> None:
    w = store.writer()
    w.write(b"part one ")
    w.write(b"part two")
    digest = w.finish()
    assert not store.exists(digest)
    w.commit()
    assert store.read(digest) == b"part one part two"
    aborted = store.writer()
    aborted.write(b"never")
    aborted.abort()
    assert os.listdir(store.scratch) == []


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64])
def test_digest_is_never_a_path(store: LocalContentStore, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        store.path(bad)
