"""The runtime's service logic: container records and their lifecycle.

The gRPC servicer is a thin adapter over ``Containers``. State lives in the DB;
processes live under the supervisor; cgroups are created here before a spawn and
removed when the exit is recorded. All state transitions happen under one lock,
and ``changed`` (a Condition on it) wakes waiters whenever a container exits.

Restart policies are applied here, where exits are seen: an exit that the policy
restarts schedules a start after Docker's backoff (100 ms doubling, reset once a run
lasted 10 s); at start-up, ``always`` and ``unless-stopped`` containers that are not
running come back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import pwd
import queue
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import json_format
from sqlalchemy import select

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.common.db import open_db
from services.runtime import logs
from services.runtime.cgroups import Limits, Manager
from services.runtime.models import Base, ContainerRecord, add_missing_columns
from services.runtime.plumbing import NoPlumbing
from services.runtime.security import devices as device_policy
from services.runtime.security import policy as security
from services.runtime.security import seccomp, userns
from services.runtime.supervisor.client import (
    ExecFailed,
    Stream,
    SupervisorClient,
    SupervisorError,
    SupervisorUnavailable,
)
from services.runtime.supervisor.spawn import SpawnConfig

log = logging.getLogger("berth.runtime")

ID_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_TIMEOUT = 10
LOST_EXIT_CODE = 255
# Docker's json-file defaults would never rotate; Berth rotates by default, with the
# sizes of Docker's `local` driver (20 MB x 5 files), so no container can fill the disk.
DEFAULT_LOG_MAX_SIZE = 20 << 20
DEFAULT_LOG_MAX_FILES = 5
RESTART_BACKOFF_START = 0.1
RESTART_BACKOFF_MAX = 60.0
RESTART_RESET_AFTER = 10.0  # a run at least this long resets the backoff
RESTART_POLICIES = ("", "no", "on-failure", "always", "unless-stopped")
HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
         "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")


def parse_signal(value: str, default: int = signal.SIGKILL) -> int:
    """'KILL', 'SIGKILL', 'kill' or '9' -> 9; InvalidArgument otherwise."""
    value = (value or "").strip()
    if not value:
        return int(default)
    if value.isdigit():
        num = int(value)
        if 1 <= num < signal.NSIG:
            return num
        raise errors.InvalidArgument(f"Invalid signal: {value}")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise errors.InvalidArgument(f"Invalid signal: {value}") from None


def build_env(env: list[str], hostname: str) -> list[str]:
    """The caller's env plus PATH and HOSTNAME when absent (HOME is added in the container)."""
    keys = {e.partition("=")[0] for e in env}
    out = list(env)
    if "PATH" not in keys:
        out.insert(0, "PATH=" + DEFAULT_PATH)
    if "HOSTNAME" not in keys:
        out.insert(1 if "PATH" not in keys else 0, "HOSTNAME=" + hostname)
    return out


def resolv_conf(host_file: str = "/etc/resolv.conf") -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the container)."""
    try:
        lines = Path(host_file).read_text().splitlines()
    except OSError:
        lines = []
    kept = [ln for ln in lines if not (ln.startswith("nameserver") and
                                       (" 127." in ln or ln.split()[-1] == "::1"))]
    if not any(ln.startswith("nameserver") for ln in kept):
        kept += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
    return "\n".join(kept) + "\n"


def limits_of(spec: runtime_pb2.ContainerSpec) -> Limits:
    r = spec.resources
    return Limits(memory_bytes=r.memory_bytes, cpu_quota_us=r.cpu_quota_us, cpu_period_us=r.cpu_period_us,
                  pids_limit=r.pids_limit, cpu_shares=r.cpu_shares)


def spec_of(rec: ContainerRecord) -> runtime_pb2.ContainerSpec:
    return json_format.Parse(rec.spec_json, runtime_pb2.ContainerSpec())


def parse_size(text: str) -> int:
    """'10m', '1g', '512k', '100' (bytes): log-opt sizes, like Docker's."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", (text or "").lower())
    if not m:
        raise errors.InvalidArgument(f"invalid size: {text!r}")
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)])


def log_options(opts: dict[str, str]) -> tuple[int, int]:
    """(max_size, max_files) from --log-opt; InvalidArgument for unknown keys or values."""
    unknown = set(opts) - {"max-size", "max-file"}
    if unknown:
        raise errors.InvalidArgument(f"unknown log opt '{sorted(unknown)[0]}' for json-file log driver")
    size = parse_size(opts["max-size"]) if "max-size" in opts else DEFAULT_LOG_MAX_SIZE
    try:
        count = int(opts["max-file"]) if "max-file" in opts else DEFAULT_LOG_MAX_FILES
    except ValueError:
        raise errors.InvalidArgument(f"invalid value for max-file: {opts['max-file']!r}") from None
    if count < 1:
        raise errors.InvalidArgument("max-file cannot be less than 1")
    return size, count


def should_restart(policy: runtime_pb2.RestartPolicy, exit_code: int, restart_count: int,
                   manually_stopped: bool) -> bool:
    """Docker's rules for an exit the container made on its own (or was killed)."""
    if manually_stopped:
        return False
    if policy.name in ("always", "unless-stopped"):
        return True
    if policy.name == "on-failure":
        return exit_code != 0 and (policy.maximum_retry_count <= 0 or restart_count < policy.maximum_retry_count)
    return False


