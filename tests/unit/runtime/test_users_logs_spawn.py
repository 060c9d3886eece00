"""User resolution, the json-file log, and exec error mapping."""

from __future__ import annotations

import errno
import json
import time

import pytest

from services.runtime import logs, users
from services.runtime.supervisor import protocol
from services.runtime.supervisor.spawn import SpawnConfig, env_dict, exec_error


@pytest.fixture
def etc(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nweb:x:1000:\nwww:x:33:web,other\n")
    return tmp_path


def test_resolve_users(etc):
    assert users.resolve("", etc) == users.ExecUser(0, 0, [0], "/root")
    u = users.resolve("web", etc)
    assert (u.uid, u.gid, u.home) == (1000, 1000, "/srv/web") and set(u.groups) == {1000, 33}
    assert users.resolve("1000", etc).home == "/srv/web"
    u = users.resolve("5000:www", etc)
    assert (u.uid, u.gid, u.home) == (5000, 33, "/")
    with pytest.raises(users.UserError):
        users.resolve("nobody", etc)
    with pytest.raises(users.UserError):
        users.resolve("web:nogroup", etc)


def test_log_writer_lines_partials_and_flush(tmp_path):
    path = tmp_path / "c-json.log"
    w = logs.LogWriter(str(path))
    w.write("stdout", b"hello\nwor", 1_700_000_000_123_456_789)
    w.write("stderr", b"err\n", 1_700_000_000_000_000_000)
    w.write("stdout", b"ld\n")
    w.write("stdout", b"no newline")
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["stream"], x["log"]) for x in lines] == [("stdout", "hello\n"), ("stderr", "err\n"),
                                                         ("stdout", "world\n"), ("stdout", "no newline")]
    assert lines[0]["time"] == "2023-11-14T22:13:20.123456789Z"
    entries = list(logs.read(str(path)))
    assert entries[0].time_ns == 1_700_000_000_123_456_789
    assert [e.data for e in logs.read(str(path), tail=2)] == [b"world\n", b"no newline"]


def test_tail_reads_backwards_across_blocks(tmp_path):
    path = tmp_path / "log"
    w = logs.LogWriter(str(path))
    for i in range(500):
        w.write("stdout", f"line {i}\n".encode(), time.time_ns())
    w.close()
    with open(path, "rb") as f:
        assert [x.decode()[-12:] for x in logs._tail_lines(f, 3, block=100)] == \
            [json.dumps(json.loads(x))[-12:] for x in path.read_text().splitlines()[-3:]]
    assert [e.data for e in logs.read(str(path), tail=3)] == [b"line 497\n", b"line 498\n", b"line 499\n"]
    assert len(list(logs.read(str(path), tail=-1))) == 500
    assert list(logs.read(str(tmp_path / "missing"))) == []


def test_long_partial_lines_are_split(tmp_path):
    path = tmp_path / "log"
    w = logs.LogWriter(str(path))
    w.write("stdout", b"x" * (logs.MAX_LINE + 10))
    w.close()
    assert [len(e.data) for e in logs.read(str(path))] == [logs.MAX_LINE, 10]


def test_exec_errors_like_docker():
    assert exec_error("nope", OSError(errno.ENOENT, "")) == (
        127, 'exec: "nope": executable file not found in $PATH')
    assert exec_error("/etc/passwd", OSError(errno.EACCES, "")) == (126, 'exec: "/etc/passwd": permission denied')
    assert exec_error("/x", OSError(errno.ENOEXEC, ""))[0] == 126


def test_env_and_config_round_trip():
    assert env_dict(["A=1", "B=x=y", "C", "=bad"]) == {"A": "1", "B": "x=y", "C": ""}
    cfg = SpawnConfig(id="x", args=["sh"], env=[], rootfs={"type": "bind"}, rootfs_dir="/r", state_dir="/s",
                      log_path="/l")
    assert SpawnConfig.from_dict({**cfg.to_dict(), "future_field": 1}) == cfg


def test_protocol_line_buffer():
    buf = protocol.LineBuffer()
    assert buf.feed(b'{"a":') == []
    assert buf.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert protocol.decode(protocol.encode({"x": [1]})) == {"x": [1]}
