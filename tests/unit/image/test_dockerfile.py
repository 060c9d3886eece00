"""The Dockerfile parser, variable substitution and config-changing instructions."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.image.build.dockerfile import Expander, apply_config_instruction, parse


def test_stages_lines_continuations_comments_and_heredocs() -> None:
    df = parse("# syntax=docker/dockerfile:1\nARG V=1\nFROM busybox AS Build\nRUN echo a \\\n  # c\n  && echo b\n"
               "RUN <<EOF\necho hi\nEOF\nFROM scratch\nCOPY --from=build /a /b\n")
    assert [a.rest for a in df.global_args] == ["V=1"]
    assert [(s.name, s.base, s.line) for s in df.stages] == [("build", "busybox", 3), ("", "scratch", 10)]
    run, heredoc = df.stages[0].instructions
    assert run.line == 4 and run.rest == "echo a   && echo b"
    assert heredoc.heredocs[0].content == "echo hi\n" and heredoc.line == 7
    copy = df.stages[1].instructions[0]
    assert copy.flags == {"from": "build"} and copy.line == 11


def test_escape_directive() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN echo a `\n  b\n")
    assert df.stages[0].instructions[0].rest == "echo a   b"


@pytest.mark.parametrize(("text", "message"), [
    ("FROM busybox\nFORM x\n", "Dockerfile:2: unknown instruction: FORM"),
    ("RUN x\n", "Dockerfile:1: RUN before the first FROM"),
    ("", "no instructions"),
    ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2: duplicate stage name"),
    ("FROM busybox\nSHELL sh -c\n", "Dockerfile:2: SHELL requires the arguments to be in JSON form"),
    ("FROM busybox\nONBUILD FROM x\n", "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger"),
    ("FROM busybox\nCOPY x\n", "Dockerfile:2: COPY requires at least two arguments"),
    ("FROM busybox\nHEALTHCHECK --bogus=1 CMD x\n", "Dockerfile:2: unknown flag: --bogus"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(text)
    assert message in str(info.value)


@pytest.mark.parametrize(("word", "want"), [
    ("$A", "1"), ("${A}", "1"), ("${NOPE:-x}", "x"), ("${A:-x}", "1"), ("${A:+y}", "y"), ("${NOPE:+y}", ""),
    ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("'$A'", "$A"), ('"$A b"', "1 b"), ("\\$A", "$A"),
    ("a${A}b", "a1b"), ("${NOPE:-${A}}", "1"), ("$", "$"),
])
def test_substitution(word: str, want: str) -> None:
    assert Expander({"A": "1", "EMPTY": ""}).word(word) == want


@pytest.mark.parametrize(("change", "key", "want"), [
    ('CMD ["sh"]', "Cmd", ["sh"]),
    ("CMD echo hi", "Cmd", ["/bin/sh", "-c", "echo hi"]),
    ('ENTRYPOINT ["/e"]', "Entrypoint", ["/e"]),
    ("ENV A=1 B=$A", "Env", ["PATH=/bin", "A=1", "B="]),
    ("ENV A 1 2", "Env", ["PATH=/bin", "A=1 2"]),
    ("EXPOSE 80 53/udp 8000-8001", "ExposedPorts", {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}),
    ('LABEL a=b "c d"="e f"', "Labels", {"a": "b", "c d": "e f"}),
    ("USER nobody:nogroup", "User", "nobody:nogroup"),
    ('VOLUME ["/a", "/b"]', "Volumes", {"/a": {}, "/b": {}}),
    ("VOLUME /a /b", "Volumes", {"/a": {}, "/b": {}}),
    ("WORKDIR rel", "WorkingDir", "/base/rel"),
    ("STOPSIGNAL SIGKILL", "StopSignal", "SIGKILL"),
    ('SHELL ["/bin/bash", "-c"]', "Shell", ["/bin/bash", "-c"]),
    ("ONBUILD RUN make", "OnBuild", ["RUN make"]),
    ("HEALTHCHECK NONE", "Healthcheck", {"Test": ["NONE"]}),
    ("HEALTHCHECK --interval=1m30s --timeout=3s --retries=4 CMD curl -f x", "Healthcheck",
     {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 90_000_000_000, "Timeout": 3_000_000_000, "Retries": 4}),
    ('HEALTHCHECK CMD ["/check"]', "Healthcheck", {"Test": ["CMD", "/check"]}),
])
def test_apply_config_instruction(change: str, key: str, want: object) -> None:
    config = {"Env": ["PATH=/bin"], "WorkingDir": "/base"}
    apply_config_instruction(config, change)
    assert config[key] == want


def test_entrypoint_resets_inherited_cmd() -> None:
    config = {"Cmd": ["sh"]}
    apply_config_instruction(config, 'ENTRYPOINT ["/e"]')
    assert config["Cmd"] is None


@pytest.mark.parametrize("change", ["RUN echo", "FROM x", "STOPSIGNAL NOPE", "EXPOSE 99999", "HEALTHCHECK x"])
def test_apply_rejects(change: str) -> None:
    with pytest.raises(InvalidArgument):
        apply_config_instruction({}, change)
