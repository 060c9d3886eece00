"""System commands: info, version."""

from __future__ import annotations

import os

import typer

from cli.client import Client
from cli.commands import add


def info() -> None:
    """Display system-wide information."""
    client = Client()
    resp = client.call("Info", client.types.Empty())
    print(f"Server Version: {resp.version}")
    print(f"Containers: {resp.containers}")
    print(f" Running: {resp.containers_running}")
    print(f" Stopped: {resp.containers - resp.containers_running}")
    print(f"Images: {resp.images}")
    print(f"Kernel Version: {resp.kernel} (shared by every container: no guest OS)")
    print(f"Berth Root Dir: {resp.root_dir}")


def version() -> None:
    """Show the Berth version information."""
    print(f"Client:\n Version: 0.1.0\n Kernel: {os.uname().release}")
    try:
        client = Client()
        resp = client.call("Info", client.types.Empty(), timeout=5)
        print(f"Server:\n Version: {resp.version}")
    except Exception as err:  # noqa: BLE001 - the server part is optional here
        print(f"Server: {err}")


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "info", info)
    add(app, only, "version", version)
