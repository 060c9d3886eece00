"""`berth compose`: define and run multi-container applications from a compose file.

The orchestration lives in cli/compose/ (loader, graph, runspec, engine, logs, build);
this module only maps docker compose's commands and flags onto it.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from cli.client import CliError
from cli.commands import add_group

compose_app = typer.Typer(help="Define and run multi-container applications", no_args_is_help=True)


def _options(file: list[str] = typer.Option([], "-f", "--file", help="Compose configuration files"),
             project_name: str = typer.Option("", "-p", "--project-name", help="Project name"),
             env_file: str = typer.Option("", "--env-file", help="An alternate environment file"),
             ) -> None:
    """Define and run multi-container applications with Berth."""
    import click

    click.get_current_context().obj = {"files": file, "project_name": project_name, "env_file": env_file}


def _project(quiet: bool = False) -> Any:
    import click

    from cli.compose.loader import load_project, print_warnings

    ctx = click.get_current_context()
    while ctx is not None and not (ctx.obj and "files" in ctx.obj):
        ctx = ctx.parent
    opts = ctx.obj if ctx is not None else {}
    project = load_project(opts.get("files"), opts.get("project_name") or None, env_file=opts.get("env_file") or None)
    if not quiet:
        print_warnings(project)
    return project


def _engine(services: list[str] | None = None) -> Any:
    from cli.compose.engine import Engine

    project = _project()
    project.check_services(services or [])
    return Engine(project)


def up(services: list[str] = typer.Argument(None, help="Services (default: all)"),
       detach: bool = typer.Option(False, "-d", "--detach", help="Run containers in the background"),
       build: bool = typer.Option(False, "--build", help="Build images before starting containers"),
       pull: bool = typer.Option(False, "--pull", help="Pull images before starting containers"),
       force_recreate: bool = typer.Option(False, "--force-recreate",
                                           help="Recreate containers even if their configuration is unchanged"),
       remove_orphans: bool = typer.Option(False, "--remove-orphans",
                                           help="Remove containers for services not defined in the compose file"),
       ) -> None:
    """Create and start containers."""
    from cli.compose import graph
    from cli.compose.logs import show_logs

    engine = _engine(services)
    engine.up(services or [], build=build, pull=pull, force_recreate=force_recreate, remove_orphans=remove_orphans)
    if detach:
        return
    shown = graph.with_dependencies(engine.project.services, services or engine.project.services)
    try:
        show_logs(engine.client, engine.project.name, engine.containers(sorted(shown)), follow=True)
    except KeyboardInterrupt:
        sys.stderr.write("Gracefully stopping... (press Ctrl+C again to force)\n")
        engine.stop(sorted(shown))
        raise typer.Exit(130) from None


def down(volumes: bool = typer.Option(False, "-v", "--volumes", help="Remove named volumes declared in the file"),
         rmi: str = typer.Option("", "--rmi", help='Remove images used by services: "local" or "all"'),
         remove_orphans: bool = typer.Option(False, "--remove-orphans",
                                             help="Remove containers for services not defined in the compose file"),
         timeout: int = typer.Option(-1, "-t", "--timeout", help="Shutdown timeout in seconds")) -> None:
    """Stop and remove containers, networks (and with -v volumes, --rmi images)."""
    if rmi not in ("", "local", "all"):
        raise CliError(f'invalid --rmi value "{rmi}": "local" or "all"', 1)
    _engine().down(volumes=volumes, rmi=rmi, remove_orphans=remove_orphans, timeout=timeout)


def ps(services: list[str] = typer.Argument(None),
       all_: bool = typer.Option(False, "-a", "--all", help="Show all stopped containers too"),
       quiet: bool = typer.Option(False, "-q", "--quiet", help="Only display IDs")) -> None:
    """List containers."""
    from functools import partial

    from cli import output
    from cli.commands.containers import _command, _status
    from cli.commands.network import ports_column
    from cli.compose.runspec import LABEL_SERVICE

    engine = _engine(services)
    found = engine.containers(services or None, all_=all_)
    if quiet:
        for c in found:
            print(c.id)
        return
    ports = partial(ports_column, engine.client)

    def status(c: Any) -> str:
        text = _status(c)
        return f"{text} ({c.health.status})" if c.status == "running" and c.health.status else text

    output.table(["NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS", "PORTS"],
                 [[c.name, c.spec.image, _command(list(c.spec.args)), c.spec.labels.get(LABEL_SERVICE, ""),
                   output.ago(c.created_unix_nano / 1e9), status(c), ports(c)] for c in found])


def logs(services: list[str] = typer.Argument(None),
         follow: bool = typer.Option(False, "-f", "--follow", help="Follow log output"),
         tail: str = typer.Option("all", "-n", "--tail", help="Number of lines to show from the end")) -> None:
    """View output from containers."""
    import contextlib

    from cli.compose.logs import show_logs

    try:
        n = -1 if tail == "all" else int(tail)
    except ValueError:
        raise CliError(f"invalid value for --tail: {tail!r}", 1) from None
    engine = _engine(services)
    with contextlib.suppress(KeyboardInterrupt):
        show_logs(engine.client, engine.project.name, engine.containers(services or None), follow=follow, tail=n)


def pull(services: list[str] = typer.Argument(None),
         quiet: bool = typer.Option(False, "-q", "--quiet", help="Pull without printing progress information")
         ) -> None:
    """Pull service images."""
    engine = _engine(services)
    engine.pull(services or list(engine.project.services), quiet=quiet, ignore_failures=True)


def build(services: list[str] = typer.Argument(None),
          no_cache: bool = typer.Option(False, "--no-cache", help="Do not use cache when building the image"),
          pull_: bool = typer.Option(False, "--pull", help="Always attempt to pull a newer version of the image")
          ) -> None:
    """Build or rebuild services."""
    engine = _engine(services)
    engine.build(services or list(engine.project.services), no_cache=no_cache, pull=pull_)


def stop(services: list[str] = typer.Argument(None),
         timeout: int = typer.Option(-1, "-t", "--timeout", help="Shutdown timeout in seconds")) -> None:
    """Stop services."""
    _engine(services).stop(services or [], timeout)


def start(services: list[str] = typer.Argument(None)) -> None:
    """Start services."""
    _engine(services).start(services or [])


def restart(services: list[str] = typer.Argument(None),
            timeout: int = typer.Option(-1, "-t", "--timeout", help="Shutdown timeout in seconds")) -> None:
    """Restart service containers."""
    _engine(services).restart(services or [], timeout)


def rm(services: list[str] = typer.Argument(None),
       force: bool = typer.Option(False, "-f", "--force", help="Don't ask to confirm removal"),
       stop_: bool = typer.Option(False, "-s", "--stop", help="Stop the containers, if required, before removing"),
       volumes: bool = typer.Option(False, "-v", "--volumes", help="Remove anonymous volumes (always done)"),
       ) -> None:
    """Removes stopped service containers."""
    engine = _engine(services)
    if not force:
        names = [c.name for c in engine.containers(services or None) if stop_ or c.status != "running"]
        if not names:
            sys.stderr.write("No stopped containers\n")
            return
        answer = input(f"Going to remove {', '.join(names)}\nAre you sure? [yN] ")
        if answer.strip().lower() not in ("y", "yes"):
            return
    engine.rm(services or [], stop_first=stop_)


def config(quiet: bool = typer.Option(False, "-q", "--quiet", help="Only validate the configuration"),
           services: bool = typer.Option(False, "--services", help="Print the service names, one per line"),
           volumes: bool = typer.Option(False, "--volumes", help="Print the volume names, one per line")) -> None:
    """Parse, resolve and render the compose file in canonical format."""
    from cli.compose.yamlfile import dump_yaml

    project = _project()
    if quiet:
        return
    if services:
        from cli.compose import graph

        print("\n".join(graph.start_order(project.services)))
    elif volumes:
        print("\n".join(sorted(project.volumes)))
    else:
        sys.stdout.write(dump_yaml(project.as_config()))


EXEC_SETTINGS = {"allow_interspersed_args": False, "help_option_names": ["--help"]}


def exec_(service: str = typer.Argument(...),
          command: list[str] = typer.Argument(..., help="Command and arguments"),
          detach: bool = typer.Option(False, "-d", "--detach", help="Run the command in the background"),
          no_tty: bool = typer.Option(False, "-T", "--no-TTY", help="Disable pseudo-TTY allocation"),
          env: list[str] = typer.Option([], "-e", "--env", help="Set environment variables"),
          user: str = typer.Option("", "-u", "--user", help="Run the command as this user"),
          workdir: str = typer.Option("", "-w", "--workdir", help="Path to workdir directory for this command"),
          ) -> None:
    """Execute a command in a running service container."""
    from cli.commands.interactive import exec_ as container_exec
    from cli.terminal import DEFAULT_DETACH_KEYS

    engine = _engine([service])
    c = engine.running_container(service)
    tty = not no_tty and not detach and sys.stdin.isatty()
    container_exec(container=c.id, command=command, interactive=tty, tty=tty, detach=detach, env=env, user=user,
                   workdir=workdir, detach_keys=DEFAULT_DETACH_KEYS)


def _build_group() -> None:
    compose_app.callback()(_options)
    for fn in (up, down, ps, logs, pull, build, stop, start, restart, rm, config):
        compose_app.command(fn.__name__.rstrip("_"))(fn)
    compose_app.command("exec", context_settings=EXEC_SETTINGS)(exec_)


def register(app: typer.Typer, only: str | None = None) -> None:
    add_group(app, only, "compose", compose_app, _build_group)
