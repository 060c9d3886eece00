"""Operating running containers end to end: logs -f/--since/--until and rotation, pause,
top, stats, update, restart, rename, restart policies and events, each shown by behaviour."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.assertions import ok, one_line_error
from tests.e2e.test_interactive import state, wait_state
from tests.harness import EXTERNAL, Services
from tests.hostcheck import HostState

pytestmark = pytest.mark.usefixtures("clean_host")


def inspect(services, name: str, fmt: str) -> str:
    return ok(services.berth("inspect", "-f", fmt, name)).stdout.strip()


# ---- logs ---------------------------------------------------------------------------------

def test_logs_follow_until_exit_with_timestamps(services):
    ok(services.berth("run", "-d", "--name", "fol", "busybox", "sh", "-c",
                      "for i in 1 2 3; do echo line$i; sleep 0.4; done"))
    try:
        start = time.monotonic()
        r = ok(services.berth("logs", "-f", "-t", "fol", timeout=30))
        assert time.monotonic() - start > 0.5  # it waited for lines still to come
        lines = r.stdout.splitlines()
        assert [ln.split(" ", 1)[1] for ln in lines] == ["line1", "line2", "line3"]
        assert all(ln[:4].isdigit() and "T" in ln.split(" ")[0] for ln in lines)
        assert ok(services.berth("logs", "--tail", "1", "fol")).stdout == "line3\n"
    finally:
        services.berth("rm", "-f", "fol")


def test_logs_since_and_until(services):
    ok(services.berth("run", "--name", "times", "busybox", "sh", "-c", "echo early; sleep 1.2; echo late"))
    try:
        stamps = ok(services.berth("logs", "-t", "times")).stdout.splitlines()
        late_ts = stamps[1].split(" ")[0]
        middle = late_ts[:19] + "Z" if late_ts[:19] > stamps[0][:19] else late_ts
        assert ok(services.berth("logs", "--since", middle, "times")).stdout == "late\n"
        assert ok(services.berth("logs", "--until", middle, "times")).stdout == "early\n"
        assert ok(services.berth("logs", "--since", "10m", "times")).stdout == "early\nlate\n"
        assert ok(services.berth("logs", "--since", "2099-01-01T00:00:00Z", "times")).stdout == ""
        r = services.berth("logs", "--since", "yesterday-ish", "times")
        one_line_error(r, 125, "invalid value for --since")
    finally:
        services.berth("rm", "-f", "times")


def test_tty_logs_are_one_stream(services):
    ok(services.berth("run", "-t", "--name", "onestream", "busybox", "sh", "-c", "echo out; echo err >&2"))
    try:
        r = services.berth("logs", "onestream", input=b"")  # bytes: no newline translation
        assert r.returncode == 0
        assert r.stdout == b"out\r\nerr\r\n" and r.stderr == b""  # the pty's ONLCR, one stream
    finally:
        services.berth("rm", "-f", "onestream")


def test_logs_rotate(services):
    # ~300 kB of output into at most 3 files of 20 kB: the newest lines are kept.
    ok(services.berth("run", "--name", "chatty", "--log-opt", "max-size=20k", "--log-opt", "max-file=3",
                      "busybox", "sh", "-c", "seq 1 40000"))
    try:
        log_path = Path(inspect(services, "chatty", "{{.LogPath}}"))
        files = sorted(log_path.parent.glob(log_path.name + "*"))
        assert len(files) == 3, files
        assert all(f.stat().st_size <= 20 * 1024 for f in files)
        out = ok(services.berth("logs", "chatty")).stdout.split()
        assert out[-1] == "40000" and "1" not in out[:10]
        assert [int(x) for x in out] == list(range(int(out[0]), 40001))  # contiguous across files
        assert ok(services.berth("logs", "--tail", "2", "chatty")).stdout == "39999\n40000\n"
        r = services.berth("run", "--rm", "--log-opt", "max-size=lots", "busybox", "true")
        one_line_error(r, 125, "invalid size")
    finally:
        services.berth("rm", "-f", "chatty")


# ---- pause, top, stats, update, restart, rename --------------------------------------------

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"


def test_pause_stops_the_processes(services):
    ok(services.berth("run", "-d", "--name", "ctr", "busybox", "sh", "-c", COUNTER))
    try:
        counter = Path(inspect(services, "ctr", "{{.GraphDriver.Data.UpperDir}}")) / "tmp/counter"
        time.sleep(0.3)
        ok(services.berth("pause", "ctr"))
        assert state(services, "ctr") == "paused"
        assert "(Paused)" in ok(services.berth("ps")).stdout
        frozen = counter.read_text()
        time.sleep(0.5)
        assert counter.read_text() == frozen  # not a single step while paused
        one_line_error(services.berth("exec", "ctr", "true"), 1, "paused")
        one_line_error(services.berth("pause", "ctr"), 1, "already paused")
        ok(services.berth("unpause", "ctr"))
        time.sleep(0.3)
        assert int(counter.read_text()) > int(frozen)
        one_line_error(services.berth("unpause", "ctr"), 1, "not paused")
        ok(services.berth("pause", "ctr"))
        ok(services.berth("stop", "-t", "1", "ctr"))  # a paused container still stops
        assert state(services, "ctr") == "exited"
        one_line_error(services.berth("pause", "ctr"), 1, "is not running")
        one_line_error(services.berth("pause", "nobody"), 1, "No such container")
    finally:
        services.berth("rm", "-f", "ctr")


def test_top_lists_host_and_container_pids(services):
    ok(services.berth("run", "-d", "--name", "tops", "busybox", "sh", "-c", "sleep 301 & sleep 302; true"))
    try:
        time.sleep(0.3)
        lines = ok(services.berth("top", "tops")).stdout.strip().splitlines()
        assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CPID", "CMD"]
        rows = {ln.split(None, 8)[8]: ln.split(None, 8) for ln in lines[1:]}
        assert {"sleep 301", "sleep 302"} <= set(rows), rows
        init_pid = inspect(services, "tops", "{{.State.Pid}}")
        assert rows["sh -c sleep 301 & sleep 302; true"][1] == init_pid
        assert rows["sh -c sleep 301 & sleep 302; true"][7] == "1"
        for row in rows.values():
            assert os.path.exists(f"/proc/{row[1]}")  # host pids
        ok(services.berth("stop", "-t", "0", "tops"))
        one_line_error(services.berth("top", "tops"), 1, "is not running")
    finally:
        services.berth("rm", "-f", "tops")


def test_stats_no_stream(services):
    ok(services.berth("run", "-d", "--name", "busy", "--memory", "64m", "busybox", "sh", "-c",
                      "while :; do :; done"))
    try:
        r = ok(services.berth("stats", "--no-stream", "busy"))
        header, row = r.stdout.strip().splitlines()
        assert header.split()[:4] == ["CONTAINER", "ID", "NAME", "CPU"]
        assert "busy" in row and "/ 64MiB" in row
        cpu = float(row.split()[2].rstrip("%"))
        assert cpu > 20, row  # a busy loop shows
        assert ok(services.berth("stats", "--no-stream")).stdout.count("busy") == 1
    finally:
        services.berth("rm", "-f", "busy")


def test_update_memory_is_enforced_live(services):
    ok(services.berth("run", "-d", "--name", "upd", "busybox", "sleep", "300"))
    try:
        hog = ["exec", "upd", "sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ok"]
        assert ok(services.berth(*hog)).stdout == "ok\n"  # no limit yet
        ok(services.berth("update", "--memory", "32m", "upd"))
        assert inspect(services, "upd", "{{.HostConfig.Memory}}") == str(32 << 20)
        r = services.berth(*hog)
        assert r.returncode == 137, r  # killed by the new limit
        assert state(services, "upd") == "running"
        one_line_error(services.berth("update", "--memory", "32m", "nope"), 1, "No such container")
    finally:
        services.berth("rm", "-f", "upd")


def test_restart_and_rename(services):
    ok(services.berth("run", "-d", "--name", "old", "busybox", "sleep", "300"))
    try:
        pid = inspect(services, "old", "{{.State.Pid}}")
        ok(services.berth("restart", "-t", "1", "old"))
        assert state(services, "old") == "running"
        assert inspect(services, "old", "{{.State.Pid}}") != pid
        ok(services.berth("rename", "old", "new"))
        assert inspect(services, "new", "{{.Name}}") == "/new"
        one_line_error(services.berth("inspect", "old"), 1, "No such object")
        ok(services.berth("run", "-d", "--name", "other", "busybox", "true"))
        one_line_error(services.berth("rename", "new", "other"), 1, "is already in use")
    finally:
        services.berth("rm", "-f", "new", "old", "other")


# ---- restart policies -----------------------------------------------------------------------

def test_on_failure_restarts_n_times_then_stays_exited(services):
    ok(services.berth("run", "-d", "--name", "flaky", "--restart", "on-failure:3", "busybox", "sh", "-c", "exit 1"))
    try:
        deadline = time.monotonic() + 20
        while inspect(services, "flaky", "{{.RestartCount}}") != "3":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        wait_state(services, "flaky", "exited")
        time.sleep(1.0)  # the next backoff would have been 0.8 s
        assert inspect(services, "flaky", "{{.RestartCount}}") == "3"
        assert inspect(services, "flaky", "{{.State.ExitCode}}") == "1"
        r = ok(services.berth("events", "--since", "1m", "--until", "0s", "--filter", "container=flaky"))
        actions = [line.split()[2] for line in r.stdout.splitlines()]
        assert actions == ["create", "start", "die", "start", "die", "start", "die", "start", "die"], actions
    finally:
        services.berth("rm", "-f", "flaky")


def test_on_failure_leaves_success_alone_and_stop_wins(services):
    ok(services.berth("run", "-d", "--name", "fine", "--restart", "on-failure", "busybox", "true"))
    ok(services.berth("run", "-d", "--name", "always", "--restart", "always", "busybox", "sleep", "300"))
    try:
        wait_state(services, "fine", "exited")
        time.sleep(0.5)
        assert inspect(services, "fine", "{{.RestartCount}}") == "0"
        pid = int(inspect(services, "always", "{{.State.Pid}}"))
        os.kill(pid, signal.SIGKILL)  # it dies on its own: it comes back
        deadline = time.monotonic() + 10
        while inspect(services, "always", "{{.RestartCount}}") != "1" or state(services, "always") != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ok(services.berth("stop", "-t", "1", "always"))  # a stop by hand is not undone
        time.sleep(0.5)
        assert state(services, "always") == "exited"
        one_line_error(services.berth("run", "--rm", "--restart", "sometimes", "busybox", "true"), 125,
                       "invalid restart policy")
    finally:
        services.berth("rm", "-f", "fine", "always")


@pytest.mark.skipif(EXTERNAL, reason="starts and stops its own services")
def test_always_comes_back_after_the_services_restart(busybox_tar):
    base = Path(tempfile.mkdtemp(prefix="berth-restart-"))
    svc = Services(base)
    before = HostState.capture(svc.cgroup_parent)
    try:
        ok(svc.berth("daemon", "start"))
        ok(svc.berth("import", str(busybox_tar), "busybox"))
        ok(svc.berth("run", "-d", "--name", "keeper", "--restart", "always", "busybox", "sleep", "300"))
        ok(svc.berth("run", "-d", "--name", "manual", "--restart", "unless-stopped", "busybox", "sleep", "300"))
        ok(svc.berth("stop", "-t", "0", "manual"))
        ok(svc.berth("daemon", "stop"))
        svc.stop_supervisor()  # like a reboot: every container process is gone
        ok(svc.berth("daemon", "start"))
        assert state(svc, "keeper") == "running"
        assert state(svc, "manual") == "exited"  # unless-stopped: stopped by hand stays stopped
        svc.berth("rm", "-f", "keeper", "manual")
    finally:
        svc.berth("daemon", "stop")
        svc.close()
    assert not HostState.capture(svc.cgroup_parent).leaks_since(before)


# ---- events ---------------------------------------------------------------------------------

def test_events_history_and_filters(services):
    since = time.time()
    ok(services.berth("run", "--name", "evt", "busybox", "true"))
    ok(services.berth("run", "--rm", "busybox", "true"))
    ok(services.berth("run", "-d", "--name", "evt-detached", "busybox", "sh", "-c", "exit 4"))
    try:
        wait_state(services, "evt-detached", "exited")
        time.sleep(0.2)
        r = ok(services.berth("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                              "--filter", "container=evt", "--format", "{{json .}}"))
        events = [json.loads(line) for line in r.stdout.splitlines()]
        assert [e["Action"] for e in events] == ["create", "start", "die"], events
        assert events[0]["Actor"]["Attributes"]["name"] == "evt"
        r = ok(services.berth("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                              "--filter", "event=destroy"))
        assert len(r.stdout.splitlines()) == 1 and "container destroy" in r.stdout
        one_line_error(services.berth("events", "--until", "1s", "--filter", "colour=red"), 1, "invalid filter")
        r = ok(services.berth("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                              "--filter", "container=evt-detached", "--filter", "event=die"))
        assert "exitCode=4" in r.stdout and len(r.stdout.splitlines()) == 1, r.stdout  # no client attached
    finally:
        services.berth("rm", "-f", "evt", "evt-detached")


def test_events_stream_live(services):
    import subprocess
    import sys

    from tests.harness import REPO

    proc = subprocess.Popen([sys.executable, "-m", "cli", "events", "--filter", "event=start"], env=services.env,
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        ok(services.berth("run", "--rm", "--name", "live", "busybox", "true"))
        line = proc.stdout.readline()
        assert "container start" in line and "name=live" in line, line
    finally:
        proc.kill()
        proc.wait()
