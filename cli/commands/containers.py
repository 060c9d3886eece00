"""Container commands: run, create, start, stop, kill, rm, wait, ps, logs, inspect."""
# attach/exec live in cli/commands/interactive.py; pause, top, stats, update, ... in operate.py.

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import typer

from cli import output, specs
from cli.client import Client, CliError, pairs
from cli.commands import add, add_group
from cli.terminal import DEFAULT_DETACH_KEYS, Session, parse_detach_keys, window_size, write_output

container_app = typer.Typer(help="Manage containers", no_args_is_help=True)

# Signals a foreground `berth run` passes on to the container, like docker's --sig-proxy.
PROXIED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

RUN_SETTINGS = {"allow_interspersed_args": False, "help_option_names": ["--help"]}


def _run_spec(client: Client, image: str, command: list[str] | None, *, name: str, env: list[str],
              workdir: str, user: str, hostname: str, entrypoint: str | None, memory: str, cpus: float,
              pids_limit: int, label: list[str], rm: bool, detach: bool, stop_timeout: int | None,
              stop_signal: str, tty: bool, interactive: bool, restart: str = "", log_opt: list[str] = ()):
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
    labels = pairs(label)
    spec = client.api.RunSpec(
        image=image, command=command or [], env=env, workdir=workdir, user=user, hostname=hostname,
        name=name, resources=resources, labels=labels, auto_remove=rm, detach=detach,
        stop_timeout=-1 if stop_timeout is None else stop_timeout, stop_signal=stop_signal, tty=tty,
        interactive=interactive, restart_policy=restart_policy(client, restart))
    for item in log_opt:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"berth: invalid argument {item!r} for \"--log-opt\" flag: expected key=value", 125)
        spec.log_opts[key] = value
    if tty:
        spec.tty_rows, spec.tty_cols = window_size()
    if entrypoint is not None:
        spec.entrypoint_set = True
        spec.entrypoint.extend([entrypoint] if entrypoint else [])
    return spec


