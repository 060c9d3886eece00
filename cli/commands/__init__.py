"""One module per noun. Each `register(app, only)` adds its commands to the app;
with `only` set, just that command (or group), so `berth run` does not pay for
building every other command's parser at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer


def add(app: typer.Typer, only: str | None, name: str, fn: Callable[..., Any], **kwargs: Any) -> None:
    if only is None or only == name:
        app.command(name, **kwargs)(fn)


def add_group(app: typer.Typer, only: str | None, name: str, group: typer.Typer,
              build: Callable[[], None]) -> None:
    if only is None or only == name:
        build()
        app.add_typer(group, name=name)