def next_backoff(previous: float, ran_for: float) -> float:
    """Docker's: start at 100 ms, double each time, at most a minute; a long run resets it."""
    if previous <= 0 or ran_for >= RESTART_RESET_AFTER:
        return RESTART_BACKOFF_START
    return min(previous * 2, RESTART_BACKOFF_MAX)


@dataclass
class AttachEvent:
    kind: str                 # "subscribed" | "output" | "exit"
    stream: int = 1
    data: bytes = b""
    time_ns: int = 0
    exit_code: int = 0


@dataclass
class Input:
    """One item from an attached client: stdin bytes, a resize, or stdin's EOF."""

    kind: str                 # "stdin" | "resize" | "close"
    data: bytes = b""
    rows: int = 0
    cols: int = 0


@dataclass
class ExecOptions:
    container: str
    args: list[str]
    env: list[str]
    user: str = ""
    workdir: str = ""
    tty: bool = False
    open_stdin: bool = False
    tty_rows: int = 0
    tty_cols: int = 0
    detach: bool = False


@dataclass
class TopEntry:
    pid: int
    container_pid: int
    ppid: int
    uid: int
    user: str
    start_ns: int
    cpu_ns: int
    tty: str
    cmd: str


@dataclass
class Stats:
    id: str
    name: str
    read_ns: int
    cpu_ns: int
    system_ns: int
    online_cpus: int
    memory_usage: int
    memory_limit: int
    pids: int
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int


