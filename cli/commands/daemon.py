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


def _tls_env(hosts: list[str], tls: bool, cacert: str, cert: str, key: str) -> dict[str, str]:
    """BERTH_TLS_* for the api from `-H tcp://... --tls ...`; plain TCP is refused here already."""
    from services.common import tls as mtls

    tcp = [h for h in hosts if not h.startswith("unix://")]
    if not tcp and not tls:
        return {}
    if len(tcp) != 1:
        raise CliError("berth: tls: --tls needs exactly one -H tcp://HOST:PORT", 1)
    if not tls or not (cacert and cert and key):
        raise CliError(f"berth: tls: -H {tcp[0]} needs --tls --tlscacert --tlscert --tlskey "
                       "(the API is never served on plain TCP)", 1)
    files = mtls.TlsFiles(Path(cacert).absolute(), Path(cert).absolute(), Path(key).absolute())
    try:
        address = mtls.listen_address(tcp[0])
        files.read()
    except mtls.TlsError as err:
        raise CliError(f"berth: {err}", 1) from None
    return {"BERTH_TLS_LISTEN": address, "BERTH_TLS_CACERT": str(files.cacert),
            "BERTH_TLS_CERT": str(files.cert), "BERTH_TLS_KEY": str(files.key)}


@daemon_app.command()
def start(timeout: float = typer.Option(30.0, help="Seconds to wait for the services to be healthy"),
          hosts: list[str] = typer.Option([], "-H", "--host", help="Also serve the API on tcp://HOST:PORT (--tls)"),
          tls: bool = typer.Option(False, "--tls", "--tlsverify", help="Serve TCP with mutual TLS only"),
          tlscacert: str = typer.Option("", "--tlscacert", help="CA that client certificates must chain to"),
          tlscert: str = typer.Option("", "--tlscert", help="The server's certificate"),
          tlskey: str = typer.Option("", "--tlskey", help="The server's key")) -> None:
    """Start the image, runtime and api services in the background."""
    cfg = _cfg()
    if os.geteuid() != 0:
        raise CliError("berth: the daemon must run as root", 1)
    api_env = _tls_env(hosts, tls, tlscacert, tlscert, tlskey)
    log_dir = cfg.root_dir / "logs"
    try:  # a read-only or full state dir is one line, not a traceback
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"berth: cannot start the daemon: {exc.filename}: {exc.strerror}", 1) from None
    for name in ORDER:
        if _running_pid(cfg, name):
            print(f"{name}: already running")
            continue
        try:
            log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed right after the fork
        except OSError as exc:
            raise CliError(f"berth: cannot start the {name} service: {exc.filename}: {exc.strerror}", 1) from None
        with log:
            env = {**os.environ, **api_env} if name == "api" and api_env else None
            proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        _pid_file(cfg, name).write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not _healthy(cfg.socket_for(name)):
            if proc.poll() is not None:
                raise CliError(f"berth: the {name} service exited with {proc.returncode}; "
                               f"see {log_dir / (name + '.log')}", 1)
            if time.monotonic() > deadline:
                raise CliError(f"berth: the {name} service did not become healthy in {timeout:.0f}s", 1)
            time.sleep(0.05)
        tcp = f", tcp://{api_env['BERTH_TLS_LISTEN']} with mutual TLS" if name == "api" and api_env else ""
        print(f"{name}: running (pid {proc.pid}, unix://{cfg.socket_for(name)}{tcp})")


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
