"""Container commands: run, create, start, stop, kill, rm, wait, ps, logs, inspect."""

from __future__ import annotations

import queue
import signal
import sys
import time

import typer

from cli import output
from cli.client import Client, CliError
from cli.commands import add, add_group

container_app = typer.Typer(help="Manage containers", no_args_is_help=True)

# Signals a foreground `berth run` passes on to the container, like docker's --sig-proxy.
PROXIED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

RUN_SETTINGS = {"allow_interspersed_args": False, "help_option_names": ["--help"]}


def _run_spec(client: Client, image: str, command: list[str] | None, *, name: str, env: list[str],
              workdir: str, user: str, hostname: str, entrypoint: str | None, memory: str, cpus: float,
              pids_limit: int, label: list[str], rm: bool, detach: bool, stop_timeout: int | None,
              stop_signal: str, tty: bool, interactive: bool):
    resources = client.runtime.Resources()
    if memory:
        try:
            resources.memory_bytes = output.parse_size(memory)
        except ValueError as err:
            raise CliError(f"berth: invalid argument {memory!r} for \"-m, --memory\" flag: {err}", 125) from None
    if cpus:
        if cpus < 0.01:
            raise CliError("berth: invalid argument for \"--cpus\": must be at least 0.01", 125)
        resources.cpu_period_us = 100_000
        resources.cpu_quota_us = int(cpus * 100_000)
    if pids_limit:
        resources.pids_limit = pids_limit
    labels = {}
    for item in label:
        key, _, value = item.partition("=")
        labels[key] = value
    spec = client.api.RunSpec(
        image=image, command=command or [], env=env, workdir=workdir, user=user, hostname=hostname,
        name=name, resources=resources, labels=labels, auto_remove=rm, detach=detach,
        stop_timeout=-1 if stop_timeout is None else stop_timeout, stop_signal=stop_signal, tty=tty,
        interactive=interactive)
    if entrypoint is not None:
        spec.entrypoint_set = True
        spec.entrypoint.extend([entrypoint] if entrypoint else [])
    return spec


def run(
    image: str = typer.Argument(..., help="Image to run"),
    command: list[str] = typer.Argument(None, help="Command and arguments"),
    name: str = typer.Option("", "--name", help="Assign a name to the container"),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in background and print the id"),
    rm: bool = typer.Option(False, "--rm", help="Remove the container when it exits"),
    env: list[str] = typer.Option([], "-e", "--env", help="Set environment variables"),
    workdir: str = typer.Option("", "-w", "--workdir", help="Working directory inside the container"),
    user: str = typer.Option("", "-u", "--user", help="Username or UID[:GID]"),
    hostname: str = typer.Option("", "-h", "--hostname", help="Container host name"),
    entrypoint: str = typer.Option(None, "--entrypoint", help="Override the image's entrypoint"),
    memory: str = typer.Option("", "-m", "--memory", help="Memory limit, e.g. 32m"),
    cpus: float = typer.Option(0.0, "--cpus", help="Number of CPUs, e.g. 0.5"),
    pids_limit: int = typer.Option(0, "--pids-limit", help="Tune the container pids limit"),
    label: list[str] = typer.Option([], "-l", "--label", help="Set metadata on the container"),
    stop_timeout: int = typer.Option(None, "--stop-timeout", help="Seconds to wait before killing"),
    stop_signal: str = typer.Option("", "--stop-signal", help="Signal to stop the container"),
    tty: bool = typer.Option(False, "-t", "--tty", help="Allocate a pseudo-TTY"),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Keep STDIN open"),
) -> None:
    """Create and run a new container from an image."""
    # Registered as `create` too: same flags, the command name decides.
    import click

    create_only = click.get_current_context().command.name == "create"
    client = Client()
    spec = _run_spec(client, image, command, name=name, env=env, workdir=workdir, user=user,
                     hostname=hostname, entrypoint=entrypoint, memory=memory, cpus=cpus,
                     pids_limit=pids_limit, label=label, rm=rm, detach=detach, stop_timeout=stop_timeout,
                     stop_signal=stop_signal, tty=tty, interactive=interactive)
    if create_only:
        try:
            print(client.call("CreateContainer", spec).id)
        except CliError as e:
            e.exit_code = 125
            raise
        return
    requests: queue.Queue = queue.Queue()
    requests.put(client.api.RunRequest(spec=spec))

    def request_iter():  # noqa: ANN202
        while (item := requests.get()) is not None:
            yield item

    def forward(signum: int, _frame: object) -> None:
        requests.put(client.api.RunRequest(signal=signal.Signals(signum).name))

    if not detach:
        for sig in PROXIED_SIGNALS:
            signal.signal(getattr(signal, sig), forward)
    exit_code = 0
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for resp in client.stream(client.stub.Run(request_iter())):
            kind = resp.WhichOneof("item")
            if kind == "output":
                stream = err if resp.output.stream == client.types.Output.STDERR else out
                stream.write(resp.output.data)
                stream.flush()
            elif kind == "container_id" and detach:
                print(resp.container_id)
            elif kind == "exit_code":
                exit_code = resp.exit_code
    except CliError as e:
        e.exit_code = 125 if e.exit_code == 1 else e.exit_code
        raise
    finally:
        requests.put(None)
    raise typer.Exit(exit_code)