def restart_policy(client: Client, text: str):  # noqa: ANN201 - a runtime_pb2.RestartPolicy
    """Docker's --restart: no | on-failure[:max-retries] | always | unless-stopped."""
    name, _, count = (text or "").partition(":")
    if name not in ("", "no", "on-failure", "always", "unless-stopped"):
        raise CliError(f"berth: invalid restart policy '{text}'", 125)
    if count and (name != "on-failure" or not count.isdigit()):
        raise CliError(f"berth: invalid restart policy '{text}': maximum retry count only with on-failure", 125)
    return client.runtime.RestartPolicy(name=name, maximum_retry_count=int(count or 0))


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
    restart: str = typer.Option("", "--restart", help="Restart policy: no, on-failure[:N], always, unless-stopped"),
    log_opt: list[str] = typer.Option([], "--log-opt", help="Log driver options: max-size, max-file"),
    detach_keys: str = typer.Option(DEFAULT_DETACH_KEYS, "--detach-keys", help="Key sequence to detach"),
    # Pulling a missing image (issue 3): credentials come from config.json, like `pull`.
    pull: str = typer.Option("missing", "--pull", help='Pull image before running ("always", "missing", "never")'),
    platform: str = typer.Option("", "--platform", help="Set platform if server is multi-platform capable"),
    # Networks and storage (issue 5): parsed by cli/specs.py.
    volume: list[str] = typer.Option([], "-v", "--volume", help="Bind mount a volume: [SRC:]DST[:ro|rw|...]"),
    mount: list[str] = typer.Option([], "--mount", help="Attach a filesystem mount: type=bind|volume|tmpfs,..."),
    tmpfs: list[str] = typer.Option([], "--tmpfs", help="Mount a tmpfs directory: /path[:size=16m,...]"),
    read_only: bool = typer.Option(False, "--read-only", help="Mount the container's root filesystem read-only"),
    publish: list[str] = typer.Option([], "-p", "--publish", help="Publish a port: [ip:][hostPort:]containerPort"),
    network: str = typer.Option("", "--network", "--net", help="Connect to a network: bridge, host, none, NAME"),
    network_alias: list[str] = typer.Option([], "--network-alias", help="Network-scoped alias"),
    ip: str = typer.Option("", "--ip", help="IPv4 address on a user network"),
    dns: list[str] = typer.Option([], "--dns", help="Custom DNS servers"),
    dns_search: list[str] = typer.Option([], "--dns-search", help="Custom DNS search domains"),
    add_host: list[str] = typer.Option([], "--add-host", help="Add a host-to-IP mapping (host:ip)"),
    # Confinement (issue 7): parsed by cli/specs.py, checked by the runtime.
    privileged: bool = typer.Option(False, "--privileged", help="Give extended privileges to this container"),
    cap_add: list[str] = typer.Option([], "--cap-add", help="Add Linux capabilities (or ALL)"),
    cap_drop: list[str] = typer.Option([], "--cap-drop", help="Drop Linux capabilities (or ALL)"),
    device: list[str] = typer.Option([], "--device", help="Add a host device: /dev/x[:/dev/y[:rwm]]"),
    security_opt: list[str] = typer.Option([], "--security-opt", help="Security options: seccomp=unconfined|"
                                           "PROFILE.json, apparmor=PROFILE, no-new-privileges"),
    userns: str = typer.Option("", "--userns", help="User namespace to use: host, or auto (a private id range)"),
    # Health checks (issue 8): parsed by cli/specs.py, merged with the image's by the api.
    health_cmd: str = typer.Option(None, "--health-cmd", help="Command to run to check health"),
    health_interval: str = typer.Option("", "--health-interval", help="Time between running the check (ms|s|m|h)"),
    health_timeout: str = typer.Option("", "--health-timeout", help="Maximum time to allow one check to run"),
    health_retries: int = typer.Option(0, "--health-retries", help="Consecutive failures needed to report unhealthy"),
    health_start_period: str = typer.Option("", "--health-start-period",
                                            help="Start period for the container to initialize"),
    health_start_interval: str = typer.Option("", "--health-start-interval",
                                              help="Time between running the check during the start period"),
    no_healthcheck: bool = typer.Option(False, "--no-healthcheck", help="Disable any container-specified HEALTHCHECK"),
) -> None:
    """Create and run a new container from an image."""
    # Registered as `create` too: same flags, the command name decides.
    import click

    create_only = click.get_current_context().command.name == "create"
    client = Client()
    spec = _run_spec(client, image, command, name=name, env=env, workdir=workdir, user=user,
                     hostname=hostname, entrypoint=entrypoint, memory=memory, cpus=cpus,
                     pids_limit=pids_limit, label=label, rm=rm, detach=detach, stop_timeout=stop_timeout,
                     stop_signal=stop_signal, tty=tty, interactive=interactive, restart=restart, log_opt=log_opt)
    specs.apply_to_run_spec(spec, volume=volume, mount=mount, tmpfs=tmpfs, read_only=read_only, publish=publish,
                            network=network, network_alias=network_alias, ip=ip, dns=dns, dns_search=dns_search,
                            add_host=add_host)
    specs.apply_security(spec.security, privileged=privileged, cap_add=cap_add, cap_drop=cap_drop, device=device,
                         security_opt=security_opt, userns=userns)
    specs.apply_health(spec, cmd=health_cmd, interval=health_interval, timeout=health_timeout, retries=health_retries,
                       start_period=health_start_period, start_interval=health_start_interval,
                       no_healthcheck=no_healthcheck)
    _pull_settings(client, spec, image, pull, platform)
    try:
        keys = parse_detach_keys(detach_keys)
    except ValueError as err:
        raise CliError(f"berth: invalid detach keys: {err}", 125) from None
    if tty and interactive and not detach and not os.isatty(0):
        raise CliError("the input device is not a TTY", 1)
    if create_only:
        _pull_for_create(client, spec)
        try:
            print(client.call("CreateContainer", spec).id)
        except CliError as e:
            e.exit_code = 125
            raise
        return
    api = client.api
    session = Session(tty=tty, interactive=interactive and not detach, detach_keys=keys,
                      stdin_request=lambda data: api.RunRequest(stdin=data),
                      resize_request=lambda r, c: api.RunRequest(resize=client.runtime.Resize(rows=r, cols=c)),
                      close_request=lambda: api.RunRequest(close_stdin=True))

    def forward(signum: int, _frame: object) -> None:
        session.send(api.RunRequest(signal=signal.Signals(signum).name))

    if not detach and not tty:  # with a TTY, Ctrl-C is a byte for the container (no --sig-proxy)
        for sig in PROXIED_SIGNALS:
            signal.signal(getattr(signal, sig), forward)
    if tty and not detach:
        signal.signal(signal.SIGHUP, _hang_up)  # a closed terminal: leave cleanly, the container runs on

    views: list[Any] = []  # the pull's progress view, made (and its module imported) only if a pull happens

    def close_view() -> None:
        for view in views:
            view.close()

    def handle(resp) -> int | None:  # noqa: ANN001
        kind = resp.WhichOneof("item")
        if kind == "pull":
            if not views:
                from cli.commands.registry import RunPullView

                views.append(RunPullView(raw_terminal=tty and interactive and not detach))
            views[0](resp.pull)
            return None
        close_view()
        if kind == "output":
            write_output(resp.output.data, resp.output.stream == client.types.Output.STDERR)
        elif kind == "container_id" and detach:
            print(resp.container_id)
        elif kind == "exit_code":
            return resp.exit_code
        return None

    try:
        exit_code = session.run(api.RunRequest(spec=spec), client.stub.Run, handle)
    except client.grpc.RpcError as err:
        e = client.error(err)
        e.exit_code = 125 if e.exit_code == 1 else e.exit_code
        raise e from None
    finally:
        close_view()
    raise typer.Exit(exit_code or 0)


