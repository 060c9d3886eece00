"""Real registries for the e2e modules that pull and push: one of each kind per module,
so what one module pushes never shows in another's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """Open (no auth)."""
    reg = Registry("none").start()
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    """htpasswd basic auth (tests.registry.USERS)."""
    reg = Registry("htpasswd").start()
    try:
        yield reg
    finally:
        reg.close()
