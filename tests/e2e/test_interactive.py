"""Interactive containers end to end: the real CLI on a real pseudo-terminal (pexpect).

`run -it`, `attach` with detach keys, `exec` (-i -t -e -u -w), and what must hold when
things go wrong: a stopped or unknown container, a closed terminal, a client gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.e2e.assertions import ok, one_line_error
from tests.harness import REPO

pytestmark = pytest.mark.usefixtures("clean_host")

CTRL_P_CTRL_Q = "\x10\x11"






def spawn(services, *args: str, rows: int = 24, cols: int = 80) -> pexpect.spawn:
    """The CLI on a fresh pseudo-terminal of the given size."""
    return pexpect.spawn(sys.executable, ["-m", "cli", *args], env=services.env, cwd=str(REPO),
                         dimensions=(rows, cols), timeout=30, encoding="utf-8", codec_errors="replace")


def state(services, name: str) -> str:
    return ok(services.berth("inspect", "-f", "{{.State.Status}}", name)).stdout.strip()


def wait_state(services, name: str, want: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while state(services, name) != want:
        assert time.monotonic() < deadline, f"{name} never became {want}"
        time.sleep(0.1)


def test_run_it_is_a_real_shell(services):
    shell = spawn(services, "run", "-it", "--rm", "busybox", "sh", rows=33, cols=111)
    shell.expect_exact("/ # ")
    shell.sendline("echo $((6*7))")
    shell.expect(r"\r\n42\r\n")
    shell.sendline("stty size; tty")
    shell.expect(r"33 111\r\n/dev/pts/0\r\n")  # the size at start, a pty of the container's own devpts
    shell.setwinsize(40, 132)  # SIGWINCH reaches the CLI, which resizes the container's pty
    time.sleep(0.3)
    shell.sendline("stty size")
    shell.expect(r"40 132\r\n")
    shell.sendline("sleep 30")
    time.sleep(0.5)
    shell.sendcontrol("c")  # Ctrl-C is a byte for the container's terminal: it stops sleep, not the CLI
    shell.expect_exact("/ # ")
    shell.sendline("exit 7")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 7
    assert services.berth("ps", "-aq").stdout == ""


def test_raw_mode_is_restored_on_exit(services):
    # The same terminal before and after: `stty -g` prints its settings.
    script = f"stty -g; {sys.executable} -m cli run -it --rm busybox sh -c 'exit 3'; echo rc=$?; stty -g"
    term = pexpect.spawn("bash", ["--norc", "-c", script], env=services.env, cwd=str(REPO), timeout=30,
                         encoding="utf-8")
    term.expect(pexpect.EOF)
    lines = [ln for ln in term.before.replace("\r", "").split("\n") if ln.strip()]
    settings = [ln for ln in lines if ln.count(":") > 10]
    assert "rc=3" in lines, lines
    assert len(settings) == 2 and settings[0] == settings[1], lines


def test_run_it_without_a_terminal_fails_clearly(services):
    r = services.berth("run", "-it", "--rm", "busybox", "sh")
    one_line_error(r, 1, "the input device is not a TTY")


def test_stdin_without_tty_is_streamed_and_closed(services):
    r = ok(services.berth("run", "-i", "--rm", "busybox", "sh", "-c", "tr a-z A-Z; echo done",
                          input="hello\nworld\n"))
    assert r.stdout == "HELLO\nWORLD\ndone\n"


def test_detach_and_reattach(services):
    ok(services.berth("run", "-dit", "--name", "box", "busybox", "sh"))
    try:
        a = spawn(services, "attach", "box")
        a.sendline("echo one-$((1+1))")
        a.expect_exact("one-2")
        a.send(CTRL_P_CTRL_Q)
        a.expect(pexpect.EOF)
        a.close()
        assert a.exitstatus == 0
        assert state(services, "box") == "running"
        # Two clients at once: both see the output, input from either reaches the shell.
        b = spawn(services, "attach", "box")
        c = spawn(services, "attach", "box")
        time.sleep(0.5)
        b.sendline("echo three-$((1+2))")
        b.expect_exact("three-3")
        c.expect_exact("three-3")
        c.send(CTRL_P_CTRL_Q)
        c.expect(pexpect.EOF)
        b.sendline("exit 4")
        b.expect(pexpect.EOF)
        b.close()
        assert b.exitstatus == 4
        wait_state(services, "box", "exited")
    finally:
        services.berth("rm", "-f", "box")


def test_custom_detach_keys_and_lone_ctrl_p(services):
    # The container's terminal in raw mode: od sees exactly the bytes typed.
    ok(services.berth("run", "-dit", "--name", "keys", "busybox", "sh", "-c",
                      "stty raw -echo; head -c 3 | od -c; sleep 300"))
    try:
        a = spawn(services, "attach", "--detach-keys", "ctrl-x,x", "keys")
        time.sleep(0.5)
        a.send("a\x10b")  # a lone Ctrl-P (half of the default keys) is passed on
        a.expect(r"a\s+020\s+b")
        a.send("\x18x")
        a.expect(pexpect.EOF)
        a.close()
        assert a.exitstatus == 0
        assert state(services, "keys") == "running"
    finally:
        services.berth("rm", "-f", "keys")


def test_run_it_detach_leaves_it_running(services):
    shell = spawn(services, "run", "-it", "--name", "det", "busybox", "sh")
    try:
        shell.expect_exact("/ # ")
        shell.send(CTRL_P_CTRL_Q)
        shell.expect(pexpect.EOF)
        shell.close()
        assert shell.exitstatus == 0
        assert state(services, "det") == "running"
    finally:
        services.berth("rm", "-f", "det")


def test_closed_terminal_leaves_the_container_running(services):
    ok(services.berth("run", "-dit", "--name", "hup", "busybox", "sh"))
    try:
        a = spawn(services, "attach", "hup")
        a.sendline("echo alive")
        a.expect_exact("alive")
        a.close(force=True)  # the terminal goes away: SIGHUP, then the pty is gone
        time.sleep(0.5)
        assert state(services, "hup") == "running"
        r = ok(services.berth("exec", "hup", "echo", "still"))
        assert r.stdout == "still\n"
    finally:
        services.berth("rm", "-f", "hup")


def test_attach_to_stopped_or_unknown_container(services):
    ok(services.berth("create", "--name", "cold", "busybox", "true"))
    try:
        one_line_error(services.berth("attach", "cold"), 1, "You cannot attach to a stopped container")
        one_line_error(services.berth("attach", "nope"), 1, "No such container: nope")
    finally:
        services.berth("rm", "-f", "cold")


def test_exec_options_and_exit_code(services):
    ok(services.berth("run", "-d", "--name", "ex", "-e", "BASE=1", "busybox", "sleep", "300"))
    try:
        r = ok(services.berth("exec", "-e", "A=1", "-u", "nobody", "-w", "/tmp", "ex", "sh", "-c",
                              "echo $A $BASE; id -un; pwd; echo err >&2"))
        assert r.stdout == "1 1\nnobody\n/tmp\n" and r.stderr == "err\n"
        assert services.berth("exec", "ex", "sh", "-c", "exit 9").returncode == 9
        # the same namespaces: pid 1 is the container's sleep, the hostname is the container's
        r = ok(services.berth("exec", "ex", "sh", "-c", "cat /proc/1/cmdline; echo; hostname"))
        assert r.stdout.split("\n")[0].startswith("sleep")
        hostname = ok(services.berth("inspect", "-f", "{{.Config.Hostname}}", "ex")).stdout.strip()
        assert r.stdout.split("\n")[1] == hostname
        # and its cgroup: the exec'd process is counted by the container's pids cgroup
        pid = int(ok(services.berth("inspect", "-f", "{{.State.Pid}}", "ex")).stdout)
        host_cg = Path(f"/proc/{pid}/cgroup").read_text()
        r = ok(services.berth("exec", "ex", "cat", "/proc/self/cgroup"))
        assert "pids:/\n" in r.stdout and "pids:/\n" not in host_cg  # cgroup namespace root = its cgroup
        r = services.berth("exec", "ex", "no-such-cmd")
        assert r.returncode == 127 and "executable file not found" in r.stderr and "Traceback" not in r.stderr
        echo = ok(services.berth("exec", "-i", "ex", "cat", input="piped\n"))
        assert echo.stdout == "piped\n"
        # reaped: nothing but the container's own process remains afterwards
        top = ok(services.berth("top", "ex")).stdout.strip().splitlines()
        assert len(top) == 2 and "sleep 300" in top[1], top
    finally:
        services.berth("rm", "-f", "ex")


def test_exec_it_on_a_real_terminal(services):
    ok(services.berth("run", "-d", "--name", "exit", "busybox", "sleep", "300"))
    try:
        sh = spawn(services, "exec", "-it", "exit", "sh", rows=20, cols=70)
        sh.expect_exact("# ")
        sh.sendline("echo $((6*7)); stty size")
        sh.expect(r"42\r\n20 70\r\n")
        sh.sendline("exit 5")
        sh.expect(pexpect.EOF)
        sh.close()
        assert sh.exitstatus == 5
    finally:
        services.berth("rm", "-f", "exit")


def test_exec_into_stopped_or_unknown_container_fails_clearly(services):
    ok(services.berth("create", "--name", "stopped", "busybox", "true"))
    try:
        one_line_error(services.berth("exec", "stopped", "true"), 1, "is not running")
        one_line_error(services.berth("exec", "ghost", "true"), 1, "No such container: ghost")
    finally:
        services.berth("rm", "-f", "stopped")


def test_exec_client_killed_mid_stream_leaves_container_running(services):
    ok(services.berth("run", "-d", "--name", "mid", "busybox", "sleep", "300"))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "exec", "mid", "sh", "-c",
                                 "while :; do echo tick; sleep 0.1; done"], env=services.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline() == b"tick\n"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert state(services, "mid") == "running"
    finally:
        services.berth("rm", "-f", "mid")


def test_start_attach_streams_output_and_exit_code_every_time(services):
    cid = ok(services.berth("create", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")).stdout.strip()
    try:
        for _ in range(2):  # a created container, then the exited one again
            r = services.berth("start", "-a", cid)
            assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
        one_line_error(services.berth("start", "-a", cid, cid), 1, "cannot start and attach multiple")
    finally:
        services.berth("rm", "-f", cid)


def test_start_attach_interactive_sends_stdin(services):
    cid = ok(services.berth("create", "-i", "busybox", "sh", "-c", "read line; echo got $line")).stdout.strip()
    try:
        r = services.berth("start", "-ai", cid, input="hello\n")
        assert (r.returncode, r.stdout) == (0, "got hello\n")
    finally:
        services.berth("rm", "-f", cid)
