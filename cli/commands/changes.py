"""A container's file-system changes: diff, commit, export."""

from __future__ import annotations

import typer

from cli import output
from cli.client import Client
from cli.commands import add

KIND = {0: "C", 1: "A", 2: "D"}


def diff(container: str = typer.Argument(...)) -> None:
    """Inspect changes to files or directories on a container's filesystem."""
    client = Client()
    resp = client.call("DiffContainer", client.api.ContainerRequest(id=container))
    for change in resp.changes:
        print(f"{KIND[change.kind]} {change.path}")


def commit(container: str = typer.Argument(...),
           repository: str = typer.Argument("", metavar="[REPOSITORY[:TAG]]"),
           change: list[str] = typer.Option([], "-c", "--change", help="Apply Dockerfile instruction to the image"),
           message: str = typer.Option("", "-m", "--message", help="Commit message"),
           author: str = typer.Option("", "-a", "--author", help='Author (e.g., "John Hannibal Smith")'),
           pause: bool = typer.Option(True, "-p/--no-pause", "--pause/--no-pause",
                                      help="Pause container during commit")) -> None:
    """Create a new image from a container's changes."""
    client = Client()
    image = client.call("CommitContainer", client.api.CommitContainerRequest(
        id=container, reference=repository, changes=change, comment=message, author=author, pause=pause))
    print(image.id)


def export(container: str = typer.Argument(...),
           out: str = typer.Option("", "-o", "--output", help="Write to a file, instead of STDOUT")) -> None:
    """Export a container's filesystem as a tar archive."""
    client = Client()
    stream = client.stream(client.stub.ExportContainer(client.api.ContainerRequest(id=container)))
    output.write_stream((chunk.data for chunk in stream), out, "export")


def register(app: typer.Typer, only: str | None = None) -> None:
    for name, fn in (("diff", diff), ("commit", commit), ("export", export)):
        add(app, only, name, fn)
