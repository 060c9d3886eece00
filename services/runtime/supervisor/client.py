"""The runtime server's side of the supervisor protocol, and starting the supervisor."""

from __future__ import annotations

import base64
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.runtime.supervisor import protocol


class SupervisorError(Exception):
    """The supervisor refused a request (e.g. the container could not be started)."""


class SupervisorUnavailable(SupervisorError):
    """No supervisor answered."""


class ExecFailed(SupervisorError):
    """An exec could not run its command; ``exit_code`` is Docker's (126/127, or 0 when
    the failure was not the command's, e.g. the container stopped)."""

    def __init__(self, message: str, exit_code: int = 0) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Event:
    kind: str            # "out" | "exit"
    id: str
    stream: int = 1      # 1 stdout, 2 stderr
    data: bytes = b""
    time_ns: int = 0
    pid: int = 0
    exit_code: int = 0
    finished_at: int = 0

    @classmethod
    def from_msg(cls, m: dict) -> Event:
        if m["ev"] == "out":
            return cls("out", m["id"], stream=m["s"], data=base64.b64decode(m["d"]), time_ns=m["t"])
        return cls("exit", m["id"], pid=m["pid"], exit_code=m["exit_code"], finished_at=m["finished_at"])


class Stream:
    """A long-lived connection that receives events (a subscription or the exit watch)."""

    def __init__(self, sock: socket.socket, ack: dict, buf: protocol.LineBuffer, pending: list[bytes]) -> None:
        self.sock = sock
        self.ack = ack
        self._buf = buf
        self._pending = pending
        self._send_lock = threading.Lock()

    def send(self, op: str, **kw: object) -> None:
        """A fire-and-forget request on this connection (stdin, close_stdin, resize);
        another thread may be reading events meanwhile."""
        with self._send_lock:
            self.sock.sendall(protocol.encode({"op": op, "noreply": True, **kw}))

    def stdin(self, pid_id: str, data: bytes) -> None:
        self.send("stdin", id=pid_id, d=base64.b64encode(data).decode())

    def close_stdin(self, pid_id: str) -> None:
        self.send("close_stdin", id=pid_id)

    def resize(self, pid_id: str, rows: int, cols: int) -> None:
        self.send("resize", id=pid_id, rows=rows, cols=cols)

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None on timeout. Raises EOFError when the supervisor goes away."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("supervisor closed the connection")
            self._pending.extend(self._buf.feed(data))
        return Event.from_msg(protocol.decode(self._pending.pop(0)))

    def close(self) -> None:
        self.sock.close()


class SupervisorClient:
    def __init__(self, socket_path: Path | str, timeout: float = 60.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def _open(self, req: dict) -> tuple[socket.socket, dict, protocol.LineBuffer, list[bytes]]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(protocol.encode(req))
            buf = protocol.LineBuffer()
            lines: list[bytes] = []
            while not lines:
                data = sock.recv(1 << 16)
                if not data:
                    raise SupervisorUnavailable("supervisor closed the connection")
                lines = buf.feed(data)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise SupervisorUnavailable(f"supervisor unavailable: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return sock, protocol.decode(lines[0]), buf, lines[1:]

    def call(self, op: str, **kw: object) -> dict:
        sock, reply, _, _ = self._open({"op": op, **kw})
        sock.close()
        if not reply.get("ok"):
            raise SupervisorError(reply.get("error", "supervisor error"))
        return reply

    def ping(self) -> bool:
        try:
            self.call("ping")
            return True
        except SupervisorError:
            return False

    def spawn(self, config: dict) -> dict:
        return self.call("spawn", config=config)

    def kill(self, cid: str, signum: int) -> None:
        self.call("kill", id=cid, signal=signum)

    def list(self) -> dict[str, int]:
        return {c["id"]: c["pid"] for c in self.call("list")["containers"]}

    def subscribe(self, cid: str) -> Stream:
        sock, ack, buf, pending = self._open({"op": "subscribe", "id": cid})
        return Stream(sock, ack, buf, pending)

    def exec(self, config: dict) -> Stream:
        """Start a process in a running container; the stream carries its output and exit."""
        sock, ack, buf, pending = self._open({"op": "exec", "config": config})
        if not ack.get("ok"):
            sock.close()
            raise ExecFailed(ack.get("error", "exec failed"), int(ack.get("exit_code", 0)))
        return Stream(sock, ack, buf, pending)

    def copy(self, request: dict) -> socket.socket:
        """A socket to a cp helper for ``request`` (mode, id, path, rootfs, rootfs_dir)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
            sock.sendall(protocol.encode({"op": "copy", **request}))
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
            while data and not data.endswith(b"\n"):
                more = sock.recv(1 << 16)
                if not more:
                    break
                data += more
        except OSError as exc:
            raise SupervisorUnavailable(f"supervisor unavailable: {exc}") from exc
        finally:
            sock.close()
        reply = protocol.decode(data) if data.strip() else {"ok": False, "error": "supervisor closed the connection"}
        if not reply.get("ok") or not fds:
            for fd in fds:
                os.close(fd)
            raise SupervisorError(reply.get("error", "copy failed"))
        return socket.socket(fileno=fds[0])

    def watch(self) -> Stream:
        sock, ack, buf, pending = self._open({"op": "watch"})
        return Stream(sock, ack, buf, pending)

    def shutdown(self, if_idle: bool = True) -> bool:
        try:
            self.call("shutdown", if_idle=if_idle)
            return True
        except SupervisorError:
            return False


def ensure_running(socket_path: Path, run_dir: Path, timeout: float = 15.0) -> SupervisorClient:
    """Connect to the supervisor, starting it (detached, in its own session) if none answers."""
    client = SupervisorClient(socket_path)
    if client.ping():
        return client
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "supervisor.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.runtime.supervisor"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
                                env={**os.environ, "PYTHONPATH": _import_path()})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.ping():
            return client
        if proc.poll() is not None and not client.ping():
            # It may have lost a race to a supervisor that started meanwhile; try once more.
            time.sleep(0.1)
            if client.ping():
                return client
            raise SupervisorError(f"supervisor exited with {proc.returncode}, see {run_dir / 'supervisor.log'}")
        time.sleep(0.02)
    raise SupervisorError("supervisor did not start")


def _import_path() -> str:
    """Make sure the supervisor can import this package and the generated stubs from cwd=/."""
    here = Path(__file__).resolve().parents[3]
    parts = [str(here), str(here / "gen"), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)
