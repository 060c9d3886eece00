"""json-file logs: rotation, since/until by bisection, follow across rotation, and the
1 GB case (tail and since answer without scanning the file)."""

from __future__ import annotations

import threading
import time

from services.runtime import logs

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def write_lines(path, n: int, start_ns: int = T0, step_ns: int = SEC, **kw) -> None:
    w = logs.LogWriter(str(path), **kw)
    for i in range(n):
        w.write("stdout", f"line {i}\n".encode(), start_ns + i * step_ns)
    w.close()


def data(entries) -> list[str]:
    return [e.data.decode().strip() for e in entries]


def test_rotation_keeps_max_files_each_at_most_max_size(tmp_path):
    path = tmp_path / "c-json.log"
    write_lines(path, 2000, max_size=4096, max_files=3)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    got = data(logs.read(str(path)))
    assert got[-1] == "line 1999"
    first = int(got[0].split()[1])
    assert got == [f"line {i}" for i in range(first, 2000)]  # contiguous, oldest file first
    assert data(logs.read(str(path), tail=3)) == ["line 1997", "line 1998", "line 1999"]
    # a tail longer than the current file continues into the rotated ones
    assert len(data(logs.read(str(path), tail=100))) == 100


def test_max_file_one_keeps_only_the_current_file(tmp_path):
    path = tmp_path / "c-json.log"
    write_lines(path, 500, max_size=2048, max_files=1)
    assert [f.name for f in tmp_path.iterdir()] == ["c-json.log"]


def test_since_and_until(tmp_path):
    path = tmp_path / "log"
    write_lines(path, 1000, max_size=8192, max_files=10)
    assert data(logs.read(str(path), since_ns=T0 + 995 * SEC)) == [f"line {i}" for i in range(995, 1000)]
    assert data(logs.read(str(path), since_ns=T0 + 990 * SEC, until_ns=T0 + 992 * SEC)) == ["line 990", "line 991"]
    assert data(logs.read(str(path), since_ns=T0 + 990 * SEC, tail=2)) == ["line 998", "line 999"]
    assert data(logs.read(str(path), until_ns=T0 + 5 * SEC, tail=2)) == []  # older ones were rotated away
    assert data(logs.read(str(path), since_ns=T0 + 5000 * SEC)) == []


def test_follow_across_rotation(tmp_path):
    path = tmp_path / "log"
    w = logs.LogWriter(str(path), max_size=1024, max_files=2)
    w.write("stdout", b"before\n", T0)
    start = logs.position(str(path))
    done = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        for e in logs.follow(str(path), lambda: not done.is_set(), start=start, poll=0.01):
            seen.append(e.data.decode().strip())

    t = threading.Thread(target=reader)
    t.start()
    for i in range(100):  # ~8 kB: several rotations while following
        w.write("stdout", f"after {i}\n".encode(), T0 + i)
        time.sleep(0.002)
    time.sleep(0.1)
    done.set()
    t.join(5)
    w.close()
    assert seen[0] == "after 0" and seen[-1] == "after 99"
    assert "before" not in seen


def test_tail_and_since_on_a_1gb_log_are_fast(tmp_path):
    """1 GiB of lines, a second per 1 MiB block: tail and since must seek, not scan."""
    path = tmp_path / "big-json.log"
    line = b'{"log":"%08d some output of a chatty container........\\n","stream":"stdout","time":"TIMESTAMP"}\n'
    block_lines = (1 << 20) // len(line % 0)
    template = b"".join(line % i for i in range(block_lines))
    blocks = 1024
    with open(path, "wb") as f:
        for b in range(blocks):
            f.write(template.replace(b"TIMESTAMP", logs.rfc3339nano(T0 + b * SEC).encode()))
    assert path.stat().st_size >= 1 << 30
    start = time.monotonic()
    tail = list(logs.read(str(path), tail=5))
    assert time.monotonic() - start < 0.2 and len(tail) == 5
    start = time.monotonic()
    recent = list(logs.read(str(path), since_ns=T0 + (blocks - 1) * SEC))
    elapsed = time.monotonic() - start
    assert len(recent) == block_lines and recent[0].time_ns == T0 + (blocks - 1) * SEC
    assert elapsed < 0.5, elapsed
    start = time.monotonic()
    window = list(logs.read(str(path), since_ns=T0 + 500 * SEC, until_ns=T0 + 501 * SEC, tail=3))
    assert len(window) == 3 and time.monotonic() - start < 0.5
    path.unlink()
