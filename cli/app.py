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
                                     help="API socket, e.g. unix:///run/berth/api.sock or tcp://HOST:2376"),
            tlsverify: bool = typer.Option(False, "--tlsverify", "--tls",
                                           help="Use mutual TLS (the only way to reach a tcp:// host)"),
            tlscacert: str = typer.Option("", "--tlscacert", help="Trust certs signed only by this CA"),
            tlscert: str = typer.Option("", "--tlscert", help="Path to the client's TLS certificate"),
            tlskey: str = typer.Option("", "--tlskey", help="Path to the client's TLS key")) -> None:
    import os

    if host:
        os.environ["BERTH_HOST"] = host
    from cli import client

    client.TLS.update(verify=tlsverify or bool(tlscacert or tlscert or tlskey),
                      cacert=tlscacert, cert=tlscert, key=tlskey)


# Which module defines each top-level command: `berth run` imports and builds only
# what it runs (typer builds every registered command's parser at start-up).
MODULES = {
    **dict.fromkeys(("run", "create", "start", "stop", "kill", "rm", "wait", "ps", "logs", "inspect",
                     "container"), "containers"),
    **dict.fromkeys(("images", "import", "load", "rmi", "tag", "image"), "images"),
    **dict.fromkeys(("info", "version"), "system"),
    **dict.fromkeys(("pull", "push", "login", "logout", "save", "history", "system"), "registry"),
    "daemon": "daemon",
    **dict.fromkeys(("attach", "exec"), "interactive"),
    "cp": "copy",
    **dict.fromkeys(("network", "port"), "network"),
    "volume": "volume",
    "compose": "compose",
    **dict.fromkeys(("diff", "commit", "export"), "changes"),
    "build": "build",
    "builder": "builder",
    **dict.fromkeys(("pause", "unpause", "restart", "rename", "update", "top", "stats", "events"), "operate"),
}


GLOBAL_WITH_VALUE = ("-H", "--host", "--tlscacert", "--tlscert", "--tlskey")


def _command_name(argv: list[str]) -> str | None:
    """The first word that is not a global option (or its value)."""
    args = iter(argv)
    for arg in args:
        if arg in GLOBAL_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _register(argv: list[str]) -> None:
    import importlib

    name = _command_name(argv)
    only = name if name in MODULES else None
    for module in [MODULES[name]] if only else sorted(set(MODULES.values())):
        importlib.import_module(f"cli.commands.{module}").register(app, only)


def main() -> None:
    _register(sys.argv[1:])
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