def _pull_for_create(client: Client, spec: Any) -> None:
    """`docker create` shows a missing image's pull on stderr, but CreateContainer is one unary
    call: so the CLI pulls first (Images.Pull, same credentials and platform) and shows it."""
    from cli.commands.registry import RunPullView, images_client

    if spec.pull == "never":
        return
    if spec.pull == "missing":
        try:
            client.stub.InspectImage(client.image.InspectImageRequest(reference=spec.image))
            return
        except client.grpc.RpcError as err:
            hexpart = spec.image.removeprefix("sha256:")
            if err.code() != client.grpc.StatusCode.NOT_FOUND or spec.image.startswith("sha256:") or (
                    len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)):
                return  # CreateContainer reports it, as it would anyway
    api = images_client()
    view = RunPullView()
    if spec.pull == "missing":
        last = spec.image.rsplit("/", 1)[-1]
        shown = spec.image if "@" in spec.image or ":" in last else spec.image + ":latest"
        view(api.pb.PullProgress(status=f"Unable to find image '{shown}' locally"))
    try:
        for msg in api.stream("Pull", api.pb.PullRequest(reference=spec.image, platform=spec.platform,
                                                          auth=spec.registry_auth)):
            view(msg)
    except CliError as err:
        err.exit_code = 125
        raise
    finally:
        view.close()
    spec.pull = "missing"  # stored now: the create itself must not pull again


def _pull_settings(client: Client, spec: Any, image: str, pull: str, platform: str) -> None:
    """--pull, --platform and the registry's credentials from config.json, for a missing image."""
    from cli.auth import auth_for, registry_of

    if pull not in ("always", "missing", "never"):
        raise CliError(f"berth: invalid pull option: '{pull}': must be one of \"always\", \"missing\" or \"never\"",
                       125)
    spec.pull = pull
    spec.platform = platform
    try:
        spec.registry_auth.CopyFrom(auth_for(client, registry_of(image)))
    except CliError as err:
        err.exit_code = 125
        raise


def _hang_up(_signum: int, _frame: object) -> None:
    raise CliError("", 129)


def _each(names: list[str], fn) -> None:  # noqa: ANN001
    """Apply fn to every name, concurrently like Docker (stopping 200 containers must not
    take 200 timeouts); print in argument order, report each failure, exit 1 if any failed."""
    from concurrent.futures import ThreadPoolExecutor

    def attempt(name: str) -> CliError | None:
        try:
            fn(name)
        except CliError as err:
            return err
        return None

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(names)))) as pool:
        outcomes = list(pool.map(attempt, names))
    for name, err in zip(names, outcomes, strict=True):
        if err is None:
            print(name)
        else:
            sys.stderr.write(f"{err}\n")
    if any(outcomes):
        raise CliError("", 1)


def start(containers: list[str] = typer.Argument(...),
          attach: bool = typer.Option(False, "-a", "--attach", help="Attach STDOUT/STDERR and forward signals"),
          interactive: bool = typer.Option(False, "-i", "--interactive", help="Attach container's STDIN"),
          detach_keys: str = typer.Option(DEFAULT_DETACH_KEYS, "--detach-keys",
                                          help="Override the key sequence for detaching a container")) -> None:
    """Start one or more stopped containers."""
    client = Client()
    if not (attach or interactive):
        _each(containers, lambda c: client.call("StartContainer", client.api.ContainerRequest(id=c)))
        return
    if len(containers) > 1:
        raise CliError("berth: you cannot start and attach multiple containers at once", 1)
    from cli.commands.interactive import attach_session

    raise typer.Exit(attach_session(client, containers[0], interactive=interactive, detach_keys=detach_keys,
                                    start=True))


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
        up = "Up " + output.human_duration(now - c.started_unix_nano / 1e9)
        if c.paused:
            return up + " (Paused)"
        return up + {"starting": " (health: starting)", "healthy": " (healthy)", "unhealthy": " (unhealthy)"}.get(
            c.health.status, "")
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
    ports: Callable[[Any], str] = lambda c: ""  # noqa: E731
    if any(c.spec.network.ports for c in containers):
        from cli.commands.network import ports_column

        ports = partial(ports_column, client)
    rows = [[c.id if no_trunc else c.id[:12], c.spec.image,
             f'"{" ".join(c.spec.args)}"' if no_trunc else _command(list(c.spec.args)),
             output.ago(c.created_unix_nano / 1e9), _status(c), ports(c), c.name] for c in containers]
    output.table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows)


