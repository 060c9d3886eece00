"""`berth run` and friends, end to end: the real CLI against really started services."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.assertions import ok, one_line_error
from tests.harness import REPO

pytestmark = pytest.mark.usefixtures("clean_host")






def test_run_echo(services):
    r = ok(services.berth("run", "--rm", "busybox", "echo", "hi"))
    assert r.stdout == "hi\n"
    assert services.berth("ps", "-aq").stdout == ""


def test_exit_code_propagates(services):
    r = services.berth("run", "--rm", "busybox", "sh", "-c", "exit 3")
    assert r.returncode == 3


def test_stdout_and_stderr_are_kept_apart(services):
    r = ok(services.berth("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2"))
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"


def test_missing_command_is_127(services):
    r = services.berth("run", "--rm", "busybox", "no-such-command")
    one_line_error(r, 127, "executable file not found")
    assert services.berth("ps", "-aq").stdout == ""


def test_not_executable_is_126(services):
    r = services.berth("run", "--rm", "busybox", "/etc/passwd")
    one_line_error(r, 126, "permission denied")


def test_isolation_seen_from_inside(services):
    r = ok(services.berth("run", "--rm", "busybox", "ps", "-o", "pid,comm"))
    lines = r.stdout.strip().splitlines()[1:]
    assert len(lines) == 1 and lines[0].split()[0] == "1", r.stdout
    r = ok(services.berth("run", "--rm", "busybox", "hostname"))
    assert r.stdout.strip() != socket.gethostname() and len(r.stdout.strip()) == 12
    r = ok(services.berth("run", "--rm", "--hostname", "box1", "busybox", "hostname"))
    assert r.stdout.strip() == "box1"
    # Since issue 5 the default network is the bridge (eth0); without one only lo is left.
    r = ok(services.berth("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"))
    links = [line.split(":")[1].strip() for line in r.stdout.strip().splitlines()]
    assert links == ["lo"], r.stdout
    r = ok(services.berth("run", "--rm", "busybox", "uname", "-r"))
    assert r.stdout.strip() == os.uname().release
    r = services.berth("run", "--rm", "busybox", "sh", "-c", "echo 1 > /proc/sys/kernel/domainname")
    assert r.returncode != 0
    r = services.berth("run", "--rm", "busybox", "cat", "/proc/kcore")
    assert r.stdout == ""
    r = ok(services.berth("run", "--rm", "busybox", "ls", "/dev"))
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert dev in r.stdout.split(), r.stdout


def test_capabilities_are_dockers_default(services):
    r = ok(services.berth("run", "--rm", "busybox", "grep", "-E", "^Cap(Bnd|Eff)|NoNewPrivs", "/proc/self/status"))
    fields = dict(line.split(":\t") for line in r.stdout.strip().splitlines())
    assert int(fields["CapBnd"], 16) == 0xa80425fb, fields
    assert fields["NoNewPrivs"].strip() == "1"


def test_memory_limit_oom_kills(services):
    r = services.berth("run", "--name", "oom", "--memory", "32m", "busybox", "sh", "-c",
                       "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo done")
    assert r.returncode == 137, r.stderr
    assert ok(services.berth("inspect", "-f", "{{.State.OOMKilled}}", "oom")).stdout.strip() == "true"
    ok(services.berth("rm", "oom"))


def test_pids_limit(services):
    # A subshell forks until the kernel refuses; the outer shell then counts the
    # container's processes with builtins only (it cannot fork any more).
    script = "(for i in $(seq 40); do sleep 30 & done) 2>/dev/null; set -- /proc/[0-9]*; echo $#"
    r = ok(services.berth("run", "--rm", "--pids-limit", "20", "busybox", "sh", "-c", script))
    assert 15 <= int(r.stdout) <= 20, r.stdout
    r = ok(services.berth("run", "--rm", "busybox", "sh", "-c", script))
    assert int(r.stdout) > 40, r.stdout  # without the limit every fork succeeds


def test_cpus_limit_keeps_busy_loop_near_half_a_core(services):
    ok(services.berth("run", "-d", "--name", "busy", "--cpus", "0.5", "busybox", "sh", "-c",
                      "while :; do :; done"))
    try:
        pid = int(ok(services.berth("inspect", "-f", "{{.State.Pid}}", "busy")).stdout)
        time.sleep(0.2)
        stat0 = _cpu_ticks(pid)
        start = time.monotonic()
        time.sleep(2)
        used = (_cpu_ticks(pid) - stat0) / os.sysconf("SC_CLK_TCK")
        share = used / (time.monotonic() - start)
        assert 0.3 < share < 0.7, share
    finally:
        ok(services.berth("rm", "-f", "busy"))


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_detached_lifecycle(services):
    cid = ok(services.berth("run", "-d", "--name", "web", "busybox", "sh", "-c",
                            "echo started; echo oops >&2; exec httpd -f -p 8080")).stdout.strip()
    assert len(cid) == 64
    ps = ok(services.berth("ps")).stdout
    assert "web" in ps and "Up " in ps and cid[:12] in ps
    assert ok(services.berth("ps", "-q")).stdout.split() == [cid[:12]]
    time.sleep(0.3)
    logs = ok(services.berth("logs", "web"))
    assert logs.stdout == "started\n" and logs.stderr == "oops\n"
    tail = ok(services.berth("logs", "--tail", "1", "web"))
    assert (tail.stdout, tail.stderr) == ("", "oops\n")
    assert ok(services.berth("inspect", "-f", "{{.State.Status}} {{.Name}}", "web")).stdout.strip() == "running /web"
    start = time.monotonic()
    ok(services.berth("stop", "-t", "1", "web"))  # httpd ignores nothing, but as pid 1 SIGTERM is ignored
    assert time.monotonic() - start < 8
    assert ok(services.berth("wait", "web")).stdout.strip() == "137"
    assert "Exited (137)" in ok(services.berth("ps", "-a")).stdout
    ok(services.berth("start", "web"))
    assert ok(services.berth("inspect", "-f", "{{.State.Running}}", "web")).stdout.strip() == "true"
    ok(services.berth("kill", "web"))
    assert ok(services.berth("wait", "web")).stdout.strip() == "137"
    ok(services.berth("start", "web"))
    r = services.berth("rm", "web")
    one_line_error(r, 1, "cannot remove a running container")
    assert ok(services.berth("rm", "-f", "web")).stdout.strip() == "web"
    assert services.berth("ps", "-aq").stdout == ""


def test_stop_uses_sigterm_first(services):
    ok(services.berth("run", "-d", "--name", "trapper", "busybox", "sh", "-c",
                      "trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"))
    time.sleep(0.3)
    ok(services.berth("stop", "trapper"))
    assert ok(services.berth("wait", "trapper")).stdout.strip() == "0"
    assert "got-term" in ok(services.berth("logs", "trapper")).stdout
    ok(services.berth("rm", "trapper"))


def test_kill_sends_the_named_signal(services):
    # pid 1 of a namespace ignores signals it has no handler for, so the container traps it.
    ok(services.berth("run", "-d", "--name", "usr1", "busybox", "sh", "-c",
                      "trap 'exit 5' USR1; echo ready; while :; do sleep 0.1; done"))
    deadline = time.monotonic() + 10
    while "ready" not in services.berth("logs", "usr1").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    ok(services.berth("kill", "-s", "SIGUSR1", "usr1"))
    assert ok(services.berth("wait", "usr1")).stdout.strip() == "5"
    one_line_error(services.berth("kill", "usr1"), 1, "is not running")
    one_line_error(services.berth("kill", "-s", "NOPE", "usr1"), 1, "")
    ok(services.berth("rm", "usr1"))


def test_signals_reach_foreground_container(services):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "--rm", "busybox", "sh", "-c",
                             "trap 'exit 42' TERM; echo ready; while :; do sleep 0.1; done"],
                            env=services.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 42


def test_zombies_are_reaped(services):
    # The shell's orphans are reaped inside the container by its pid 1; exits are reaped by the supervisor.
    ok(services.berth("run", "--rm", "busybox", "sh", "-c", "sleep 0.1 & exit 0"))
    sup = services.supervisor_pid()
    children = subprocess.run(["ps", "--ppid", str(sup), "-o", "stat="], capture_output=True, text=True).stdout
    assert "Z" not in children


def test_bad_input(services):
    one_line_error(services.berth("run", "--rm", "Bad::Ref", "true"), 125, "invalid reference format")
    # Not stored, so `run` pulls: from a local port where no registry listens.
    # (Like docker run: "Unable to find image '…' locally" first, then the error.)
    one_line_error(services.berth("run", "--rm", "127.0.0.1:9/nosuchimage", "true"), 125, "127.0.0.1:9",
                   max_lines=2)
    one_line_error(services.berth("stop", "nosuch"), 1, "No such container: nosuch")
    one_line_error(services.berth("inspect", "nosuch"), 1, "No such object: nosuch")
    one_line_error(services.berth("logs", "nosuch"), 1, "No such container")
    one_line_error(services.berth("run", "--bogus-flag", "busybox"), 125, "No such option", max_lines=2)
    one_line_error(services.berth("run", "--memory", "lots", "busybox", "true"), 125, "invalid argument")
    ok(services.berth("create", "--name", "dup", "busybox", "true"))
    one_line_error(services.berth("run", "--name", "dup", "busybox", "true"), 125, "already in use")
    ok(services.berth("rm", "dup"))
    assert services.berth("ps", "-aq").stdout == ""


def test_api_down_is_one_line(services, tmp_path):
    env = dict(services.env, BERTH_RUN_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "cli", "ps"], env=env, cwd=REPO, capture_output=True, text=True)
    one_line_error(r, 1, "Cannot connect to the Berth daemon")
