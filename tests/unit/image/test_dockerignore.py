"""Docker's .dockerignore rules, including `!` exceptions and `**`."""

from __future__ import annotations

import pytest

from services.image.build.dockerignore import Matcher


@pytest.mark.parametrize(("rules", "path", "excluded"), [
    ("*.log", "a.log", True),
    ("*.log", "dir/a.log", False),  # `*` does not cross directories
    ("**/*.log", "dir/sub/a.log", True),
    ("**/*.log", "a.log", True),
    ("secret", "secret/key", True),  # a matched directory excludes what is below it
    ("/secret", "secret", True),  # leading slash cleaned
    ("./secret/", "secret/x", True),
    ("*.log\n!keep.log", "keep.log", False),
    ("*.log\n!keep.log", "other.log", True),
    ("!keep.log\n*.log", "keep.log", True),  # later rules win
    ("docs\n!docs/README.md", "docs/README.md", False),
    ("docs\n!docs/README.md", "docs/other.md", True),
    ("# comment\n\n  tmp  ", "tmp", True),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("[a-c]x", "bx", True),
    ("[a-c]x", "dx", False),
    ("build/**", "build/x/y", True),
    ("**", "anything/at/all", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/b", True),
    ("*\n!src\n!src/**", "src/main.py", False),
    ("*\n!src", "README", True),
    ("file.txt", "other/file.txt", False),
])
def test_rules(rules: str, path: str, excluded: bool) -> None:
    assert Matcher.from_text(rules).excluded(path) is excluded


def test_bare_exclamation_is_an_error() -> None:
    with pytest.raises(ValueError):
        Matcher.from_text("!")