class Containers:
    def __init__(self, runtime_dir: Path, db_url: str, supervisor: SupervisorClient, cgroups: Manager,
                 reconnect: Callable[[], SupervisorClient] | None = None) -> None:
        self.dir = Path(runtime_dir) / "containers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sessions = open_db(db_url, Base)
        add_missing_columns(self.sessions)
        self.sup = supervisor
        self.cgroups = cgroups
        self.reconnect = reconnect
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._stopped = threading.Event()
        self._watch_thread: threading.Thread | None = None
        self._backoff: dict[str, float] = {}
        self._restart_timers: dict[str, threading.Timer] = {}
        self._listeners: set[queue.Queue] = set()
        self._listeners_lock = threading.Lock()
        # Volumes, mounts and networks (services/runtime/plumbing.py); set by __main__.
        self.plumbing = NoPlumbing()
        # Health checks (services/runtime/health.py): told, under the lock, when a run starts
        # (True) or ends (False), so it can reset the record's health and (un)schedule probes.
        self.health_hook: Callable[[ContainerRecord, bool], None] = lambda rec, running: None

    # ---- start-up and shutdown ----------------------------------------------------------
    def open(self) -> None:
        """Subscribe to exits, reconcile the DB with the supervisor, then follow exits in a thread."""
        stream = self.sup.watch()
        self.reconcile()
        self._watch_thread = threading.Thread(target=self._watch, args=(stream,), name="exit-watch", daemon=True)
        self._watch_thread.start()
        self._restart_on_boot()

    def _restart_on_boot(self) -> None:
        """``always`` (even if stopped by hand) and ``unless-stopped`` (unless stopped by
        hand) containers that are not running come back when the runtime starts."""
        with self.sessions() as s:
            recs = s.scalars(select(ContainerRecord).where(ContainerRecord.status == "exited")).all()
        for rec in recs:
            policy = spec_of(rec).restart_policy.name
            if policy == "always" or (policy == "unless-stopped" and not rec.manually_stopped):
                try:
                    self.start(rec.id, manual=rec.manually_stopped and policy != "always")
                except errors.BerthError as exc:
                    log.warning("%s: cannot restart: %s", rec.id, exc)

    def close(self) -> None:
        self._stopped.set()
        with self.lock:
            for timer in self._restart_timers.values():
                timer.cancel()
            self._restart_timers.clear()
        self.sup.shutdown(if_idle=True)
        # Leave no empty parent cgroup behind; one still holding containers stays.
        self.cgroups.remove_parent()

    def _watch(self, stream) -> None:  # noqa: ANN001
        unrecorded: list[tuple[str, int, int, int]] = []  # exits the DB refused (a full disk): retried
        while not self._stopped.is_set():
            try:
                while not self._stopped.is_set():
                    ev = stream.next(timeout=1.0)
                    if ev is not None and ev.kind == "exit":
                        unrecorded.append((ev.id, ev.pid, ev.exit_code, ev.finished_at))
                    unrecorded = [e for e in unrecorded if not self._try_on_exit(*e)]
            except (EOFError, OSError, SupervisorError) as exc:
                stream.close()
                if self._stopped.is_set():
                    return
                log.warning("lost the supervisor (%s); reconnecting", exc)
                while not self._stopped.is_set():
                    try:
                        if self.reconnect is not None:
                            self.sup = self.reconnect()
                        stream = self.sup.watch()
                        self.reconcile()
                        break
                    except (SupervisorError, OSError) as exc2:
                        log.warning("supervisor still unavailable: %s", exc2)
                        time.sleep(0.5)

    def reconcile(self) -> None:
        """Containers recorded running whose process is gone become exited (code from exit.json or 255)."""
        alive = self.sup.list()
        with self.lock, self.sessions() as s:
            for rec in s.scalars(select(ContainerRecord)).all():
                if rec.status == "running":
                    if alive.get(rec.id) == rec.pid:
                        continue
                    code, finished = LOST_EXIT_CODE, time.time_ns()
                    try:
                        data = json.loads((self.dir / rec.id / "exit.json").read_text())
                        if data.get("pid") in (None, rec.pid):
                            code, finished = int(data["exit_code"]), int(data["finished_at"])
                    except (OSError, ValueError, KeyError):
                        pass
                    self._record_exit(rec, code, finished)
                elif rec.id in alive:  # spawned, then the runtime died before recording it: adopt it
                    rec.status, rec.pid, rec.exit_code, rec.error = "running", alive[rec.id], 0, ""
                    rec.started_ns, rec.finished_ns = time.time_ns(), 0
                    self.health_hook(rec, True)
                elif self.cgroups.exists(rec.id):
                    self._remove_cgroups(rec.id)
            s.commit()
            self._drop_unrecorded(set(s.scalars(select(ContainerRecord.id)).all()) | set(alive))
            self.changed.notify_all()

    def _drop_unrecorded(self, keep: set[str]) -> None:
        """A crash between a container's files and its record (in create or rm) leaves a
        directory no record reaches: it goes, with whatever cgroups and network it still holds."""
        for entry in os.scandir(self.dir):
            if ID_RE.match(entry.name) and entry.name not in keep:
                log.warning("%s: removing a container directory without a record", entry.name)
                self._remove_cgroups(entry.name)
                shutil.rmtree(entry.path, ignore_errors=True)

    # ---- lookups ------------------------------------------------------------------------
    def _find(self, s, ref: str) -> ContainerRecord:  # noqa: ANN001
        ref = (ref or "").strip()
        if ref:
            rec = s.get(ContainerRecord, ref)
            if rec is None:
                rec = s.scalars(select(ContainerRecord).where(ContainerRecord.name == ref.lstrip("/"))).first()
            if rec is None and re.fullmatch(r"[0-9a-f]{1,63}", ref):
                found = s.scalars(select(ContainerRecord).where(ContainerRecord.id.startswith(ref)).limit(2)).all()
                if len(found) > 1:
                    raise errors.InvalidArgument(f"multiple containers found with provided prefix: {ref}")
                rec = found[0] if found else None
            if rec is not None:
                return rec
        raise errors.NotFound(f"No such container: {ref}")

    def get(self, ref: str) -> ContainerRecord:
        with self.sessions() as s:
            return self._find(s, ref)

    def list(self, all_: bool = False) -> list[ContainerRecord]:
        with self.sessions() as s:
            q = select(ContainerRecord).order_by(ContainerRecord.created_ns.desc())
            if not all_:
                q = q.where(ContainerRecord.status == "running")
            return list(s.scalars(q).all())

    # ---- lifecycle ----------------------------------------------------------------------
    def create(self, cid: str, name: str, spec: runtime_pb2.ContainerSpec) -> ContainerRecord:
        if not ID_RE.match(cid or ""):
            raise errors.InvalidArgument(f"invalid container id {cid!r}: want 64 lowercase hex digits")
        name = (name or "").lstrip("/")
        if name and not NAME_RE.match(name):
            raise errors.InvalidArgument(
                f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
        if not spec.args:
            raise errors.InvalidArgument("no command specified")
        if spec.rootfs.type not in ("overlay", "bind"):
            raise errors.InvalidArgument(f"unsupported rootfs mount type {spec.rootfs.type!r}")
        if spec.restart_policy.name not in RESTART_POLICIES:
            raise errors.InvalidArgument(f"invalid restart policy '{spec.restart_policy.name}'")
        if spec.restart_policy.name and spec.auto_remove and spec.restart_policy.name != "no":
            raise errors.InvalidArgument("can't create 'AutoRemove' container with restart policy")
        log_options(dict(spec.log_opts))
        security.validate(spec)  # caps, devices, seccomp profile, userns (issue 7)
        self.plumbing.on_create(cid, name, spec)  # may fill in anonymous volume names
        with self.lock, self.sessions() as s:
            if s.get(ContainerRecord, cid) is not None:
                raise errors.AlreadyExists(f"container {cid} already exists")
            if name:
                other = s.scalars(select(ContainerRecord).where(ContainerRecord.name == name)).first()
                if other is not None:
                    raise errors.AlreadyExists(
                        f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                        "You have to remove (or rename) that container to be able to reuse that name.")
            cdir = self.dir / cid
            cdir.mkdir(parents=True, exist_ok=True)
            rec = ContainerRecord(id=cid, name=name or None, spec_json=json_format.MessageToJson(spec),
                                  status="created", pid=0, exit_code=0, oom_killed=False, created_ns=time.time_ns(),
                                  started_ns=0, finished_ns=0, error="", log_path=str(cdir / f"{cid}-json.log"))
            if security.userns_mode(spec.security) == "auto":
                rec.userns_base = self._allocate_userns(s)
            s.add(rec)
            s.commit()
            return rec

    def _allocate_userns(self, s) -> int:  # noqa: ANN001 - a session, under self.lock
        """A free uid/gid range: the lowest not recorded for another container (removed ones' are reused)."""
        used = set(s.scalars(select(ContainerRecord.userns_base).where(ContainerRecord.userns_base > 0)).all())
        try:
            return userns.allocate(used, userns.first_id(), userns.SIZE, userns.reserved_ranges())
        except userns.UsernsError as exc:
            raise errors.FailedPrecondition(str(exc)) from exc

    def _write_files(self, cdir: Path, hostname: str) -> dict[str, str]:
        files = {"/etc/hostname": hostname + "\n", "/etc/hosts": HOSTS, "/etc/resolv.conf": resolv_conf()}
        out = {}
        for inside, content in files.items():
            path = cdir / os.path.basename(inside)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(content)
            os.replace(tmp, path)
            out[inside] = str(path)
        return out

    def start(self, ref: str, manual: bool = True) -> ContainerRecord:
        """Start (or restart, ``manual=False`` from a restart policy) a container."""
        with self.lock, self.sessions() as s:
            rec = self._find(s, ref)
            if rec.status == "running":
                return rec
            timer = self._restart_timers.pop(rec.id, None)
            if timer is not None:
                timer.cancel()
            if manual:
                rec.manually_stopped = False
                self._backoff.pop(rec.id, None)
            spec = spec_of(rec)
            max_size, max_files = log_options(dict(spec.log_opts))
            cdir = self.dir / rec.id
            rootfs_dir = cdir / "rootfs"
            rootfs_dir.mkdir(parents=True, exist_ok=True)
            hostname = spec.hostname or rec.id[:12]
            files = self._write_files(cdir, hostname)
            with contextlib.suppress(FileNotFoundError):
                (cdir / "exit.json").unlink()
            if self.cgroups.exists(rec.id):
                self._remove_cgroups(rec.id)
            try:
                access = device_policy.cgroup_access(spec.security.privileged,
                                                     [(d.host_path, d.permissions) for d in spec.security.devices])
                procs = self.cgroups.create(rec.id, replace(limits_of(spec), devices=access))
            except (OSError, device_policy.DeviceError) as exc:
                raise errors.FailedPrecondition(f"cannot create cgroups for {rec.id}: {exc}") from exc
            try:
                extra = self.plumbing.prepare(rec.id, rec.name or "", spec, cdir, files, hostname)
            except BaseException:
                self._remove_cgroups(rec.id)  # releases whatever prepare made, too
                raise
            config = SpawnConfig(
                id=rec.id, args=list(spec.args), env=build_env(list(spec.env), hostname),
                rootfs=json_format.MessageToDict(spec.rootfs, preserving_proto_field_name=True),
                rootfs_dir=str(rootfs_dir), state_dir=str(cdir), log_path=rec.log_path, cwd=spec.cwd or "/",
                user=spec.user, hostname=hostname, files=files, cgroup_procs=[str(p) for p in procs],
                open_stdin=spec.open_stdin, tty=spec.tty, tty_rows=spec.tty_rows, tty_cols=spec.tty_cols,
                log_max_size=max_size, log_max_files=max_files,
                **self._spawn_security(spec, rec.userns_base or 0), **extra)
            try:
                reply = self.sup.spawn(config.to_dict())
            except SupervisorUnavailable as exc:
                self._remove_cgroups(rec.id)
                raise errors.Unavailable(str(exc)) from exc
            except SupervisorError as exc:  # the init could not even be forked: a state, like exec failures
                self._remove_cgroups(rec.id)
                rec.status, rec.exit_code, rec.error = "exited", 128, str(exc)
                rec.pid, rec.finished_ns = 0, time.time_ns()
                s.commit()
                self.changed.notify_all()
                return rec
            now = time.time_ns()
            rec.pid, rec.started_ns, rec.oom_killed = reply["pid"], now, False
            if reply.get("error"):
                rec.status, rec.exit_code, rec.error = "exited", reply["exit_code"], reply["error"]
                rec.finished_ns = now
                self._remove_cgroups(rec.id)
            else:
                rec.status, rec.exit_code, rec.error, rec.finished_ns = "running", 0, "", 0
                self.health_hook(rec, True)
            s.commit()
            self.changed.notify_all()
            return rec

    def _remove_cgroups(self, cid: str) -> None:
        self.plumbing.release(cid)  # a run's network goes with its cgroups, on every path
        try:
            self.cgroups.remove(cid)
        except OSError as exc:
            log.warning("%s: cannot remove cgroups: %s", cid, exc)

    def _record_exit(self, rec: ContainerRecord, code: int, finished_ns: int) -> None:
        rec.oom_killed = self.cgroups.oom_killed(rec.id)
        self._remove_cgroups(rec.id)
        rec.status, rec.exit_code, rec.finished_ns = "exited", code, finished_ns
        self.health_hook(rec, False)

    def _try_on_exit(self, cid: str, pid: int, code: int, finished_ns: int) -> bool:
        """Record an exit; False (logged) if it cannot be recorded yet, so the watcher lives on."""
        try:
            self._on_exit(cid, pid, code, finished_ns)
        except Exception as exc:  # noqa: BLE001 - e.g. "database or disk is full": retried each second
            log.warning("%s: cannot record its exit yet: %s", cid, str(exc).splitlines()[0])
            return False
        return True

    def _on_exit(self, cid: str, pid: int, code: int, finished_ns: int) -> None:
        with self.lock, self.sessions() as s:
            rec = s.get(ContainerRecord, cid)
            if rec is None or rec.status != "running" or rec.pid != pid:
                return
            self._record_exit(rec, code, finished_ns)
            s.commit()
            self.changed.notify_all()
            self._publish("die", rec, exitCode=str(code))
            self._maybe_restart(rec)

    def _maybe_restart(self, rec: ContainerRecord) -> None:
        """Schedule a restart if the policy wants one (called under the lock)."""
        if self._stopped.is_set():
            return
        policy = spec_of(rec).restart_policy
        if not should_restart(policy, rec.exit_code, rec.restart_count, rec.manually_stopped):
            return
        ran_for = (rec.finished_ns - rec.started_ns) / 1e9
        delay = next_backoff(self._backoff.get(rec.id, 0.0), ran_for)
        self._backoff[rec.id] = delay
        timer = threading.Timer(delay, self._restart, args=(rec.id,))
        timer.daemon = True
        self._restart_timers[rec.id] = timer
        timer.start()

    def _restart(self, cid: str) -> None:
        with self.lock:
            if self._restart_timers.pop(cid, None) is None or self._stopped.is_set():
                return  # cancelled: started, stopped or removed meanwhile
            with self.sessions() as s:
                rec = s.get(ContainerRecord, cid)
                if rec is None or rec.status != "exited" or rec.manually_stopped:
                    return
                rec.restart_count += 1
                s.commit()
            try:
                rec = self.start(cid, manual=False)
                self._publish("start", rec, restartCount=str(rec.restart_count))
            except errors.BerthError as exc:
                log.warning("%s: restart failed: %s", cid, exc)

    # ---- events -------------------------------------------------------------------------
    def _publish(self, action: str, rec: ContainerRecord, **attrs: str) -> None:
        event = {"action": action, "id": rec.id, "name": rec.name or "", "attrs": attrs, "time_ns": time.time_ns()}
        with self._listeners_lock:
            for q in self._listeners:
                q.put(event)

    def events(self, is_active: Callable[[], bool] = lambda: True) -> Iterator[dict]:
        """Exits and policy restarts as they happen, until the caller goes away."""
        q: queue.Queue = queue.Queue()
        with self._listeners_lock:
            self._listeners.add(q)
        try:
            while is_active() and not self._stopped.is_set():
                try:
                    yield q.get(timeout=0.5)
                except queue.Empty:
                    continue
        finally:
            with self._listeners_lock:
                self._listeners.discard(q)

    def _cancel_restart(self, cid: str) -> None:
        with self.lock:
            timer = self._restart_timers.pop(cid, None)
            if timer is not None:
                timer.cancel()

    def _wait_exit(self, cid: str, pid: int, timeout: float | None) -> bool:
        """Wait until the run ``pid`` of container ``cid`` has exited; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while True:
                with self.sessions() as s:
                    rec = s.get(ContainerRecord, cid)
                if rec is None or rec.status != "running" or rec.pid != pid:
                    return True
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    return False
                self.changed.wait(left)

    def wait(self, ref: str, is_active: Callable[[], bool] = lambda: True) -> ContainerRecord:
        cid = self.get(ref).id
        with self.changed:
            while True:
                with self.sessions() as s:
                    rec = s.get(ContainerRecord, cid)
                if rec is None:
                    raise errors.NotFound(f"No such container: {ref}")
                if rec.status == "exited":
                    return rec
                if not is_active():
                    raise errors.Unavailable("wait cancelled")
                self.changed.wait(1.0)

    def kill(self, ref: str, sig: str = "") -> ContainerRecord:
        signum = parse_signal(sig)
        rec = self.get(ref)
        if rec.status != "running":
            raise errors.FailedPrecondition(f"Cannot kill container: {ref}: container is not running")
        try:
            self.sup.kill(rec.id, signum)
        except SupervisorError as exc:
            raise errors.FailedPrecondition(f"Cannot kill container: {ref}: {exc}") from exc
        self._thaw_if_paused(rec.id)  # a frozen process sees its signal only once thawed
        return self.get(rec.id)

    def _mark_stopped(self, cid: str) -> None:
        """A stop by hand: no restart policy brings it back (until started again)."""
        with self.lock, self.sessions() as s:
            rec = s.get(ContainerRecord, cid)
            if rec is not None:
                rec.manually_stopped = True
                s.commit()
        self._cancel_restart(cid)

    def stop(self, ref: str, timeout: int = -1) -> ContainerRecord:
        rec = self.get(ref)
        self._mark_stopped(rec.id)
        if rec.status != "running":
            return self.get(rec.id)
        spec = spec_of(rec)
        signum = parse_signal(spec.stop_signal, default=signal.SIGTERM)
        if timeout < 0:
            timeout = spec.stop_timeout if spec.stop_timeout >= 0 else DEFAULT_STOP_TIMEOUT
        with contextlib.suppress(SupervisorError):
            self.sup.kill(rec.id, signum)
        self._thaw_if_paused(rec.id)
        if not self._wait_exit(rec.id, rec.pid, timeout):
            with contextlib.suppress(SupervisorError):
                self.sup.kill(rec.id, signal.SIGKILL)
            self._wait_exit(rec.id, rec.pid, None)
        return self.get(rec.id)

    def remove(self, ref: str, force: bool = False) -> ContainerRecord:
        rec = self.get(ref)
        self._cancel_restart(rec.id)
        if rec.status == "running":
            if not force:
                raise errors.FailedPrecondition(
                    f"You cannot remove a running container {rec.id}. Stop the container before attempting "
                    "removal or force remove")
            self._mark_stopped(rec.id)
            with contextlib.suppress(SupervisorError):
                self.sup.kill(rec.id, signal.SIGKILL)
            self._thaw_if_paused(rec.id)
            self._wait_exit(rec.id, rec.pid, 30)
        with self.lock, self.sessions() as s:
            rec = s.get(ContainerRecord, rec.id)
            if rec is None:
                raise errors.NotFound(f"No such container: {ref}")
            if rec.status == "running":
                raise errors.FailedPrecondition(f"container {rec.id} did not stop")
            s.delete(rec)
            s.commit()
            self._cancel_restart(rec.id)
            self._backoff.pop(rec.id, None)
            self._remove_cgroups(rec.id)
            self.plumbing.removed(rec.id, spec_of(rec))
            shutil.rmtree(self.dir / rec.id, ignore_errors=True)
            self.changed.notify_all()
            return rec

    # ---- streams ------------------------------------------------------------------------
    def _pump(self, stream: Stream, target: str, inputs: Iterable[Input] | None) -> None:
        """Forward a client's input to the supervisor in a thread, until the input ends."""
        if inputs is None:
            return

        def run() -> None:
            try:
                for item in inputs:
                    if item.kind == "stdin":
                        stream.stdin(target, item.data)
                    elif item.kind == "resize":
                        stream.resize(target, item.rows, item.cols)
                    elif item.kind == "close":
                        stream.close_stdin(target)
            except Exception as exc:  # noqa: BLE001 - the client or supervisor went away: stop forwarding
                log.debug("%s: input ended: %s", target[:12], exc)

        threading.Thread(target=run, name=f"input-{target[:12]}", daemon=True).start()

    def attach(self, ref: str, is_active: Callable[[], bool] = lambda: True, inputs: Iterable[Input] | None = None,
               require_running: bool = False, start: bool = False) -> Iterator[AttachEvent]:
        """Subscribed, then output chunks, then the exit code; subscribing before Start loses nothing
        (with `start`, the container is started here, once subscribed: `start -a`).

        Several clients may attach at once; each one's input reaches the container's stdin.
        A client going away (or detaching) ends only its own subscription.
        """
        rec = self.get(ref)
        cid = rec.id
        if require_running and rec.status != "running":
            raise errors.FailedPrecondition("You cannot attach to a stopped container, start it first")
        if require_running and self.cgroups.frozen(cid):
            raise errors.FailedPrecondition("You cannot attach to a paused container, unpause it first")
        stream = self.sup.subscribe(cid)
        try:
            if not start:
                self._pump(stream, cid, inputs)
            yield AttachEvent("subscribed")
            if start:
                started = self.start(cid)
                if started.error:
                    raise errors.FailedPrecondition(started.error)
                self._pump(stream, cid, inputs)  # stdin only once there is a process to read it
            elif not stream.ack.get("running"):
                rec = self.get(cid)
                if rec.status == "exited":
                    yield AttachEvent("exit", exit_code=rec.exit_code)
                    return
            while is_active():
                ev = stream.next(timeout=0.5)
                if ev is None:
                    rec = self.get(cid)
                    # Nothing pending on our stream and the exit is already recorded: it happened
                    # before we subscribed (or the start failed before a spawn).
                    if rec.status == "exited" and cid not in self._alive_ids():
                        yield AttachEvent("exit", exit_code=rec.exit_code)
                        return
                    continue
                if ev.kind == "out":
                    yield AttachEvent("output", stream=ev.stream, data=ev.data, time_ns=ev.time_ns)
                elif ev.kind == "exit":
                    # Record the exit (idempotent with the watch thread) before telling the
                    # caller, so an Inspect right after shows it, OOMKilled included.
                    self._on_exit(cid, ev.pid, ev.exit_code, ev.finished_at)
                    yield AttachEvent("exit", exit_code=ev.exit_code)
                    return
        finally:
            stream.close()

    def _alive_ids(self) -> set[str]:
        try:
            return set(self.sup.list())
        except SupervisorError:
            return set()

    def logs(self, ref: str, tail: int = -1, since_ns: int = 0, until_ns: int = 0, follow: bool = False,
             is_active: Callable[[], bool] = lambda: True) -> Iterator[logs.Entry]:
        """The log (and its rotated files); with ``follow``, then new entries until the
        container stops. The switch from reading to following happens at one offset, so
        nothing is lost or repeated."""
        rec = self.get(ref)
        cid = rec.id
        follow = follow and not until_ns and rec.status == "running"
        start = logs.position(rec.log_path) if follow else None
        yield from logs.read(rec.log_path, tail, since_ns, until_ns, end=start[1] if start else None)
        if not follow:
            return

        def running() -> bool:
            try:
                return self.get(cid).status == "running"
            except errors.NotFound:
                return False

        yield from logs.follow(rec.log_path, running, start=start, is_active=is_active)

    # ---- exec ---------------------------------------------------------------------------
    def exec(self, opts: ExecOptions, is_active: Callable[[], bool] = lambda: True,
             inputs: Iterable[Input] | None = None) -> Iterator[AttachEvent]:
        """Run a process in the container's namespaces and cgroup: "subscribed" once it
        runs, its output, then its exit code. A command that cannot run reports Docker's
        126/127 with the reason on stderr."""
        if not opts.args:
            raise errors.InvalidArgument("No exec command specified")
        rec = self.get(opts.container)
        if rec.status != "running":
            raise errors.FailedPrecondition(f"Container {rec.id} is not running")
        if self.cgroups.frozen(rec.id):
            raise errors.FailedPrecondition(f"Container {rec.id} is paused, unpause the container first")
        config = self.exec_config(rec, opts)
        try:
            stream = self.sup.exec(config.to_dict())
        except ExecFailed as exc:
            if exc.exit_code not in (126, 127):
                raise errors.FailedPrecondition(str(exc)) from exc
            yield AttachEvent("subscribed")
            yield AttachEvent("output", stream=2, data=f"exec failed: {exc}\n".encode(), time_ns=time.time_ns())
            yield AttachEvent("exit", exit_code=exc.exit_code)
            return
        except SupervisorError as exc:
            raise errors.Unavailable(str(exc)) from exc
        try:
            self._pump(stream, config.id, inputs)
            yield AttachEvent("subscribed")
            if opts.detach:
                return
            while is_active():
                ev = stream.next(timeout=0.5)
                if ev is None:
                    continue
                if ev.kind == "out":
                    yield AttachEvent("output", stream=ev.stream, data=ev.data, time_ns=ev.time_ns)
                elif ev.kind == "exit":
                    yield AttachEvent("exit", exit_code=ev.exit_code)
                    return
        except EOFError as exc:
            raise errors.Unavailable("lost the supervisor during exec") from exc
        finally:
            stream.close()

    def exec_config(self, rec: ContainerRecord, opts: ExecOptions) -> SpawnConfig:
        """What the supervisor needs to start ``opts`` in the running container ``rec``
        (also used by the health monitor's probes)."""
        spec = spec_of(rec)
        hostname = spec.hostname or rec.id[:12]
        env = build_env(_merge_env(list(spec.env), opts.env), hostname)
        return SpawnConfig(
            id="exec-" + secrets.token_hex(16), args=list(opts.args), env=env, rootfs={}, rootfs_dir="",
            state_dir=str(self.dir / rec.id), log_path="", cwd=opts.workdir or spec.cwd or "/",
            user=opts.user or spec.user, cgroup_procs=[str(d / "cgroup.procs") for d in self.cgroups.dirs(rec.id)],
            open_stdin=opts.open_stdin, tty=opts.tty, tty_rows=opts.tty_rows, tty_cols=opts.tty_cols,
            container=rec.id, **self._spawn_security(spec))

    def _spawn_security(self, spec: runtime_pb2.ContainerSpec, userns_base: int = 0) -> dict:
        """policy.spawn_fields; where the devices cgroup guards every open (v1), the default
        seccomp profile allows mknod of device nodes again, as Docker's does."""
        fields = security.spawn_fields(spec.security, userns_base)
        if fields["seccomp"] == seccomp.DEFAULT and getattr(self.cgroups, "enforces_devices", False):
            fields["seccomp"] = seccomp.DEFAULT_WITH_MKNOD
        return fields

    # ---- pause, top, stats, update, rename, restart -------------------------------------
    def _running(self, ref: str) -> ContainerRecord:
        rec = self.get(ref)
        if rec.status != "running":
            raise errors.FailedPrecondition(f"Container {rec.id} is not running")
        return rec

    def is_paused(self, rec: ContainerRecord) -> bool:
        return rec.status == "running" and self.cgroups.frozen(rec.id)

    def _thaw_if_paused(self, cid: str) -> None:
        if self.cgroups.frozen(cid):
            with contextlib.suppress(OSError):
                self.cgroups.thaw(cid)

    def pause(self, ref: str) -> ContainerRecord:
        rec = self._running(ref)
        if self.cgroups.frozen(rec.id):
            raise errors.FailedPrecondition(f"Container {rec.id} is already paused")
        try:
            self.cgroups.freeze(rec.id)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.cgroups.thaw(rec.id)
            raise errors.FailedPrecondition(f"Cannot pause container {rec.id}: {exc}") from exc
        return rec

    def unpause(self, ref: str) -> ContainerRecord:
        rec = self._running(ref)
        if not self.cgroups.frozen(rec.id):
            raise errors.FailedPrecondition(f"Container {rec.id} is not paused")
        try:
            self.cgroups.thaw(rec.id)
        except OSError as exc:
            raise errors.FailedPrecondition(f"Cannot unpause container {rec.id}: {exc}") from exc
        return rec

    def top(self, ref: str) -> list[TopEntry]:
        """The container's processes, from its cgroup, with host and container pids."""
        rec = self._running(ref)
        out = []
        for pid in sorted(self.cgroups.pids(rec.id)):
            entry = _proc_entry(pid)
            if entry is not None:
                out.append(entry)
        return out

    def stats(self, refs: list[str]) -> list[Stats]:
        recs = [self._running(r) for r in refs] if refs else self.list(False)
        out = []
        system_ns = _system_cpu_ns()
        for rec in recs:
            extra = self.cgroups.stats(rec.id)
            rx, tx = _net_bytes(rec.pid)
            out.append(Stats(rec.id, rec.name or "", time.time_ns(), self.cgroups.cpu_usage_ns(rec.id), system_ns,
                             os.cpu_count() or 1, self.cgroups.memory_usage_bytes(rec.id),
                             extra["memory_limit"] or _host_memory(), extra["pids"], rx, tx,
                             extra["block_read"], extra["block_write"]))
        return out

    def update(self, ref: str, resources: runtime_pb2.Resources | None,
               policy: runtime_pb2.RestartPolicy | None) -> ContainerRecord:
        """Change limits (live, on a running container's cgroups) and the restart policy."""
        with self.lock, self.sessions() as s:
            rec = self._find(s, ref)
            spec = spec_of(rec)
            if policy is not None:
                if policy.name not in RESTART_POLICIES:
                    raise errors.InvalidArgument(f"invalid restart policy {policy.name!r}")
                if spec.auto_remove and policy.name not in ("", "no"):
                    raise errors.InvalidArgument(
                        "Restart policy cannot be updated because AutoRemove is enabled for the container")
                spec.restart_policy.CopyFrom(policy)
            if resources is not None:
                merged = spec.resources
                for field in ("memory_bytes", "cpu_quota_us", "cpu_period_us", "pids_limit", "cpu_shares"):
                    value = getattr(resources, field)
                    if value > 0:
                        setattr(merged, field, value)
                if rec.status == "running":
                    try:
                        self.cgroups.apply(rec.id, limits_of(spec))
                    except OSError as exc:
                        raise errors.FailedPrecondition(f"Cannot update container {rec.id}: {exc}") from exc
            rec.spec_json = json_format.MessageToJson(spec)
            s.commit()
            return rec

    def rename(self, ref: str, name: str) -> ContainerRecord:
        name = (name or "").lstrip("/")
        if not NAME_RE.match(name):
            raise errors.InvalidArgument(
                f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        with self.lock, self.sessions() as s:
            rec = self._find(s, ref)
            if rec.name == name:
                raise errors.InvalidArgument("Renaming a container with the same name as its current name")
            other = s.scalars(select(ContainerRecord).where(ContainerRecord.name == name)).first()
            if other is not None:
                raise errors.AlreadyExists(
                    f'Error when allocating new name: Conflict. The container name "/{name}" is already in use '
                    f'by container "{other.id}". You have to remove (or rename) that container to be able to '
                    "reuse that name.")
            rec.name = name
            s.commit()
            self.plumbing.renamed(rec.id)  # peers' /etc/hosts follow the new name
            return rec

    def restart(self, ref: str, timeout: int = -1) -> ContainerRecord:
        rec = self.stop(ref, timeout)
        return self.start(rec.id)

    # ---- cp -----------------------------------------------------------------------------
    def _copy(self, ref: str, mode: str, path: str) -> tuple[socket.socket, dict]:
        """A socket to a cp helper in the container's root, after its first status line."""
        rec = self.get(ref)
        spec = spec_of(rec)
        if not path:
            raise errors.InvalidArgument("a path is required")
        if not path.startswith("/"):
            path = posixpath.join(spec.cwd or "/", path)
        request = {"mode": mode, "id": rec.id, "path": path,
                   "rootfs": json_format.MessageToDict(spec.rootfs, preserving_proto_field_name=True),
                   "rootfs_dir": str(self.dir / rec.id / "rootfs")}
        try:
            sock = self.sup.copy(request)
        except SupervisorError as exc:
            raise errors.FailedPrecondition(str(exc)) from exc
        status = _read_status(sock)
        if not status.get("ok"):
            sock.close()
            message = status.get("error", "copy failed")
            raise (errors.NotFound if "Could not find" in message else errors.FailedPrecondition)(message)
        return sock, status

    def copy_from(self, ref: str, path: str) -> Iterator[bytes]:
        """A tar stream of ``path`` in the container (Docker's archive of it)."""
        sock, _ = self._copy(ref, "from", path)
        with sock:
            while chunk := sock.recv(1 << 16):
                yield chunk

    def copy_to(self, ref: str, path: str, chunks: Iterable[bytes]) -> None:
        """Unpack a tar stream at ``path`` in the container."""
        sock, _ = self._copy(ref, "to", path)
        with sock:
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the helper stopped reading: its status says why
            status = _read_status(sock)
        if not status.get("ok"):
            raise errors.FailedPrecondition(status.get("error", "copy failed"))


def _read_status(sock: socket.socket) -> dict:
    """One JSON line, read a byte at a time so that the tar stream after it stays unread."""
    line = bytearray()
    while not line.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        line += b
    try:
        return json.loads(line) if line.strip() else {"ok": False, "error": "copy helper exited"}
    except ValueError:
        return {"ok": False, "error": "copy helper sent garbage"}


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*base, *extra]:
        merged[item.partition("=")[0]] = item
    return list(merged.values())


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _boot_time_ns() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) * 1_000_000_000
    return 0


