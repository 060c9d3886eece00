"""Docker-style container health checks: one monitor thread probes every container.

A container whose spec carries a health check (the api resolved it from ``run`` flags
and the image's HEALTHCHECK) is probed by exec'ing the test inside it, through the
supervisor like ``berth exec``. One thread serves all containers: a heap of due times
plus a selector over the probes in flight, so a hundred checked containers cost one
thread and a socket per running probe, never a thread each.

Docker's rules: the status is "starting" until a probe succeeds ("healthy") or
``retries`` consecutive probes fail ("unhealthy"); failures during ``start_period``
do not count while the container is still starting; during it probes come every
``start_interval`` instead of ``interval``; a probe that outlives ``timeout`` is
killed (its whole process group) and counts as a failure. The last five results are
kept. The health lives in the container's DB row, so ``inspect`` sees it and a restarted
runtime resumes probing its running containers where the status was left.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import selectors
import signal
import threading
import time
from dataclasses import dataclass, field

from google.protobuf import json_format
from sqlalchemy import select

from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from services.runtime.containers import Containers, ExecOptions, spec_of
from services.runtime.models import ContainerRecord
from services.runtime.supervisor.client import ExecFailed, Stream, SupervisorError

log = logging.getLogger("berth.runtime.health")

NS = 1_000_000_000
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_START_INTERVAL = 5.0
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5            # Docker keeps the last five results
MAX_OUTPUT = 4096              # and at most 4 KiB of each probe's output
KILL_GRACE = 5.0               # after killing a timed-out probe, how long to wait for its exit
# Starting a probe waits for the supervisor's fork and exec (~50 ms): after this long spent
# starting probes, the loop reads the exits of those in flight before starting more.
START_SLICE = 0.1
STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"


@dataclass(frozen=True)
class Check:
    """A resolved health check, durations in seconds, defaults applied."""

    args: list[str]
    interval: float
    timeout: float
    start_period: float
    retries: int
    start_interval: float


def check_of(hc: types_pb2.HealthCheck) -> Check | None:
    """The probe to run for a spec's health check; None when there is none (no test, or NONE)."""
    test = list(hc.test)
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        args = test[1:]
    elif test[0] == "CMD-SHELL":
        args = ["/bin/sh", "-c", " ".join(test[1:])]
    else:  # a bare command line, as some configs write it
        args = ["/bin/sh", "-c", " ".join(test)]
    if not args:
        return None

    def secs(ns: int, default: float) -> float:
        return ns / NS if ns > 0 else default

    return Check(args=args, interval=secs(hc.interval_ns, DEFAULT_INTERVAL),
                 timeout=secs(hc.timeout_ns, DEFAULT_TIMEOUT), start_period=secs(hc.start_period_ns, 0.0),
                 retries=hc.retries if hc.retries > 0 else DEFAULT_RETRIES,
                 start_interval=secs(hc.start_interval_ns, DEFAULT_START_INTERVAL))


def decode(health_json: str | None) -> runtime_pb2.Health | None:
    """The stored health of a container (None: it has no health check)."""
    if not health_json:
        return None
    try:
        return json_format.Parse(health_json, runtime_pb2.Health())
    except json_format.ParseError:
        return None


def encode(health: runtime_pb2.Health) -> str:
    return json_format.MessageToJson(health, indent=None)


def apply_result(health: runtime_pb2.Health, result: runtime_pb2.HealthLog, in_start_period: bool,
                 retries: int) -> None:
    """Docker's state machine for one probe result (the log keeps the last five)."""
    health.log.append(result)
    while len(health.log) > MAX_LOG_ENTRIES:
        del health.log[0]
    if result.exit_code == 0:
        health.failing_streak = 0
        health.status = HEALTHY
        return
    if health.status == STARTING and in_start_period:
        return  # still starting up: this failure does not count
    health.failing_streak += 1
    if health.failing_streak >= retries:
        health.status = UNHEALTHY


@dataclass
class _Probe:
    exec_id: str
    stream: Stream
    pgid: int
    start_ns: int
    deadline: float
    output: bytearray = field(default_factory=bytearray)
    timed_out: bool = False


@dataclass
class _Entry:
    cid: str
    pid: int                   # the run being checked: a restart is a new run
    started_ns: int
    check: Check
    generation: int
    probe: _Probe | None = None


