"""Operating running containers: pause, unpause, top, stats, update, restart, rename, events."""

from __future__ import annotations

import json
import sys
import time

import typer

from cli import output
from cli.client import Client, CliError
from cli.commands import add


def _each(names: list[str], fn) -> None:  # noqa: ANN001
    from cli.commands.containers import _each as each

    each(names, fn)


def pause(containers: list[str] = typer.Argument(...)) -> None:
    """Pause all processes within one or more containers."""
    client = Client()
    _each(containers, lambda c: client.call("PauseContainer", client.api.ContainerRequest(id=c)))


def unpause(containers: list[str] = typer.Argument(...)) -> None:
    """Unpause all processes within one or more containers."""
    client = Client()
    _each(containers, lambda c: client.call("UnpauseContainer", client.api.ContainerRequest(id=c)))


def restart(containers: list[str] = typer.Argument(...),
            time_: int = typer.Option(-1, "-t", "--time", "--timeout",
                                      help="Seconds to wait before killing the container")) -> None:
    """Restart one or more containers."""
    client = Client()
    _each(containers, lambda c: client.call("RestartContainer", client.runtime.StopRequest(id=c, timeout=time_)))


def rename(container: str = typer.Argument(...), new_name: str = typer.Argument(...)) -> None:
    """Rename a container."""
    client = Client()
    client.call("RenameContainer", client.runtime.RenameRequest(id=container, name=new_name))


def update(containers: list[str] = typer.Argument(...),
           memory: str = typer.Option("", "-m", "--memory", help="Memory limit"),
           cpus: float = typer.Option(0.0, "--cpus", help="Number of CPUs"),
           pids_limit: int = typer.Option(0, "--pids-limit", help="Tune the container pids limit"),
           cpu_shares: int = typer.Option(0, "-c", "--cpu-shares", help="CPU shares (relative weight)"),
           restart: str = typer.Option(None, "--restart", help="Restart policy to apply")) -> None:
    """Update configuration (limits, restart policy) of one or more containers."""
    from cli.commands.containers import restart_policy

    client = Client()
    res = client.runtime.Resources(pids_limit=pids_limit, cpu_shares=cpu_shares)
    if memory:
        try:
            res.memory_bytes = output.parse_size(memory)
        except ValueError as err:
            raise CliError(f"berth: invalid argument {memory!r} for \"-m, --memory\" flag: {err}", 125) from None
    if cpus:
        res.cpu_period_us, res.cpu_quota_us = 100_000, int(cpus * 100_000)
    req = client.runtime.UpdateRequest(resources=res)
    if restart is not None:
        req.restart_policy.CopyFrom(restart_policy(client, restart))
        req.set_restart_policy = True

    def one(c: str) -> None:
        req.id = c
        client.call("UpdateContainer", req)

    _each(containers, one)


