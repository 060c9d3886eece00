"""The runtime's service logic: container records and their lifecycle.

The gRPC servicer is a thin adapter over ``Containers``. State lives in the DB;
processes live under the supervisor; cgroups are created here before a spawn and
removed when the exit is recorded. All state transitions happen under one lock,
and ``changed`` (a Condition on it) wakes waiters whenever a container exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from sqlalchemy import select

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.common.db import open_db
from services.runtime import logs
from services.runtime.cgroups import Limits, Manager
from services.runtime.models import Base, ContainerRecord
from services.runtime.supervisor.client import SupervisorClient, SupervisorError, SupervisorUnavailable
from services.runtime.supervisor.spawn import SpawnConfig

log = logging.getLogger("berth.runtime")

ID_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_STOP_TIMEOUT = 10
LOST_EXIT_CODE = 255
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


@dataclass
class AttachEvent:
    kind: str                 # "subscribed" | "output" | "exit"
    stream: int = 1
    data: bytes = b""
    time_ns: int = 0
    exit_code: int = 0


class Containers:
    def __init__(self, runtime_dir: Path, db_url: str, supervisor: SupervisorClient, cgroups: Manager,
                 reconnect: Callable[[], SupervisorClient] | None = None) -> None:
        self.dir = Path(runtime_dir) / "containers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sessions = open_db(db_url, Base)
        self.sup = supervisor
        self.cgroups = cgroups
        self.reconnect = reconnect
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._stopped = threading.Event()
        self._watch_thread: threading.Thread | None = None

    # ---- start-up and shutdown ----------------------------------------------------------
    def open(self) -> None:
        """Subscribe to exits, reconcile the DB with the supervisor, then follow exits in a thread."""
        stream = self.sup.watch()
        self.reconcile()
        self._watch_thread = threading.Thread(target=self._watch, args=(stream,), name="exit-watch", daemon=True)
        self._watch_thread.start()

    def close(self) -> None:
        self._stopped.set()
        self.sup.shutdown(if_idle=True)
        # Leave no empty parent cgroup behind; one still holding containers stays.
        self.cgroups.remove_parent()

    def _watch(self, stream) -> None:  # noqa: ANN001
        while not self._stopped.is_set():
            try:
                while not self._stopped.is_set():
                    ev = stream.next(timeout=1.0)
                    if ev is not None and ev.kind == "exit":
                        self._on_exit(ev.id, ev.pid, ev.exit_code, ev.finished_at)
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
                elif self.cgroups.exists(rec.id):
                    self._remove_cgroups(rec.id)
            s.commit()
            self.changed.notify_all()

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
            s.add(rec)
            s.commit()
            return rec

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

    def start(self, ref: str) -> ContainerRecord:
        with self.lock, self.sessions() as s:
            rec = self._find(s, ref)
            if rec.status == "running":
                return rec
            spec = spec_of(rec)
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
                procs = self.cgroups.create(rec.id, limits_of(spec))
            except OSError as exc:
                raise errors.FailedPrecondition(f"cannot create cgroups for {rec.id}: {exc}") from exc
            config = SpawnConfig(
                id=rec.id, args=list(spec.args), env=build_env(list(spec.env), hostname),
                rootfs=json_format.MessageToDict(spec.rootfs, preserving_proto_field_name=True),
                rootfs_dir=str(rootfs_dir), state_dir=str(cdir), log_path=rec.log_path, cwd=spec.cwd or "/",
                user=spec.user, hostname=hostname, files=files, cgroup_procs=[str(p) for p in procs],
                open_stdin=spec.open_stdin)
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
            s.commit()
            self.changed.notify_all()
            return rec

    def _remove_cgroups(self, cid: str) -> None:
        try:
            self.cgroups.remove(cid)
        except OSError as exc:
            log.warning("%s: cannot remove cgroups: %s", cid, exc)

    def _record_exit(self, rec: ContainerRecord, code: int, finished_ns: int) -> None:
        rec.oom_killed = self.cgroups.oom_killed(rec.id)
        self._remove_cgroups(rec.id)
        rec.status, rec.exit_code, rec.finished_ns = "exited", code, finished_ns

    def _on_exit(self, cid: str, pid: int, code: int, finished_ns: int) -> None:
        with self.lock, self.sessions() as s:
            rec = s.get(ContainerRecord, cid)
            if rec is None or rec.status != "running" or rec.pid != pid:
                return
            self._record_exit(rec, code, finished_ns)
            s.commit()
            self.changed.notify_all()

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
        return self.get(rec.id)

    def stop(self, ref: str, timeout: int = -1) -> ContainerRecord:
        rec = self.get(ref)
        if rec.status != "running":
            return rec
        spec = spec_of(rec)
        signum = parse_signal(spec.stop_signal, default=signal.SIGTERM)
        if timeout < 0:
            timeout = spec.stop_timeout if spec.stop_timeout >= 0 else DEFAULT_STOP_TIMEOUT
        with contextlib.suppress(SupervisorError):
            self.sup.kill(rec.id, signum)
        if not self._wait_exit(rec.id, rec.pid, timeout):
            with contextlib.suppress(SupervisorError):
                self.sup.kill(rec.id, signal.SIGKILL)
            self._wait_exit(rec.id, rec.pid, None)
        return self.get(rec.id)

    def remove(self, ref: str, force: bool = False) -> ContainerRecord:
        rec = self.get(ref)
        if rec.status == "running":
            if not force:
                raise errors.FailedPrecondition(
                    f"You cannot remove a running container {rec.id}. Stop the container before attempting "
                    "removal or force remove")
            with contextlib.suppress(SupervisorError):
                self.sup.kill(rec.id, signal.SIGKILL)
            self._wait_exit(rec.id, rec.pid, 30)
        with self.lock, self.sessions() as s:
            rec = s.get(ContainerRecord, rec.id)
            if rec is None:
                raise errors.NotFound(f"No such container: {ref}")
            if rec.status == "running":
                raise errors.FailedPrecondition(f"container {rec.id} did not stop")
            s.delete(rec)
            s.commit()
            self._remove_cgroups(rec.id)
            shutil.rmtree(self.dir / rec.id, ignore_errors=True)
            self.changed.notify_all()
            return rec

    # ---- streams ------------------------------------------------------------------------
    def attach(self, ref: str, is_active: Callable[[], bool] = lambda: True) -> Iterator[AttachEvent]:
        """Subscribed, then output chunks, then the exit code; subscribing before Start loses nothing."""
        cid = self.get(ref).id
        stream = self.sup.subscribe(cid)
        try:
            yield AttachEvent("subscribed")
            if not stream.ack.get("running"):
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

    def logs(self, ref: str, tail: int = -1) -> Iterator[logs.Entry]:
        rec = self.get(ref)
        yield from logs.read(rec.log_path, tail)
