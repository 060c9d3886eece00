"""Logs of several containers at once, each line prefixed `name | ` like docker compose.

One thread per container reads its log stream; whole lines are written under a lock
so lines of different containers never interleave mid-line.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from cli.client import CliError

_lock = threading.Lock()


def prefix_of(project_name: str, container: Any) -> str:
    """`web-1` for `myapp-web-1`; a custom container_name as it is."""
    return container.name.removeprefix(project_name + "-")


class Prefixer:
    """Splits a byte stream into lines and writes each with the container's prefix."""

    def __init__(self, prefix: str, stream: Any) -> None:
        self.prefix = prefix.encode()
        self.stream = stream
        self.pending = b""

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        if lines:
            with _lock:
                for line in lines:
                    self.stream.write(self.prefix + line + b"\n")
                self.stream.flush()

    def close(self) -> None:
        if self.pending:
            self.feed(b"\n")


def _follow_one(client: Any, container: Any, prefix: str, follow: bool, tail: int, errors: list) -> None:
    out = Prefixer(prefix, sys.stdout.buffer)
    err = Prefixer(prefix, sys.stderr.buffer)
    req = client.runtime.LogsRequest(id=container.id, tail=tail, follow=follow)
    try:
        for entry in client.stream(client.stub.ContainerLogs(req)):
            (err if entry.output.stream == client.types.Output.STDERR else out).feed(entry.output.data)
    except CliError as e:
        if "cancelled" not in str(e):
            errors.append(e)
    finally:
        out.close()
        err.close()


def show_logs(client: Any, project_name: str, containers: list[Any], follow: bool = False, tail: int = -1) -> None:
    """Print (and with follow, keep printing until they all stop) the containers' logs."""
    if not containers:
        return
    width = max(len(prefix_of(project_name, c)) for c in containers)
    errors: list[CliError] = []
    threads = [threading.Thread(target=_follow_one, daemon=True,
                                args=(client, c, prefix_of(project_name, c).ljust(width) + "  | ", follow, tail,
                                      errors))
               for c in containers]
    for t in threads:
        t.start()
        if not follow:
            t.join()  # one container after the other, as `docker compose logs` without -f
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # a timed join, so Ctrl-C reaches the main thread
    if errors:
        raise errors[0]
