"""Compose variable interpolation and env files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.compose.envfile import parse_env_text
from cli.compose.errors import ComposeError
from cli.compose.interpolate import interpolate, interpolate_tree

ENV = {"TAG": "2", "EMPTY": "", "NAME": "web"}


def _i(text: str, env: dict[str, str] | None = None) -> str:
    missing: list[str] = []
    out = interpolate(text, ENV if env is None else env, warn=missing.append)
    return out + ("!" + ",".join(missing) if missing else "")


@pytest.mark.parametrize(("text", "expected"), [
    ("bb:${TAG}", "bb:2"),
    ("bb:$TAG", "bb:2"),
    ("$NAME-1", "web-1"),
    ("${TAG:-1}", "2"),
    ("${UNSET:-1}", "1"),
    ("${EMPTY:-1}", "1"),
    ("${EMPTY-1}", ""),
    ("${UNSET-1}", "1"),
    ("${UNSET:-${NAME}}", "web"),
    ("${UNSET:-a ${TAG} b}", "a 2 b"),
    ("${TAG:+set}", "set"),
    ("${UNSET:+set}", ""),
    ("${EMPTY+set}", "set"),
    ("$$TAG", "$TAG"),
    ("cost: 5$", "cost: 5$"),
    ("${UNSET}", "!UNSET"),
    ("$UNSET/x", "/x!UNSET"),
])
def test_interpolation(text, expected):
    assert _i(text) == expected


def test_required_variables():
    with pytest.raises(ComposeError, match="required variable UNSET is missing a value: need it"):
        interpolate("${UNSET:?need it}", ENV)
    with pytest.raises(ComposeError, match="required variable EMPTY"):
        interpolate("${EMPTY:?}", ENV)
    assert interpolate("${EMPTY?}", ENV) == ""


@pytest.mark.parametrize("text", ["${TAG", "${}", "${1A}", "${TAG!x}"])
def test_malformed(text):
    with pytest.raises(ComposeError, match="invalid interpolation format"):
        interpolate(text, ENV)


def test_tree_interpolates_values_not_keys():
    doc = {"services": {"${NAME}": {"image": "bb:${TAG}", "ports": ["${TAG}0:80", 80], "tty": True}}}
    assert interpolate_tree(doc, ENV) == {"services": {"${NAME}": {"image": "bb:2", "ports": ["20:80", 80],
                                                                    "tty": True}}}


def test_env_file_syntax():
    text = """
# a comment
export A=1
B = two words  # inline comment
C="quoted # not a comment\\nnext"
D='single $x \\n'
E=
HOMEISH
G=a#b
"""
    env = parse_env_text(text, Path(".env"), lookup={"HOMEISH": "/root"})
    assert env == {"A": "1", "B": "two words", "C": "quoted # not a comment\nnext", "D": "single $x \\n", "E": "",
                   "HOMEISH": "/root", "G": "a#b"}


def test_env_file_errors_name_the_line():
    with pytest.raises(ComposeError, match=r"\.env: line 2"):
        parse_env_text("A=1\n1BAD=2\n", Path(".env"))
    with pytest.raises(ComposeError, match="unterminated double quote"):
        parse_env_text('A="open\n', Path(".env"))
