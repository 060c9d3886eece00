"""The supervisor: one single-threaded process per host that parents every container.

It forks container inits (``spawn.py``), holds their stdio pipes, appends their
output to json-file logs and forwards it to subscribers, reaps them as a child
subreaper, and records each exit in ``<state_dir>/exit.json`` before announcing it.
The runtime gRPC server talks to it over a unix socket (``protocol.py``); the
supervisor outlives that server so containers keep running across its restarts.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from services.runtime.logs import LogWriter
from services.runtime.supervisor import protocol
from services.runtime.supervisor.spawn import SpawnConfig, Spawned, spawn
from services.runtime.syscalls import PR_SET_CHILD_SUBREAPER, LinuxSyscalls, Syscalls

log = logging.getLogger("berth.supervisor")

MAX_PENDING = 16 << 20  # a subscriber this far behind is dropped


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


@dataclass(eq=False)
class Conn:
    sock: socket.socket
    rbuf: protocol.LineBuffer = field(default_factory=protocol.LineBuffer)
    wbuf: bytearray = field(default_factory=bytearray)
    watch: bool = False
    closing: bool = False


@dataclass(eq=False)
class Running:
    id: str
    pid: int
    state_dir: str
    log: LogWriter
    fds: dict[int, str]           # pipe read end -> "stdout" | "stderr"
    stdin: int = -1


class Supervisor:
    def __init__(self, socket_path: str, pid_file: str, sys_: Syscalls | None = None) -> None:
        self.socket_path = socket_path
        self.pid_file = pid_file
        self.sys = sys_ or LinuxSyscalls()
        self.sel = selectors.DefaultSelector()
        self.containers: dict[str, Running] = {}
        self.by_pid: dict[int, Running] = {}
        self.subs: dict[str, set[Conn]] = {}
        self.conns: set[Conn] = set()
        self.stopping = False
        self.exit_when_flushed = False

    # ---- set-up -------------------------------------------------------------------------
    def _lock(self) -> bool:
        self._lock_fd = os.open(self.pid_file + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def run(self) -> int:
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        if not self._lock():
            log.info("another supervisor holds %s.lock", self.pid_file)
            return 0
        self.sys.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("signal", None))
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(self.socket_path)
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        write_atomic(self.pid_file, str(os.getpid()).encode())
        log.info("supervisor %d serving on %s", os.getpid(), self.socket_path)
        try:
            self._loop()
        finally:
            self._cleanup()
        return 0

    def _loop(self) -> None:
        while True:
            if self.stopping:
                self._kill_all()
                return
            if self.exit_when_flushed and not any(c.wbuf for c in self.conns):
                return
            for key, mask in self.sel.select(timeout=1.0):
                kind, obj = key.data
                if kind == "signal":
                    self._on_signal()
                elif kind == "accept":
                    self._accept()
                elif kind == "conn":
                    if mask & selectors.EVENT_READ and obj in self.conns:
                        self._conn_read(obj)
                    if mask & selectors.EVENT_WRITE and obj in self.conns:
                        self._conn_flush(obj)
                elif kind == "pipe" and key.fd in obj.fds:
                    self._pipe_read(obj, key.fd)

    def _cleanup(self) -> None:
        for c in list(self.conns):
            self._close(c)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        try:
            with open(self.pid_file) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.pid_file)
        except FileNotFoundError:
            pass

    # ---- signals and reaping ------------------------------------------------------------
    def _on_signal(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            data = b""
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
        self._reap()

    def _reap(self, block: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = self.by_pid.get(pid)
            if c is not None:
                self._finish(c, os.waitstatus_to_exitcode(status))
            if block:
                return

    def _kill_all(self) -> None:
        for c in list(self.containers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.containers and time.monotonic() < deadline:
            self._reap(block=True)
        for c in list(self.conns):
            self._conn_flush(c)

    def _finish(self, c: Running, code: int) -> None:
        """Flush the output left in the pipes, record the exit, then announce it."""
        exit_code = 128 - code if code < 0 else code
        for fd in list(c.fds):
            while self._pipe_read(c, fd):
                pass
            if fd in c.fds:
                self._close_pipe(c, fd)
        c.log.close()
        if c.stdin >= 0:
            os.close(c.stdin)
        finished = time.time_ns()
        try:
            write_atomic(os.path.join(c.state_dir, "exit.json"),
                         json.dumps({"exit_code": exit_code, "finished_at": finished, "pid": c.pid}).encode())
        except OSError as exc:
            log.warning("%s: cannot record exit: %s", c.id, exc)
        del self.containers[c.id]
        del self.by_pid[c.pid]
        self._event(c.id, {"ev": "exit", "id": c.id, "pid": c.pid, "exit_code": exit_code,
                           "finished_at": finished}, final=True)

    # ---- container output ---------------------------------------------------------------
    def _pipe_read(self, c: Running, fd: int) -> bool:
        """Read one chunk; False when the pipe is empty (EAGAIN) or closed (EOF)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            self._close_pipe(c, fd)
            return False
        stream = c.fds[fd]
        now = time.time_ns()
        c.log.write(stream, data, now)
        self._event(c.id, {"ev": "out", "id": c.id, "s": 1 if stream == "stdout" else 2,
                           "d": base64.b64encode(data).decode(), "t": now})
        return True

    def _close_pipe(self, c: Running, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        del c.fds[fd]

    # ---- clients ------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        conn = Conn(sock)
        self.conns.add(conn)
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))

    def _close(self, conn: Conn) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        for subs in self.subs.values():
            subs.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _conn_read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        for line in conn.rbuf.feed(data):
            try:
                reply = self._handle(conn, protocol.decode(line))
            except Exception as exc:  # noqa: BLE001 - one bad request must not end the loop
                log.exception("request failed")
                reply = {"ok": False, "error": str(exc)}
            if reply is not None:
                self._send(conn, reply)

    def _send(self, conn: Conn, msg: dict) -> None:
        if conn not in self.conns:
            return
        conn.wbuf += protocol.encode(msg)
        if len(conn.wbuf) > MAX_PENDING:
            log.warning("dropping a subscriber that fell behind")
            self._close(conn)
            return
        self._conn_flush(conn)

    def _conn_flush(self, conn: Conn) -> None:
        while conn.wbuf:
            try:
                n = conn.sock.send(conn.wbuf)
            except BlockingIOError:
                break
            except OSError:
                self._close(conn)
                return
            del conn.wbuf[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wbuf else 0)
        self.sel.modify(conn.sock, events, ("conn", conn))

    def _event(self, cid: str, msg: dict, final: bool = False) -> None:
        targets = set(self.subs.get(cid, ()))
        if final:
            targets |= {c for c in self.conns if c.watch}
            self.subs.pop(cid, None)
        for conn in targets:
            self._send(conn, msg)

    # ---- requests -----------------------------------------------------------------------
    def _handle(self, conn: Conn, req: dict) -> dict | None:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "spawn":
            return self._spawn(SpawnConfig.from_dict(req["config"]))
        if op == "kill":
            c = self.containers.get(req.get("id", ""))
            if c is None:
                return {"ok": False, "error": "container is not running"}
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, int(req.get("signal", signal.SIGKILL)))
            return {"ok": True}
        if op == "subscribe":
            cid = req["id"]
            self.subs.setdefault(cid, set()).add(conn)
            c = self.containers.get(cid)
            return {"ok": True, "running": c is not None, "pid": c.pid if c else 0}
        if op == "watch":
            conn.watch = True
            return {"ok": True}
        if op == "list":
            return {"ok": True, "containers": [{"id": c.id, "pid": c.pid} for c in self.containers.values()]}
        if op == "shutdown":
            if req.get("if_idle") and self.containers:
                return {"ok": False, "error": f"{len(self.containers)} containers running"}
            self.exit_when_flushed = True
            if not req.get("if_idle"):
                self.stopping = True
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _spawn(self, cfg: SpawnConfig) -> dict:
        if cfg.id in self.containers:
            return {"ok": True, "pid": self.containers[cfg.id].pid, "already": True}
        os.makedirs(cfg.state_dir, exist_ok=True)
        writer = LogWriter(cfg.log_path)
        result: Spawned = spawn(self.sys, cfg)
        if not result.pid:
            for fd in (result.stdout, result.stderr, result.stdin):
                if fd >= 0:
                    os.close(fd)
            writer.close()
            return {"ok": False, "error": result.error}
        c = Running(cfg.id, result.pid, cfg.state_dir, writer, {result.stdout: "stdout", result.stderr: "stderr"},
                    result.stdin)
        self.containers[c.id] = c
        self.by_pid[c.pid] = c
        for fd in c.fds:
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", c))
        if result.error:
            # Exec failed: pid 1 has exited (or is about to); record it now, in order.
            os.waitpid(c.pid, 0)
            self._finish(c, result.exit_code)
            return {"ok": True, "pid": c.pid, "error": result.error, "exit_code": result.exit_code}
        return {"ok": True, "pid": c.pid}


def main() -> int:
    from services.common.config import load

    logging.basicConfig(level=os.environ.get("BERTH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s supervisor %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    return Supervisor(str(cfg.supervisor_socket), str(cfg.run_dir / "supervisor.pid")).run()
