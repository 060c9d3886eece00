"""How the e2e tests judge a CLI run: success, or one clear line and the right exit code."""

from __future__ import annotations

import subprocess


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}"
    assert "Traceback" not in r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess, rc: int, needle: str, max_lines: int = 1) -> None:
    """A failure the way Docker reports one: exit code `rc` and `needle` in at most
    `max_lines` lines of stderr (flag errors add a "See 'berth CMD --help'." line)."""
    assert r.returncode == rc, f"rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}"
    assert "Traceback" not in r.stderr
    assert needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= max_lines, r.stderr
