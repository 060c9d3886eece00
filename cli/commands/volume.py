"""Volume commands: volume create/ls/inspect/rm/prune."""

from __future__ import annotations

import sys
from typing import Any

import typer

from cli import output
from cli.client import Client, CliError, ServiceClient, pairs
from cli.commands import add_group

volume_app = typer.Typer(help="Manage volumes", no_args_is_help=True)


def vol_client() -> ServiceClient:
    """The api's Volumes service on a fresh connection."""
    from berth.api.v1 import network_pb2_grpc
    from berth.runtime.v1 import storage_pb2

    return Client().service(network_pb2_grpc.VolumesStub, storage_pb2)


def create(name: str = typer.Argument("", help="Volume name (random if omitted)"),
           driver: str = typer.Option("local", "-d", "--driver", help="Volume driver name"),
           label: list[str] = typer.Option([], "--label", help="Set metadata for a volume")) -> None:
    """Create a volume."""
    c = vol_client()
    print(c.call("CreateVolume", c.pb.CreateVolumeRequest(name=name, driver=driver, labels=pairs(label))).name)


def ls(quiet: bool = typer.Option(False, "-q", "--quiet", help="Only display volume names"),
       filter_: list[str] = typer.Option([], "-f", "--filter", help="Filter (dangling=, name=, label=)")) -> None:
    """List volumes."""
    c = vol_client()
    vols = c.call("ListVolumes", c.pb.ListVolumesRequest(filters=pairs(filter_))).volumes
    if quiet:
        for v in vols:
            print(v.name)
        return
    output.table(["DRIVER", "VOLUME NAME"], [[v.driver, v.name] for v in vols])


def volume_dict(v: Any) -> dict:
    return {"CreatedAt": output.rfc3339(v.created_unix_nano), "Driver": v.driver, "Labels": dict(v.labels),
            "Mountpoint": v.mountpoint, "Name": v.name, "Options": {}, "Scope": "local"}


def inspect(volumes: list[str] = typer.Argument(..., help="Volumes"),
            format_: str = typer.Option("", "-f", "--format", help="Format with a Go-style template")) -> None:
    """Display detailed information on one or more volumes."""
    c = vol_client()
    found, failed = [], None
    for name in volumes:
        try:
            found.append(volume_dict(c.call("InspectVolume", c.pb.VolumeRef(name=name))))
        except CliError as err:
            failed = err
    if format_:
        for item in found:
            try:
                print(output.render_format(format_, item))
            except ValueError as err:
                raise CliError(f"berth: {err}", 1) from None
    else:
        output.dump_json(found)
    if failed is not None:
        raise failed


def rm(volumes: list[str] = typer.Argument(..., help="Volumes"),
       force: bool = typer.Option(False, "-f", "--force", help="Force the removal of one or more volumes")) -> None:
    """Remove one or more volumes."""
    c = vol_client()
    failed = False
    for name in volumes:
        try:
            c.call("RemoveVolume", c.pb.RemoveVolumeRequest(name=name, force=force))
            print(name)
        except CliError as err:
            if force and "no such volume" in str(err):
                continue
            failed = True
            sys.stderr.write(f"{err}\n")
    if failed:
        raise CliError("", 1)


def prune(force: bool = typer.Option(False, "-f", "--force", help="Do not prompt for confirmation"),
          all_: bool = typer.Option(False, "-a", "--all", help="Remove all unused volumes, not just anonymous ones"),
          ) -> None:
    """Remove unused volumes."""
    if not force:
        answer = input("WARNING! This will remove anonymous local volumes not used by at least one container.\n"
                       "Are you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return
    c = vol_client()
    resp = c.call("PruneVolumes", c.pb.PruneVolumesRequest(all=all_))
    if resp.deleted:
        print("Deleted Volumes:")
        for name in resp.deleted:
            print(name)
        print()
    print(f"Total reclaimed space: {output.human_size(resp.space_reclaimed)}")


def _build_group() -> None:
    volume_app.command("create")(create)
    volume_app.command("ls")(ls)
    volume_app.command("list", hidden=True)(ls)
    volume_app.command("inspect")(inspect)
    volume_app.command("rm")(rm)
    volume_app.command("remove", hidden=True)(rm)
    volume_app.command("prune")(prune)


def register(app: typer.Typer, only: str | None = None) -> None:
    add_group(app, only, "volume", volume_app, _build_group)