def _each(names: list[str], fn) -> None:  # noqa: ANN001
    """Apply fn to every name; report each failure and exit 1 if any failed, like Docker."""
    failed = False
    for name in names:
        try:
            fn(name)
            print(name)
        except CliError as err:
            sys.stderr.write(f"{err}\n")
            failed = True
    if failed:
        raise CliError("", 1)


def start(containers: list[str] = typer.Argument(...)) -> None:
    """Start one or more stopped containers."""
    client = Client()
    _each(containers, lambda c: client.call("StartContainer", client.api.ContainerRequest(id=c)))


def stop(containers: list[str] = typer.Argument(...),
         time_: int = typer.Option(-1, "-t", "--time", "--timeout",
                                   help="Seconds to wait before killing it")) -> None:
    """Stop one or more running containers (SIGTERM, then SIGKILL after the timeout)."""
    client = Client()
    _each(containers, lambda c: client.call("StopContainer", client.runtime.StopRequest(id=c, timeout=time_)))


def kill(containers: list[str] = typer.Argument(...),
         signal_: str = typer.Option("KILL", "-s", "--signal", help="Signal to send")) -> None:
    """Kill one or more running containers."""
    client = Client()
    _each(containers, lambda c: client.call("KillContainer", client.runtime.KillRequest(id=c, signal=signal_)))


def rm(containers: list[str] = typer.Argument(...),
       force: bool = typer.Option(False, "-f", "--force", help="Force the removal of a running container")) -> None:
    """Remove one or more containers."""
    client = Client()
    _each(containers, lambda c: client.call("RemoveContainer", client.runtime.RemoveRequest(id=c, force=force)))


def wait(containers: list[str] = typer.Argument(...)) -> None:
    """Block until containers stop, then print their exit codes."""
    client = Client()
    failed = False
    for c in containers:
        try:
            print(client.call("WaitContainer", client.api.ContainerRequest(id=c)).exit_code)
        except CliError as err:
            sys.stderr.write(f"{err}\n")
            failed = True
    if failed:
        raise CliError("", 1)


def _status(c) -> str:  # noqa: ANN001
    now = time.time()
    if c.status == "running":
        return "Up " + output.human_duration(now - c.started_unix_nano / 1e9)
    if c.status == "exited":
        return f"Exited ({c.exit_code}) " + output.ago(c.finished_unix_nano / 1e9)
    return c.status.capitalize()


def _command(args: list[str]) -> str:
    text = " ".join(args)
    if len(text) > 20:
        text = text[:19] + "…"
    return f'"{text}"'


def ps(all_: bool = typer.Option(False, "-a", "--all", help="Show all containers"),
       quiet: bool = typer.Option(False, "-q", "--quiet", help="Only display container IDs"),
       no_trunc: bool = typer.Option(False, "--no-trunc", help="Don't truncate output")) -> None:
    """List containers."""
    client = Client()
    containers = client.call("ListContainers", client.runtime.ListRequest(all=all_)).containers
    if quiet:
        for c in containers:
            print(c.id if no_trunc else c.id[:12])
        return
    rows = [[c.id if no_trunc else c.id[:12], c.spec.image,
             f'"{" ".join(c.spec.args)}"' if no_trunc else _command(list(c.spec.args)),
             output.ago(c.created_unix_nano / 1e9), _status(c), "", c.name] for c in containers]
    output.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)


