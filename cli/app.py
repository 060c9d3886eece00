"""The `berth` command line: Docker's command names, flags, output and exit codes."""

from __future__ import annotations

import sys

import click
import typer

from cli.client import CliError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Berth: run containers. Docker's commands, a codebase you can read.",
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _global(host: str = typer.Option("", "-H", "--host", envvar="BERTH_HOST",
                                     help="API socket, e.g. unix:///run/berth/api.sock")) -> None:
    import os

    if host:
        os.environ["BERTH_HOST"] = host


def _register() -> None:
    from cli.commands import containers, daemon, images, system

    for module in (containers, images, system):
        module.register(app)
    app.add_typer(images.image_app, name="image")
    app.add_typer(containers.container_app, name="container")
    app.add_typer(daemon.daemon_app, name="daemon")


def main() -> None:
    _register()
    try:
        rc = app(standalone_mode=False, prog_name="berth")
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CliError as err:
        if str(err):
            sys.stderr.write(f"{err}\n")
        sys.exit(err.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except click.UsageError as err:
        # Docker exits 125 for flag errors, with one line and a hint.
        cmd = err.ctx.command_path if err.ctx else "berth"
        sys.stderr.write(f"berth: {err.format_message()}\nSee '{cmd} --help'.\n")
        sys.exit(125)
    except click.ClickException as err:
        sys.stderr.write(f"berth: {err.format_message()}\n")
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
