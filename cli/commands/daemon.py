"""`berth daemon start|stop|status`: run the three services as background processes.

This is the one CLI command that manages processes rather than calling the API:
it launches `python -m services.<name>` detached, records each PID in the run
dir, waits for gRPC health, and stops them by PID (never by name).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from cli.client import CliError
from cli.commands import add_group

daemon_app = typer.Typer(help="Run or stop the Berth services (api, runtime, image)", no_args_is_help=True)

ORDER = ("image", "runtime", "api")  # api last: it needs the other two


def _cfg():  # noqa: ANN202
    from services.common import config

    return config.load()


def _pid_file(cfg, name: str) -> Path:  # noqa: ANN001
    return cfg.run_dir / f"{name}.pid"


def _running_pid(cfg, name: str) -> int | None:  # noqa: ANN001
    """The PID in the pid file, if that process is still the service."""
    try:
        pid = int(_pid_file(cfg, name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if f"services.{name}".encode() in cmdline else None


def _healthy(socket: Path) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"unix://{socket}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@daemon_app.command()
def start(timeout: float = typer.Option(30.0, help="Seconds to wait for the services to be healthy")) -> None:
    """Start the image, runtime and api services in the background."""
    cfg = _cfg()
    if os.geteuid() != 0:
        raise CliError("berth: the daemon must run as root", 1)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = cfg.root_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in ORDER:
        if _running_pid(cfg, name):
            print(f"{name}: already running")
            continue
        with open(log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _pid_file(cfg, name).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not _healthy(cfg.socket_for(name)):
            if proc.poll() is not None:
                raise CliError(f"berth: the {name} service exited with {proc.returncode}; "
                               f"see {log_dir / (name + '.log')}", 1)
            if time.monotonic() > deadline:
                raise CliError(f"berth: the {name} service did not become healthy in {timeout:.0f}s", 1)
            time.sleep(0.05)
        print(f"{name}: running (pid {proc.pid}, unix://{cfg.socket_for(name)})")


@daemon_app.command()
def stop(timeout: float = typer.Option(15.0, help="Seconds to wait before SIGKILL")) -> None:
    """Stop the services; running containers keep running under the supervisor."""
    cfg = _cfg()
    for name in reversed(ORDER):
        pid = _running_pid(cfg, name)
        if pid is None:
            print(f"{name}: not running")
            _pid_file(cfg, name).unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        _pid_file(cfg, name).unlink(missing_ok=True)
        print(f"{name}: stopped")


@daemon_app.command()
def status() -> None:
    """Show whether each service is running and healthy (exit 1 if any is not)."""
    cfg = _cfg()
    ok = True
    for name in ORDER:
        pid = _running_pid(cfg, name)
        healthy = pid is not None and _healthy(cfg.socket_for(name))
        ok = ok and healthy
        state = f"running (pid {pid})" if pid else "stopped"
        if pid and not healthy:
            state += ", not healthy"
        print(f"{name}: {state}")
    if not ok:
        raise typer.Exit(1)


def register(app: typer.Typer, only: str | None = None) -> None:
    add_group(app, only, "daemon", daemon_app, lambda: None)