class Monitor:
    """Schedules, runs and records health probes for all running containers."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._probe_entry: dict[str, _Entry] = {}          # exec id -> whose probe it is (loop thread only)
        self._heap: list[tuple[float, int, str, int]] = []   # (due, tie-breaker, cid, generation)
        self._seq = itertools.count()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        containers.health_hook = self.hook

    # ---- lifecycle ----------------------------------------------------------------------
    def open(self) -> None:
        """Resume probing the running containers (after a runtime restart), then serve."""
        with self.c.lock, self.c.sessions() as s:
            recs = s.scalars(select(ContainerRecord).where(ContainerRecord.status == "running")).all()
            for rec in recs:
                check = check_of(spec_of(rec).healthcheck)
                if check is None:
                    continue
                if decode(rec.health_json) is None:
                    rec.health_json = encode(runtime_pb2.Health(status=STARTING))
                self._schedule_new(rec, check)
            s.commit()
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop probing; probes in flight are killed (the supervisor reaps them)."""
        self._stopped.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Probe):
                self._kill(key.data)
                self._drop(key.data)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def hook(self, rec: ContainerRecord, running: bool) -> None:
        """Called by ``Containers`` under its lock as a run starts or ends: reset (or close)
        the record's health and (un)schedule its probes. Never blocks."""
        if not running:
            with self._lock:
                self._entries.pop(rec.id, None)
            health = decode(rec.health_json)
            if health is not None and health.status != UNHEALTHY:
                health.status = UNHEALTHY  # Docker's: a stopped container is not healthy
                rec.health_json = encode(health)
            return
        check = check_of(spec_of(rec).healthcheck)
        if check is None:
            rec.health_json = None
            with self._lock:
                self._entries.pop(rec.id, None)
            return
        health = decode(rec.health_json) or runtime_pb2.Health()
        health.status, health.failing_streak = STARTING, 0
        rec.health_json = encode(health)
        self._schedule_new(rec, check)

    def _schedule_new(self, rec: ContainerRecord, check: Check) -> None:
        entry = _Entry(rec.id, rec.pid, rec.started_ns or time.time_ns(), check, next(self._seq))
        with self._lock:
            self._entries[rec.id] = entry
            self._push(entry, self._delay(entry, STARTING))
        self._wake()

    def _delay(self, entry: _Entry, status: str) -> float:
        """Docker's: start_interval while starting within the start period, else interval."""
        check = entry.check
        if status == STARTING and check.start_period > 0 and \
                (time.time_ns() - entry.started_ns) / NS < check.start_period:
            return check.start_interval
        return check.interval

    def _push(self, entry: _Entry, delay: float) -> None:
        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), entry.cid, entry.generation))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # ---- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one probe's trouble
                log.exception("health monitor")
                time.sleep(0.5)

    def _turn(self) -> None:
        probes = [k.data for k in self._sel.get_map().values() if isinstance(k.data, _Probe)]
        now = time.monotonic()
        wait = 1.0
        with self._lock:
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
        for probe in probes:
            wait = min(wait, probe.deadline - now)
        for key, _ in self._sel.select(max(0.0, wait)):
            if key.data is None:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            else:
                self._read(key.data)
        now = time.monotonic()
        for key in list(self._sel.get_map().values()):
            if isinstance(key.data, _Probe) and key.data.deadline <= now:
                self._expire(key.data)
        busy_until = time.monotonic() + START_SLICE
        while not self._stopped.is_set() and time.monotonic() < busy_until:
            with self._lock:
                if not self._heap or self._heap[0][0] > time.monotonic():
                    break
                _, _, cid, generation = heapq.heappop(self._heap)
                entry = self._entries.get(cid)
                if entry is None or entry.generation != generation or entry.probe is not None:
                    continue
            self._start(entry)

    def _start(self, entry: _Entry) -> None:
        """Exec the probe in the container; a probe that cannot even start is a failed result."""
        try:
            rec = self.c.get(entry.cid)
        except Exception:  # noqa: BLE001 - removed meanwhile
            return
        if rec.status != "running" or rec.pid != entry.pid:
            return
        if self.c.cgroups.frozen(rec.id):  # paused: try again later
            with self._lock:
                self._push(entry, entry.check.interval)
            return
        config = self.c.exec_config(rec, ExecOptions(container=rec.id, args=list(entry.check.args), env=[]))
        start_ns = time.time_ns()
        try:
            stream = self.c.sup.exec(config.to_dict())
        except ExecFailed as exc:
            if exc.exit_code in (126, 127):
                self._record(entry, runtime_pb2.HealthLog(start_unix_nano=start_ns, end_unix_nano=time.time_ns(),
                                                          exit_code=exc.exit_code, output=str(exc)))
            else:  # the container stopped meanwhile: its exit ends this entry
                self._reschedule(entry, STARTING)
            return
        except SupervisorError as exc:
            log.warning("%s: cannot run health probe: %s", entry.cid[:12], exc)
            self._reschedule(entry, STARTING)
            return
        pgid = 0
        with contextlib.suppress(OSError):
            pgid = os.getpgid(int(stream.ack.get("pid", 0)) or -1)
        probe = _Probe(config.id, stream, pgid, start_ns, time.monotonic() + entry.check.timeout)
        entry.probe = probe
        self._probe_entry[probe.exec_id] = entry
        self._sel.register(stream.sock, selectors.EVENT_READ, probe)
        self._read(probe)  # a quick probe's output and exit may have come with the acknowledgement

    def _read(self, probe: _Probe) -> None:
        try:
            while True:
                ev = probe.stream.next(timeout=0)
                if ev is None:
                    return
                if ev.kind == "out":
                    room = MAX_OUTPUT - len(probe.output)
                    if room > 0:
                        probe.output += ev.data[:room]
                elif ev.kind == "exit":
                    self._finish(probe, ev.exit_code, end_ns=ev.finished_at)
                    return
        except (EOFError, OSError):
            self._finish(probe, -1, "lost the supervisor during the health check")

    def _expire(self, probe: _Probe) -> None:
        if not probe.timed_out:
            probe.timed_out = True
            self._kill(probe)
            probe.deadline = time.monotonic() + KILL_GRACE
        else:  # killed, yet no exit reported: give up on it (the supervisor still reaps it)
            self._finish(probe, -1)

    def _kill(self, probe: _Probe) -> None:
        """Kill the probe's whole process group (a shell's children too), then the probe."""
        if probe.pgid > 1:
            with contextlib.suppress(OSError):
                os.killpg(probe.pgid, signal.SIGKILL)
        with contextlib.suppress(SupervisorError, OSError):
            self.c.sup.kill(probe.exec_id, signal.SIGKILL)

    def _drop(self, probe: _Probe) -> _Entry | None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(probe.stream.sock)
        probe.stream.close()
        return self._probe_entry.pop(probe.exec_id, None)

    def _finish(self, probe: _Probe, exit_code: int, message: str = "", end_ns: int = 0) -> None:
        entry = self._drop(probe)
        if entry is None:
            return
        entry.probe = None
        if probe.timed_out:
            exit_code = -1
            message = f"Health check exceeded timeout ({_seconds(entry.check.timeout)})"
        output = message or probe.output.decode(errors="replace")
        self._record(entry, runtime_pb2.HealthLog(start_unix_nano=probe.start_ns,
                                                  end_unix_nano=end_ns or time.time_ns(), exit_code=exit_code,
                                                  output=output))

    def _record(self, entry: _Entry, result: runtime_pb2.HealthLog) -> None:
        """Apply one result to the container's stored health (if still the same run),
        announce a status change as Docker's ``health_status: <status>`` event, reschedule."""
        with self.c.lock, self.c.sessions() as s:
            rec = s.get(ContainerRecord, entry.cid)
            if rec is None or rec.status != "running" or rec.pid != entry.pid:
                return
            with self._lock:
                if self._entries.get(entry.cid) is not entry:
                    return
            health = decode(rec.health_json) or runtime_pb2.Health(status=STARTING)
            before = health.status
            in_start_period = (result.start_unix_nano - entry.started_ns) / NS < entry.check.start_period
            apply_result(health, result, in_start_period, entry.check.retries)
            rec.health_json = encode(health)
            s.commit()
            if health.status != before:
                self.c._publish("health_status: " + health.status, rec)
            self._reschedule(entry, health.status)

    def _reschedule(self, entry: _Entry, status: str) -> None:
        with self._lock:
            if self._entries.get(entry.cid) is entry:
                self._push(entry, self._delay(entry, status))


def _seconds(value: float) -> str:
    """Go's duration text for whole and fractional seconds: 30s, 1.5s, 200ms."""
    if value < 1:
        return f"{round(value * 1000)}ms"
    return f"{value:g}s"