def logs(container: str = typer.Argument(...),
         tail: str = typer.Option("all", "-n", "--tail", help="Number of lines to show from the end"),
         timestamps: bool = typer.Option(False, "-t", "--timestamps", help="Show timestamps")) -> None:
    """Fetch the logs of a container."""
    client = Client()
    try:
        n = -1 if tail == "all" else int(tail)
    except ValueError:
        raise CliError(f"berth: invalid value for --tail: {tail!r}", 125) from None
    req = client.runtime.LogsRequest(id=container, tail=n, timestamps=timestamps)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for entry in client.stream(client.stub.ContainerLogs(req)):
        o = entry.output
        stream = err if o.stream == client.types.Output.STDERR else out
        if timestamps:
            stream.write(output.rfc3339(o.time_unix_nano).encode() + b" ")
        stream.write(o.data)
    out.flush()
    err.flush()


def container_json(c) -> dict:  # noqa: ANN001
    """Docker's `inspect` shape, filled from Berth's container record."""
    spec = c.spec
    args = list(spec.args)
    res = spec.resources
    return {
        "Id": c.id,
        "Created": output.rfc3339(c.created_unix_nano),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": c.status,
            "Running": c.status == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": c.oom_killed,
            "Dead": False,
            "Pid": c.pid,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": output.rfc3339(c.started_unix_nano),
            "FinishedAt": output.rfc3339(c.finished_unix_nano),
        },
        "Image": spec.image_id,
        "LogPath": c.log_path,
        "Name": "/" + c.name,
        "HostConfig": {
            "AutoRemove": spec.auto_remove,
            "Memory": res.memory_bytes,
            "NanoCpus": res.cpu_quota_us * 1_000_000_000 // res.cpu_period_us if res.cpu_period_us else 0,
            "CpuQuota": res.cpu_quota_us,
            "CpuPeriod": res.cpu_period_us,
            "PidsLimit": res.pids_limit or None,
        },
        "GraphDriver": {"Name": "overlay2", "Data": {
            "LowerDir": ":".join(spec.rootfs.lowerdirs), "UpperDir": spec.rootfs.upperdir,
            "WorkDir": spec.rootfs.workdir}},
        "Config": {
            "Hostname": spec.hostname or c.id[:12],
            "User": spec.user,
            "Tty": spec.tty,
            "OpenStdin": spec.open_stdin,
            "Env": list(spec.env),
            "Cmd": args,
            "Image": spec.image,
            "WorkingDir": spec.cwd,
            "Labels": dict(spec.labels),
            "StopSignal": spec.stop_signal,
            "StopTimeout": spec.stop_timeout if spec.stop_timeout >= 0 else None,
        },
    }


def inspect(targets: list[str] = typer.Argument(...),
            format_: str = typer.Option("", "-f", "--format", help="Format with a Go-style template")) -> None:
    """Return low-level information on containers (or images)."""
    client = Client()
    from cli.commands.images import image_json

    found, failed = [], False
    for t in targets:
        try:
            found.append(container_json(client.call("InspectContainer", client.api.ContainerRequest(id=t))))
        except CliError:
            try:
                found.append(image_json(client.call("InspectImage", client.image.InspectImageRequest(reference=t))))
            except CliError:
                sys.stderr.write(f"Error: No such object: {t}\n")
                failed = True
    _print_inspect(found, format_)
    if failed:
        raise CliError("", 1)


def _print_inspect(found: list[dict], format_: str) -> None:
    if format_:
        for item in found:
            try:
                print(output.render_format(format_, item))
            except ValueError as err:
                raise CliError(f"berth: {err}", 1) from None
    else:
        output.dump_json(found)


def container_inspect(targets: list[str] = typer.Argument(...),
                      format_: str = typer.Option("", "-f", "--format")) -> None:
    """Display detailed information on one or more containers."""
    client = Client()
    found = [container_json(client.call("InspectContainer", client.api.ContainerRequest(id=t))) for t in targets]
    _print_inspect(found, format_)


CREATE_HELP = "Create a new container without starting it."


def _build_group() -> None:
    container_app.command("run", context_settings=RUN_SETTINGS)(run)
    container_app.command("create", context_settings=RUN_SETTINGS, help=CREATE_HELP)(run)
    for fn in (start, stop, kill, rm, wait, logs):
        container_app.command()(fn)
    container_app.command("ls")(ps)
    container_app.command("inspect")(container_inspect)


def register(app: typer.Typer, only: str | None = None) -> None:
    add(app, only, "run", run, context_settings=RUN_SETTINGS)
    add(app, only, "create", run, context_settings=RUN_SETTINGS, help=CREATE_HELP)
    for fn in (start, stop, kill, rm, wait, ps, logs, inspect):
        add(app, only, fn.__name__, fn)
    add_group(app, only, "container", container_app, _build_group)
