"""Start real Berth services on private sockets and state dirs, for tests and benchmarks.

Every instance gets its own run dir, root dir and cgroup parent, so a suite can
run beside a system Berth and leaves nothing behind: `stop()` ends the services
and the supervisor by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("image", "runtime", "api")
# `make e2e-compose` runs the same e2e suite against services started by docker
# compose: BERTH_E2E_EXTERNAL=1 chooses them instead of starting private ones.
EXTERNAL = os.environ.get("BERTH_E2E_EXTERNAL") == "1"


class Services:
    """A private Berth: three service processes plus the runtime's supervisor."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None) -> None:
        self.base = base
        self.run_dir = base / "run"
        self.root_dir = base / "lib"
        self.cgroup_parent = "berth-test-" + uuid.uuid4().hex[:8]
        self.env = dict(os.environ)
        self.env.update({
            "BERTH_CONFIG": str(base / "berth.toml"),
            "BERTH_RUN_DIR": str(self.run_dir),
            "BERTH_ROOT_DIR": str(self.root_dir),
            "BERTH_CGROUP_PARENT": self.cgroup_parent,
            "PYTHONUNBUFFERED": "1",
            # No pull may leave the machine: only loopback registries (the test fixtures').
            "BERTH_ALLOWED_REGISTRIES": "127.0.0.1,localhost",
        })
        self.env.update(extra_env or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.databases: list[str] = []
        if os.environ.get("BERTH_TEST_POSTGRES") == "1":
            self._use_postgres()

    def _use_postgres(self) -> None:
        """One fresh PostgreSQL database per service (see tests/postgres.sh)."""
        for name in SERVICES:
            db = f"{self.cgroup_parent.replace('-', '_')}_{name}"
            subprocess.run(["createdb", db], check=True)
            self.databases.append(db)
            self.env[f"BERTH_{name.upper()}_DB_URL"] = f"postgresql+psycopg:///{db}?host=/var/run/postgresql"

    def drop_databases(self) -> None:
        for db in self.databases:
            subprocess.run(["dropdb", "--if-exists", db], check=False)
        self.databases.clear()

    def socket(self, name: str) -> Path:
        return self.run_dir / f"{name}.sock"

    def start(self, *names: str, timeout: float = 20.0) -> None:
        for name in names or SERVICES:
            log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"], env=self.env, cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        for name in names or SERVICES:
            self.wait_healthy(name, timeout)

    def wait_healthy(self, name: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log(name)[-2000:]}")
            if self.socket(name).exists():
                try:
                    with grpc.insecure_channel(f"unix://{self.socket(name)}") as ch:
                        stub = health_pb2_grpc.HealthStub(ch)
                        resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"{name} not healthy after {timeout}s: {self.log(name)[-2000:]}")

    def log(self, name: str) -> str:
        try:
            return (self.base / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, *names: str, sig: int = signal.SIGTERM) -> None:
        for name in names or reversed(SERVICES):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def supervisor_pid(self) -> int | None:
        try:
            return int((self.run_dir / "supervisor.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stop_supervisor(self) -> None:
        """End the supervisor (and with it any container still running) by PID."""
        pid = self.supervisor_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop everything this instance started and remove its state: services,
        supervisor (by PID), its databases, its parent cgroups and its temp dir."""
        self.stop()
        self.stop_supervisor()
        self.drop_databases()
        root = Path("/sys/fs/cgroup")
        for parent in [root / self.cgroup_parent, *(c / self.cgroup_parent for c in root.iterdir())]:
            if parent.is_dir():
                for child in [*(c for c in parent.iterdir() if c.is_dir()), parent]:
                    with contextlib.suppress(OSError):  # still busy: the leak checks report it
                        child.rmdir()
        # Networks of a runtime that died without a graceful stop (see tests/hostcheck.py).
        from tests.hostcheck import remove_instance_network

        left = remove_instance_network(self.cgroup_parent)
        if left:
            sys.stderr.write(f"berth harness: removed network leftovers of {self.cgroup_parent}: {left}\n")
        shutil.rmtree(self.base, ignore_errors=True)

    def berth(self, *args: str, input: bytes | str | None = None, timeout: float = 60,
              check: bool = False) -> subprocess.CompletedProcess:
        """Run the real CLI against these services."""
        text = not isinstance(input, bytes)
        return subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, cwd=REPO, input=input,
                              capture_output=True, text=text, timeout=timeout, check=check)


class ExternalServices(Services):
    """Services someone else started (e.g. `make e2e-compose`): the same interface for the
    e2e suite, configured from BERTH_* in the environment; nothing is started or stopped."""

    def __init__(self) -> None:
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.run_dir = Path(self.env.get("BERTH_RUN_DIR", "/run/berth"))
        self.root_dir = Path(self.env.get("BERTH_ROOT_DIR", "/var/lib/berth"))
        self.cgroup_parent = self.env.get("BERTH_CGROUP_PARENT", "berth")
        self.base = Path(tempfile.mkdtemp(prefix="berth-e2e-"))
        self.procs = {}
        self.databases = []

    def start(self, *names: str, timeout: float = 20.0) -> None:
        for name in names or SERVICES:
            self.wait_healthy(name, timeout)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
