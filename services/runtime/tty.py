"""Pseudo-terminals for containers: allocated from the container's own devpts instance.

The pair is opened *inside* the container (after pivot_root, or after setns into its
mount namespace for exec) through ``/dev/ptmx``, which points at the container's
``newinstance`` devpts: the slave is ``/dev/pts/N`` as seen by the container, and the
host's /dev/pts never shows it. The master travels back to the supervisor over a unix
socket (SCM_RIGHTS); the supervisor holds it, reads output from it and writes stdin.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import termios

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


def open_pty(ptmx: str = "/dev/ptmx") -> tuple[int, int]:
    """(master, slave) of a new pty from ``ptmx``; neither becomes our controlling tty."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        buf = array.array("i", [0])
        fcntl.ioctl(master, TIOCGPTN, buf, True)              # ptsname
        pts = os.path.join(os.path.dirname(os.path.realpath(ptmx)), str(buf[0]))
        slave = os.open(pts, os.O_RDWR | os.O_NOCTTY)
    except BaseException:
        os.close(master)
        raise
    return master, slave


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ; on a master it also sends SIGWINCH to the slave's foreground group."""
    if rows > 0 and cols > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def make_controlling(slave: int) -> None:
    """New session with ``slave`` as its controlling terminal, on stdin/stdout/stderr.

    A shell gets job control (Ctrl-C reaches the foreground group, not the supervisor).
    """
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def send_fd(sock: socket.socket, fd: int) -> None:
    socket.send_fds(sock, [b"m"], [fd])


def recv_fd(sock: socket.socket) -> int:
    """The fd sent with ``send_fd``; -1 when the peer closed without sending one."""
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    return fds[0] if fds else -1
