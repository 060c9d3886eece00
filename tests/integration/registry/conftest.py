"""Real registries (open, htpasswd, token) for the module, and a private image store per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.image.registry import Credentials, Settings
from services.image.store import ImageStore
from tests.registry import USERS, Registry

ALICE = Credentials("alice", USERS["alice"])


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    reg = Registry("none").start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def basic_registry() -> Iterator[Registry]:
    reg = Registry("htpasswd").start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="session")
def token_registry() -> Iterator[Registry]:
    reg = Registry("token").start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    """An image store in this process, on a temp dir (SQLite)."""
    s = ImageStore(tmp_path / "image", f"sqlite:///{tmp_path / 'image.db'}")
    yield s


@pytest.fixture
def settings() -> Settings:
    return Settings()