def _proc_entry(pid: int) -> TopEntry | None:
    """One process from /proc (None if it is gone): pids, uid, start, cpu time, tty, command."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    ppid, tty_nr = int(fields[1]), int(fields[4])
    cpu_ticks = int(fields[11]) + int(fields[12])
    start_ticks = int(fields[19])
    uid = int(status.get("Uid", "0").split()[0])
    nspid = status.get("NSpid", str(pid)).split()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    tty_name = "?"
    if tty_nr:
        major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
        tty_name = f"pts/{minor}" if 136 <= major <= 143 else f"tty{minor}"
    cmd = cmdline.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{comm}]"
    return TopEntry(pid=pid, container_pid=int(nspid[-1]), ppid=ppid, uid=uid, user=user,
                    start_ns=_boot_time_ns() + start_ticks * 1_000_000_000 // _CLK_TCK,
                    cpu_ns=cpu_ticks * 1_000_000_000 // _CLK_TCK, tty=tty_name, cmd=cmd)


def _system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * 1_000_000_000 // _CLK_TCK


def _net_bytes(pid: int) -> tuple[int, int]:
    """rx/tx bytes of the container's network namespace, loopback excluded (like Docker's)."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, data = line.partition(":")
        if name.strip() == "lo":
            continue
        parts = data.split()
        rx += int(parts[0])
        tx += int(parts[8])
    return rx, tx


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