def logs(container: str = typer.Argument(...),
         tail: str = typer.Option("all", "-n", "--tail", help="Number of lines to show from the end"),
         timestamps: bool = typer.Option(False, "-t", "--timestamps", help="Show timestamps"),
         follow: bool = typer.Option(False, "-f", "--follow", help="Follow log output"),
         since: str = typer.Option("", "--since", help="Since a timestamp (e.g. 2013-01-02T13:23:37Z) or "
                                   "relative (e.g. 42m)"),
         until: str = typer.Option("", "--until", help="Before a timestamp or relative time")) -> None:
    """Fetch the logs of a container."""
    from cli.timeparse import parse_time

    client = Client()
    try:
        n = -1 if tail == "all" else int(tail)
    except ValueError:
        raise CliError(f"berth: invalid value for --tail: {tail!r}", 125) from None
    times = {}
    for flag, value in (("since", since), ("until", until)):
        try:
            times[flag] = parse_time(value) if value else 0
        except ValueError:
            raise CliError(f"berth: invalid value for --{flag}: {value!r}", 125) from None
    req = client.runtime.LogsRequest(id=container, tail=n, timestamps=timestamps, follow=follow,
                                     since_unix_nano=times["since"], until_unix_nano=times["until"])
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for entry in client.stream(client.stub.ContainerLogs(req)):
            o = entry.output
            stream = err if o.stream == client.types.Output.STDERR else out
            if timestamps:
                stream.write(output.rfc3339(o.time_unix_nano).encode() + b" ")
            stream.write(o.data)
            if follow:
                stream.flush()
    except KeyboardInterrupt:
        pass
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
            "Status": "paused" if c.paused else c.status,
            "Running": c.status == "running",
            "Paused": c.paused,
            "Restarting": False,
            "OOMKilled": c.oom_killed,
            "Dead": False,
            "Pid": c.pid,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": output.rfc3339(c.started_unix_nano),
            "FinishedAt": output.rfc3339(c.finished_unix_nano),
            **({"Health": _health_json(c.health)} if c.health.status else {}),
        },
        "Image": spec.image_id,
        "LogPath": c.log_path,
        "Name": "/" + c.name,
        "RestartCount": c.restart_count,
        "HostConfig": {
            "AutoRemove": spec.auto_remove,
            "RestartPolicy": {"Name": spec.restart_policy.name or "no",
                              "MaximumRetryCount": spec.restart_policy.maximum_retry_count},
            "LogConfig": {"Type": "json-file", "Config": dict(spec.log_opts)},
            "Memory": res.memory_bytes,
            "NanoCpus": res.cpu_quota_us * 1_000_000_000 // res.cpu_period_us if res.cpu_period_us else 0,
            "CpuQuota": res.cpu_quota_us,
            "CpuPeriod": res.cpu_period_us,
            "PidsLimit": res.pids_limit or None,
            **specs.security_json(spec.security),
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
            **({"Healthcheck": _healthcheck_json(spec.healthcheck)} if spec.healthcheck.test else {}),
        },
    }


def _health_json(h) -> dict:  # noqa: ANN001 - a runtime_pb2.Health
    """Docker's State.Health."""
    return {"Status": h.status, "FailingStreak": h.failing_streak,
            "Log": [{"Start": output.rfc3339(e.start_unix_nano), "End": output.rfc3339(e.end_unix_nano),
                     "ExitCode": e.exit_code, "Output": e.output} for e in h.log]}


def _healthcheck_json(hc) -> dict:  # noqa: ANN001 - a types_pb2.HealthCheck
    """Docker's Config.Healthcheck: durations in nanoseconds, unset ones left out."""
    out: dict = {"Test": list(hc.test)}
    for key, value in (("Interval", hc.interval_ns), ("Timeout", hc.timeout_ns), ("StartPeriod", hc.start_period_ns),
                       ("StartInterval", hc.start_interval_ns), ("Retries", hc.retries)):
        if value:
            out[key] = value
    return out


def inspect(targets: list[str] = typer.Argument(...),
            format_: str = typer.Option("", "-f", "--format", help="Format with a Go-style template")) -> None:
    """Return low-level information on containers (or images)."""
    client = Client()
    from cli.commands.images import image_json
    from cli.commands.network import extend_inspect

    found, failed = [], False
    for t in targets:
        try:
            c = client.call("InspectContainer", client.api.ContainerRequest(id=t))
            found.append(extend_inspect(client, c, container_json(c)))  # + Mounts, NetworkSettings (issue 5)
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
