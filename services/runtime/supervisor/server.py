"""The supervisor: one single-threaded process per host that parents every container.

It forks container inits and exec'd processes (``spawn.py``), holds their stdio pipes
or pty masters, appends init output to json-file logs (rotated) and forwards output to
subscribers, buffers stdin towards them without ever blocking, reaps them as a child
subreaper, and records each init's exit in ``<state_dir>/exit.json`` before announcing it.
The runtime gRPC server talks to it over a unix socket (``protocol.py``); the
supervisor outlives that server so containers keep running across its restarts.
"""

from __future__ import annotations

import base64
import contextlib
import errno
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

from services.runtime import tty
from services.runtime.logs import LogWriter
from services.runtime.supervisor import protocol
from services.runtime.supervisor.spawn import SpawnConfig, Spawned, spawn
from services.runtime.syscalls import PR_SET_CHILD_SUBREAPER, LinuxSyscalls, Syscalls

log = logging.getLogger("berth.supervisor")

MAX_PENDING = 16 << 20  # a subscriber this far behind is dropped
MAX_STDIN = 1 << 20     # stdin a process does not read is buffered up to this, then dropped


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except OSError:
        os.unlink(tmp)  # a full disk leaves no temp file behind
        raise
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
    log: LogWriter | None         # None for exec'd processes (Docker does not log them)
    fds: dict[int, str]           # pipe read end (or pty master dup) -> "stdout" | "stderr"
    stdin: int = -1               # our write end of its stdin (a pipe, or a dup of the pty master)
    master: int = -1              # the pty master, kept for resizes
    container: str = ""           # exec: the container it runs in; "" for an init
    inbuf: bytearray = field(default_factory=bytearray)
    close_stdin: bool = False     # close stdin once inbuf is written
    cgroups: list[str] = field(default_factory=list)  # its cgroup.procs files

    @property
    def is_exec(self) -> bool:
        return bool(self.container)


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
                elif kind == "stdin" and key.fd == obj.stdin:
                    self._stdin_flush(obj)

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
            self._thaw(c)
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
        if c.log is not None:
            c.log.close()
        self._close_stdin(c)
        if c.master >= 0:
            os.close(c.master)
            c.master = -1
        finished = time.time_ns()
        if not c.is_exec:
            try:
                write_atomic(os.path.join(c.state_dir, "exit.json"),
                             json.dumps({"exit_code": exit_code, "finished_at": finished, "pid": c.pid}).encode())
            except OSError as exc:
                log.warning("%s: cannot record exit: %s", c.id, exc)
        del self.containers[c.id]
        del self.by_pid[c.pid]
        self._event(c.id, {"ev": "exit", "id": c.id, "pid": c.pid, "exit_code": exit_code,
                           "finished_at": finished}, final=True, watchers=not c.is_exec)

    # ---- container output ---------------------------------------------------------------
    def _pipe_read(self, c: Running, fd: int) -> bool:
        """Read one chunk; False when the pipe is empty (EAGAIN) or closed (EOF)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError as exc:  # EIO: a pty master whose slave every process has closed
            if exc.errno != errno.EIO:
                log.warning("%s: read: %s", c.id, exc)
            data = b""
        if not data:
            self._close_pipe(c, fd)
            return False
        stream = c.fds[fd]
        now = time.time_ns()
        if c.log is not None:
            c.log.write(stream, data, now)
        self._event(c.id, {"ev": "out", "id": c.id, "s": 1 if stream == "stdout" else 2,
                           "d": base64.b64encode(data).decode(), "t": now})
        return True

    def _close_pipe(self, c: Running, fd: int) -> None:
        self.sel.unregister(fd)
        os.close(fd)
        del c.fds[fd]

    # ---- container input ----------------------------------------------------------------
    def _stdin_write(self, c: Running, data: bytes) -> None:
        if c.stdin < 0 or c.close_stdin:
            return
        if len(c.inbuf) + len(data) > MAX_STDIN:
            log.warning("%s: stdin not read, dropping %d bytes", c.id, len(data))
            return
        c.inbuf += data
        self._stdin_flush(c)

    def _stdin_flush(self, c: Running) -> None:
        """Write what stdin takes now; the rest waits for EVENT_WRITE (never block the loop)."""
        while c.inbuf and c.stdin >= 0:
            try:
                n = os.write(c.stdin, c.inbuf)
            except BlockingIOError:
                break
            except OSError:  # EPIPE/EIO: nobody reads it any more
                c.inbuf.clear()
                self._close_stdin(c)
                return
            del c.inbuf[:n]
        if c.stdin < 0:
            return
        if not c.inbuf and c.close_stdin:
            self._close_stdin(c)
            return
        registered = c.stdin in self.sel.get_map()
        if c.inbuf and not registered:
            self.sel.register(c.stdin, selectors.EVENT_WRITE, ("stdin", c))
        elif not c.inbuf and registered:
            self.sel.unregister(c.stdin)

    def _close_stdin(self, c: Running) -> None:
        if c.stdin < 0:
            return
        if c.stdin in self.sel.get_map():
            self.sel.unregister(c.stdin)
        os.close(c.stdin)
        c.stdin = -1

    @staticmethod
    def _thaw(c: Running) -> None:
        """A frozen (paused) container ignores SIGKILL until thawed: thaw before killing.

        The runtime owns the freezer; the supervisor only knows the cgroup dirs it was
        given at spawn, whose freeze files (v1 ``freezer.state``, v2 ``cgroup.freeze``) sit
        beside their ``cgroup.procs``.
        """
        for procs in c.cgroups:
            d = os.path.dirname(procs)
            for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                with contextlib.suppress(OSError), open(os.path.join(d, name), "w") as f:
                    f.write(value)

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

    def _event(self, cid: str, msg: dict, final: bool = False, watchers: bool = True) -> None:
        targets = set(self.subs.get(cid, ()))
        if final:
            if watchers:
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
        if op == "exec":
            return self._exec(conn, SpawnConfig.from_dict(req["config"]))
        if op == "copy":
            return self._copy(conn, req)
        if op in ("stdin", "close_stdin", "resize"):
            # Sent on a subscription, fire and forget: a reply would land among events.
            c = self.containers.get(req.get("id", ""))
            if c is not None:
                if op == "stdin":
                    self._stdin_write(c, base64.b64decode(req.get("d", "")))
                elif op == "close_stdin":
                    c.close_stdin = True
                    self._stdin_flush(c)
                elif c.master >= 0:
                    with contextlib.suppress(OSError):
                        tty.set_winsize(c.master, int(req.get("rows", 0)), int(req.get("cols", 0)))
            if req.get("noreply"):
                return None
            return {"ok": c is not None} if c is not None else {"ok": False, "error": "not running"}
        if op == "kill":
            c = self.containers.get(req.get("id", ""))
            if c is None:
                return {"ok": False, "error": "container is not running"}
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, int(req.get("signal", signal.SIGKILL)))
            if int(req.get("signal", signal.SIGKILL)) == signal.SIGKILL:
                self._thaw(c)
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
            return {"ok": True, "containers": [{"id": c.id, "pid": c.pid} for c in self.containers.values()
                                               if not c.is_exec]}
        if op == "shutdown":
            if req.get("if_idle") and self.containers:
                return {"ok": False, "error": f"{len(self.containers)} containers running"}
            self.exit_when_flushed = True
            if not req.get("if_idle"):
                self.stopping = True
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    @staticmethod
    def _close_all(result: Spawned) -> None:
        for fd in (result.stdout, result.stderr, result.stdin, result.master):
            if fd >= 0:
                os.close(fd)

    def _track(self, cfg: SpawnConfig, result: Spawned, writer: LogWriter | None, container: str = "") -> Running:
        fds = {fd: name for fd, name in ((result.stdout, "stdout"), (result.stderr, "stderr")) if fd >= 0}
        c = Running(cfg.id, result.pid, cfg.state_dir, writer, fds, result.stdin, result.master, container,
                    cgroups=list(cfg.cgroup_procs))
        self.containers[c.id] = c
        self.by_pid[c.pid] = c
        for fd in c.fds:
            self.sel.register(fd, selectors.EVENT_READ, ("pipe", c))
        return c

    def _exec(self, conn: Conn, cfg: SpawnConfig) -> dict:
        """Start a process in a running container; ``conn`` is subscribed to its output."""
        target = self.containers.get(cfg.container)
        if target is None or target.is_exec:
            return {"ok": False, "error": f"container {cfg.container} is not running"}
        if cfg.id in self.containers:
            return {"ok": False, "error": f"exec {cfg.id} already exists"}
        cfg.exec_pid = target.pid
        result = spawn(self.sys, cfg)
        if not result.pid:
            self._close_all(result)
            return {"ok": False, "error": result.error, "exit_code": result.exit_code}
        if result.error:
            # The exec failed: its process has exited (or is about to). Nothing to stream.
            os.waitpid(result.pid, 0)
            self._close_all(result)
            return {"ok": False, "error": result.error, "exit_code": result.exit_code}
        self.subs.setdefault(cfg.id, set()).add(conn)
        c = self._track(cfg, result, None, cfg.container)
        return {"ok": True, "pid": c.pid}

    def _copy(self, conn: Conn, req: dict) -> dict | None:
        """Fork a cp helper (``copy.py``) and hand the caller its end of a socketpair."""
        target = self.containers.get(req.get("id", ""))
        req["pid"] = target.pid if target is not None and not target.is_exec else 0
        if not req["pid"] and not req.get("rootfs"):
            return {"ok": False, "error": "container is not running and has no rootfs"}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, 65536)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                from services.runtime import copy

                copy.helper(self.sys, theirs, req)
            finally:
                os._exit(1)
        theirs.close()
        try:
            conn.sock.setblocking(True)
            socket.send_fds(conn.sock, [protocol.encode({"ok": True, "pid": pid})], [ours.fileno()])
        except OSError as exc:
            log.warning("cannot hand over a copy socket: %s", exc)
        finally:
            conn.sock.setblocking(False)
            ours.close()
        return None

    def _spawn(self, cfg: SpawnConfig) -> dict:
        if cfg.id in self.containers:
            return {"ok": True, "pid": self.containers[cfg.id].pid, "already": True}
        os.makedirs(cfg.state_dir, exist_ok=True)
        writer = LogWriter(cfg.log_path, cfg.log_max_size, cfg.log_max_files)
        result: Spawned = spawn(self.sys, cfg)
        if not result.pid:
            self._close_all(result)
            writer.close()
            return {"ok": False, "error": result.error}
        c = self._track(cfg, result, writer)
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
