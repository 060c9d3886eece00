"""`berth builder prune`: Docker's build cache housekeeping.

The cache keeps every step's layer for the next build; `prune` returns them.
Without -a only records that keep a layer no image has go (Docker's "dangling"
build cache); with -a every record no running build uses. Layers an image still
uses always stay.
"""

from __future__ import annotations

import sys

import typer

from cli import output
from cli.client import CliError
from cli.commands import add_group

builder_app = typer.Typer(help="Manage builds", no_args_is_help=True)


def _until(filters: list[str]) -> int:
    """Unix seconds from `--filter until=...` (a duration ago, a timestamp or RFC 3339), or 0."""
    from cli.timeparse import parse_time

    until = 0
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"berth: bad format of filter (expected name=value): {item}", 125)
        if key not in ("until", "unused-for"):
            raise CliError(f"berth: invalid filter '{key}'", 125)
        try:
            until = parse_time(value) // 1_000_000_000
        except ValueError:
            raise CliError(f"berth: invalid filter '{item}': not a duration or timestamp", 125) from None
        if until <= 0:
            raise CliError(f"berth: invalid filter '{item}': before the epoch", 125)
    return until


def prune(all_: bool = typer.Option(False, "-a", "--all", help="Remove all unused build cache, not just dangling"),
          force: bool = typer.Option(False, "-f", "--force", help="Do not prompt for confirmation"),
          filter_: list[str] = typer.Option([], "--filter", help="Provide filter values (e.g. 'until=24h')"),
          ) -> None:
    """Remove build cache."""
    until = _until(filter_)
    if not force:
        what = "all build cache" if all_ else "all dangling build cache"
        sys.stdout.write(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return
    from cli.commands.registry import images_client

    api = images_client()
    from berth.image.v1 import image_pb2

    resp = api.call("PruneBuildCache", image_pb2.PruneBuildCacheRequest(all=all_, until_unix=until))
    if resp.deleted:
        print("Deleted build cache objects:")
        for record in resp.deleted:
            print(record)
        print()
    print(f"Total reclaimed space: {output.human_size(resp.space_reclaimed)}")


def _build() -> None:
    builder_app.command("prune")(prune)


def register(app: typer.Typer, only: str | None = None) -> None:
    add_group(app, only, "builder", builder_app, _build)
