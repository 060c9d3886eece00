"""Detach keys, time arguments and restart-policy parsing on the CLI side."""

from __future__ import annotations

import pytest

from cli.terminal import DetachKeys, parse_detach_keys
from cli.timeparse import parse_duration, parse_time


def test_parse_detach_keys():
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-x,x") == b"\x18x"
    assert parse_detach_keys("ctrl-@,ctrl-[") == b"\x00\x1b"
    for bad in ("", "ctrl-1", "shift-a", "ab"):
        with pytest.raises(ValueError):
            parse_detach_keys(bad)


def test_detach_keys_hold_partial_matches():
    d = DetachKeys(b"\x10\x11")
    assert d.feed(b"abc") == (b"abc", False)
    assert d.feed(b"x\x10") == (b"x", False)        # held: may be the start of the sequence
    assert d.feed(b"y") == (b"\x10y", False)         # it was not: passed on in order
    assert d.feed(b"\x10\x10") == (b"\x10", False)   # the second one may start it again
    assert d.feed(b"\x11rest") == (b"", True)
    d = DetachKeys(b"\x10\x11")
    assert d.feed(b"ls\r\x10\x11") == (b"ls\r", True)


def test_parse_time():
    now = 1_700_000_000.0
    assert parse_duration("1m30s") == 90
    assert parse_time("10s", now) == int((now - 10) * 1e9)
    assert parse_time("1700000000.5", now) == 1_700_000_000_500_000_000
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000_000_000_000
    assert parse_time("2023-11-14T22:13:20.25Z", now) == 1_700_000_000_250_000_000
    assert parse_time("2023-11-14T23:13:20+01:00", now) == 1_700_000_000_000_000_000
    assert parse_time("2023-11-14", now) == 1_699_920_000_000_000_000
    for bad in ("yesterday", "10x", ""):
        with pytest.raises(ValueError):
            parse_time(bad, now)