def _clock(ns: int) -> str:
    secs = ns // 1_000_000_000
    return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def top(container: str = typer.Argument(...)) -> None:
    """Display the running processes of a container (host PIDs, like Docker; CPID: inside it)."""
    client = Client()
    resp = client.call("TopContainer", client.api.ContainerRequest(id=container))
    now = time.time_ns()
    rows = []
    for p in resp.processes:
        age = max(1, now - p.start_unix_nano)
        c = min(99, p.cpu_time_ns * 100 // age)
        stime = time.strftime("%H:%M", time.localtime(p.start_unix_nano / 1e9))
        rows.append([p.user or str(p.uid), str(p.pid), str(p.ppid), str(c), stime, p.tty, _clock(p.cpu_time_ns),
                     str(p.container_pid), p.cmd])
    output.table(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CPID", "CMD"], rows)


def _stats_rows(prev: dict, stats: list) -> list[list[str]]:  # noqa: ANN001
    rows = []
    for st in stats:
        before = prev.get(st.id)
        cpu = 0.0
        if before is not None:
            d_cpu = st.cpu_usage_ns - before.cpu_usage_ns
            d_sys = st.system_cpu_ns - before.system_cpu_ns
            if d_sys > 0 and d_cpu > 0:
                cpu = d_cpu / d_sys * st.online_cpus * 100
        mem_pct = st.memory_usage_bytes / st.memory_limit_bytes * 100 if st.memory_limit_bytes else 0.0
        rows.append([st.id[:12], st.name or st.id[:12], f"{cpu:.2f}%",
                     f"{_binary(st.memory_usage_bytes)} / {_binary(st.memory_limit_bytes)}", f"{mem_pct:.2f}%",
                     f"{output.human_size(st.net_rx_bytes)} / {output.human_size(st.net_tx_bytes)}",
                     f"{output.human_size(st.block_read_bytes)} / {output.human_size(st.block_write_bytes)}",
                     str(st.pids)])
    return rows


def _binary(n: float) -> str:
    """Docker's units.BytesSize: binary units, two decimals."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.4g}{units[i]}"


STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]


def stats(containers: list[str] = typer.Argument(None),
          no_stream: bool = typer.Option(False, "--no-stream", help="Print the first result only"),
          all_: bool = typer.Option(False, "-a", "--all", help="Show all containers (only running are measured)")
          ) -> None:
    """Display a live stream of container resource usage statistics."""
    client = Client()
    req = client.runtime.StatsRequest(ids=containers or [])
    first = {s.id: s for s in client.call("ContainerStats", req).stats}
    time.sleep(0.5 if no_stream else 0.1)  # cpu % needs two readings
    while True:
        current = client.call("ContainerStats", req).stats
        if not no_stream:
            sys.stdout.write("\033[2J\033[H")
        output.table(STATS_HEADERS, _stats_rows(first, current))
        sys.stdout.flush()
        if no_stream:
            return
        first = {s.id: s for s in current}
        try:
            time.sleep(1)
        except KeyboardInterrupt:
            return


def events(since: str = typer.Option("", "--since", help="Show events created since timestamp"),
           until: str = typer.Option("", "--until", help="Stream events until this timestamp"),
           filter_: list[str] = typer.Option([], "-f", "--filter", help="Filter: container=, image=, type=, event="),
           format_: str = typer.Option("", "--format", help="'{{json .}}' for JSON lines")) -> None:
    """Get real time events from the server."""
    from cli.timeparse import parse_time

    client = Client()
    times = {}
    for flag, value in (("since", since), ("until", until)):
        try:
            times[flag] = parse_time(value) if value else 0
        except ValueError:
            raise CliError(f"berth: invalid value for --{flag}: {value!r}", 125) from None
    filters: dict[str, list[str]] = {}
    for item in filter_:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"berth: bad format of filter (expected name=value): {item}", 125)
        filters.setdefault(key, []).append(value)
    req = client.api.EventsRequest(since_unix_nano=times["since"], until_unix_nano=times["until"],
                                   filters={k: ",".join(v) for k, v in filters.items()})
    try:
        for ev in client.stream(client.stub.Events(req)):
            attrs = dict(ev.attributes)
            if format_.strip() == "{{json .}}":
                line = json.dumps({"Type": ev.type, "Action": ev.action, "Actor": {"ID": ev.actor_id,
                                   "Attributes": attrs}, "time": ev.time_unix_nano // 1_000_000_000,
                                   "timeNano": ev.time_unix_nano})
            else:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ev.time_unix_nano / 1e9))
                frac = f"{ev.time_unix_nano % 1_000_000_000:09d}"
                tz = time.strftime("%z")
                attr_text = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
                line = f"{stamp}.{frac}{tz[:3]}:{tz[3:]} {ev.type} {ev.action} {ev.actor_id}" + \
                       (f" ({attr_text})" if attr_text else "")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer, only: str | None = None) -> None:
    for name, fn in (("pause", pause), ("unpause", unpause), ("restart", restart), ("rename", rename),
                     ("update", update), ("top", top), ("stats", stats), ("events", events)):
        add(app, only, name, fn)
