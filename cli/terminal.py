"""The local terminal for interactive streams (`run -it`, `attach`, `exec -it`).

The CLI owns the user's terminal: raw mode while a container's TTY is attached
(restored on every way out: normal exit, error, signal, detach), the window size at
start and on SIGWINCH, the detach keys (Ctrl-P Ctrl-Q by default) and stdin pumped
into the request stream. The container side (its pty) is the runtime's.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import struct
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"

_CTRL_SPECIAL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """Docker's --detach-keys: comma-separated 'a'..'z' or 'ctrl-<a-z|@|[|\\|]|^|_>'."""
    out = bytearray()
    for key in (spec or "").split(","):
        key = key.strip()
        if len(key) == 1:
            out.append(ord(key))
        elif key.lower().startswith("ctrl-") and len(key) == 6:
            ch = key[5].lower()
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
            elif ch in _CTRL_SPECIAL:
                out.append(_CTRL_SPECIAL[ch])
            else:
                raise ValueError(f"Unknown character: '{key}'")
        else:
            raise ValueError(f"Unknown character: '{key}'")
    if not out:
        raise ValueError("detach keys cannot be empty")
    return bytes(out)


class DetachKeys:
    """Watches the input for the detach sequence; bytes of a partial match are held back
    and sent on if the sequence breaks, so typing Ctrl-P alone still reaches the container."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to forward, whether the sequence was completed)."""
        out = bytearray()
        for b in data:
            candidate = self.held + bytes([b])
            if self.keys.startswith(candidate):
                self.held = candidate
                if self.held == self.keys:
                    self.held = b""
                    return bytes(out), True
                continue
            out += self.held
            self.held = b""
            if self.keys.startswith(bytes([b])):
                self.held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


def window_size(fd: int = 1) -> tuple[int, int]:
    """(rows, cols) of the terminal on fd (stdout, else stdin); (0, 0) if there is none."""
    import fcntl

    for candidate in (fd, 0):
        try:
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(candidate, termios.TIOCGWINSZ, b"\0" * 8))
            return rows, cols
        except OSError:
            continue
    return 0, 0


@contextlib.contextmanager
def raw_mode(fd: int = 0) -> Iterator[None]:
    """Put the terminal on fd in raw mode for the block; restore it on any way out."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):  # the terminal may be gone (closed)
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Session:
    """One interactive stream: requests out (first, then stdin/resizes), responses in.

    ``start(requests)`` opens the gRPC call; ``handle(response)`` writes output and
    returns the exit code once it arrives. The result of ``run`` is that exit code, or
    None when the user detached.
    """

    def __init__(self, *, tty: bool, interactive: bool, detach_keys: bytes,
                 stdin_request: Callable[[bytes], Any], resize_request: Callable[[int, int], Any] | None,
                 close_request: Callable[[], Any] | None) -> None:
        self.tty = tty
        self.interactive = interactive
        self.detach = DetachKeys(detach_keys)
        self.stdin_request = stdin_request
        self.resize_request = resize_request
        self.close_request = close_request
        self.requests: queue.Queue = queue.Queue()
        self.detached = False
        self.call: Any = None

    def _requests(self) -> Iterator[Any]:
        while (item := self.requests.get()) is not None:
            yield item

    def send(self, request: Any) -> None:
        self.requests.put(request)

    def resize(self) -> None:
        if self.resize_request is not None:
            rows, cols = window_size()
            if rows and cols:
                self.send(self.resize_request(rows, cols))

    def _pump_stdin(self) -> None:
        """Read stdin (raw bytes as typed) until EOF or detach; runs in a daemon thread."""
        while True:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:
                if self.close_request is not None and not self.tty:
                    self.send(self.close_request())
                return
            data, detached = self.detach.feed(data) if self.tty or self.interactive else (data, False)
            if data:
                self.send(self.stdin_request(data))
            if detached:
                self.detached = True
                if self.call is not None:
                    self.call.cancel()
                return

    def run(self, first: Any, start: Callable[[Iterator[Any]], Any], handle: Callable[[Any], int | None],
            on_started: Callable[[], None] | None = None) -> int | None:
        self.send(first)
        self.call = start(self._requests())
        use_tty = self.tty and os.isatty(0)
        old_winch = None
        if self.tty and self.resize_request is not None:
            with contextlib.suppress(ValueError):
                old_winch = signal.signal(signal.SIGWINCH, lambda *_: self.resize())
        exit_code = None
        try:
            with raw_mode(0) if use_tty and self.interactive else contextlib.nullcontext():
                if self.interactive:
                    threading.Thread(target=self._pump_stdin, name="stdin", daemon=True).start()
                for resp in self.call:
                    code = handle(resp)
                    if on_started is not None:
                        on_started()
                        on_started = None
                    if code is not None:
                        exit_code = code
        except Exception as err:
            if self.detached and _is_cancelled(err):
                return None
            raise
        finally:
            self.requests.put(None)
            if old_winch is not None:
                signal.signal(signal.SIGWINCH, old_winch)
        if self.detached:
            return None
        return exit_code


def _is_cancelled(err: BaseException) -> bool:
    code = getattr(err, "code", None)
    return callable(code) and getattr(code(), "name", "") == "CANCELLED"


def write_output(data: bytes, stderr: bool = False) -> None:
    stream = sys.stderr.buffer if stderr else sys.stdout.buffer
    stream.write(data)
    stream.flush()
