"""`berth attach` and `berth exec`: streams into a running container.

Both use ``cli.terminal.Session``: raw mode and window size when a TTY is involved,
stdin pumped over the bidi stream, the detach keys (attach; `exec` has them too, as
in Docker). Detaching leaves the container (and an exec'd process) running.
"""

from __future__ import annotations

import os
import signal

import typer

from cli.client import Client, CliError
from cli.commands import add
from cli.terminal import DEFAULT_DETACH_KEYS, Session, parse_detach_keys, window_size, write_output


def _keys(text: str) -> bytes:
    try:
        return parse_detach_keys(text)
    except ValueError as err:
        raise CliError(f"berth: invalid detach keys: {err}", 125) from None


def _handler(client: Client):  # noqa: ANN202
    def handle(resp) -> int | None:  # noqa: ANN001
        kind = resp.WhichOneof("item")
        if kind == "output":
            write_output(resp.output.data, resp.output.stream == client.types.Output.STDERR)
        elif kind == "exit_code":
            return resp.exit_code
        return None

    return handle


def _leave(_signum: int, _frame: object) -> None:
    raise CliError("", 129)


def attach(container: str = typer.Argument(...),
           no_stdin: bool = typer.Option(False, "--no-stdin", help="Do not attach STDIN"),
           detach_keys: str = typer.Option(DEFAULT_DETACH_KEYS, "--detach-keys",
                                           help="Key sequence for detaching a container")) -> None:
    """Attach local standard input, output, and error streams to a running container."""
    raise typer.Exit(attach_session(Client(), container, interactive=not no_stdin, detach_keys=detach_keys))


def attach_session(client: Client, container: str, *, interactive: bool, detach_keys: str,
                   start: bool = False) -> int:
    """Attach (`attach`, or `start -a` with `start`) and stream until exit or detach.

    With a TTY, the terminal goes raw; without one, signals are forwarded by the
    container's own stop signal path (Ctrl-C detaches `attach` like Docker's --sig-proxy)."""
    keys = _keys(detach_keys)
    info = client.call("InspectContainer", client.api.ContainerRequest(id=container))
    tty = info.spec.tty
    interactive = info.spec.open_stdin and interactive
    if tty and interactive and not os.isatty(0):
        raise CliError("the input device is not a TTY", 1)
    rt = client.runtime
    session = Session(tty=tty, interactive=interactive, detach_keys=keys,
                      stdin_request=lambda data: rt.AttachRequest(stdin=data),
                      resize_request=lambda r, c: rt.AttachRequest(resize=rt.Resize(rows=r, cols=c)),
                      close_request=lambda: rt.AttachRequest(close_stdin=True))
    signal.signal(signal.SIGHUP, _leave)
    try:
        code = session.run(rt.AttachRequest(id=info.id, start=start), client.stub.AttachContainer,
                           _handler(client), on_started=session.resize if tty else None)
    except client.grpc.RpcError as err:
        raise client.error(err) from None
    return code or 0


EXEC_SETTINGS = {"allow_interspersed_args": False, "help_option_names": ["--help"]}


def exec_(container: str = typer.Argument(...),
          command: list[str] = typer.Argument(..., help="Command and arguments"),
          interactive: bool = typer.Option(False, "-i", "--interactive", help="Keep STDIN open"),
          tty: bool = typer.Option(False, "-t", "--tty", help="Allocate a pseudo-TTY"),
          detach: bool = typer.Option(False, "-d", "--detach", help="Run the command in the background"),
          env: list[str] = typer.Option([], "-e", "--env", help="Set environment variables"),
          user: str = typer.Option("", "-u", "--user", help="Username or UID[:GID]"),
          workdir: str = typer.Option("", "-w", "--workdir", help="Working directory inside the container"),
          detach_keys: str = typer.Option(DEFAULT_DETACH_KEYS, "--detach-keys",
                                          help="Key sequence for detaching")) -> None:
    """Execute a command in a running container."""
    keys = _keys(detach_keys)
    if tty and interactive and not detach and not os.isatty(0):
        raise CliError("the input device is not a TTY", 1)
    client = Client()
    rt = client.runtime
    rows, cols = window_size() if tty else (0, 0)
    spec = rt.ExecSpec(container=container, args=command, env=env, user=user, workdir=workdir, tty=tty,
                       open_stdin=interactive and not detach, tty_rows=rows, tty_cols=cols, detach=detach)
    session = Session(tty=tty, interactive=interactive and not detach, detach_keys=keys,
                      stdin_request=lambda data: rt.ExecRequest(stdin=data),
                      resize_request=lambda r, c: rt.ExecRequest(resize=rt.Resize(rows=r, cols=c)),
                      close_request=lambda: rt.ExecRequest(close_stdin=True))
    if tty:
        signal.signal(signal.SIGHUP, _leave)
    try:
        code = session.run(rt.ExecRequest(spec=spec), client.stub.ExecContainer, _handler(client))
    except client.grpc.RpcError as err:
        raise client.error(err) from None
    raise typer.Exit(code or 0)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "attach", attach)
    add(app, only, "exec", exec_, context_settings=EXEC_SETTINGS)
