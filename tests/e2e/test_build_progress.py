"""`berth build --progress tty`: BuildKit's compact live view. Finished steps stay as one
line each with their duration (or CACHED); a failing step's output stays on screen; the
image id and tags end it. (`plain` is covered by the other build tests.)"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.e2e.assertions import ok

pytestmark = pytest.mark.usefixtures("clean_host")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _screen(stderr: str) -> list[str]:
    return [line.rstrip() for line in ANSI.sub("", stderr).splitlines() if line.strip()]


def test_tty_progress_lists_steps_with_durations_and_the_image(services, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN for i in 1 2 3; do echo out-$i; sleep 0.4; done\n"
                                         "COPY Dockerfile /df\nCMD [\"true\"]\n")
    tag = f"tty-{uuid.uuid4().hex[:6]}:1"
    try:
        r = ok(services.berth("build", "--progress", "tty", "-t", tag, str(tmp_path)))
        lines = _screen(r.stderr)
        assert re.search(r"^=> \[1/4\] FROM busybox\s+\d+\.\ds$", "\n".join(lines), re.M), lines
        assert any(re.match(r"=> \[2/4\] RUN for i in 1 2 3; do echo out-\$i; sleep 0.4; done\s+\d+\.\ds$", ln)
                   for ln in lines), lines
        assert any("out-3" in ln for ln in lines)  # the running step's output was shown live
        assert any(ln.startswith("[+] Building") and ln.endswith("(4/4) FINISHED") for ln in lines), lines
        image_id = ok(services.berth("image", "inspect", "-f", "{{.Id}}", tag)).stdout.strip()
        assert f"=> => writing image {image_id} done" in lines
        assert f"=> => naming to {tag.replace(':1', '')}:1 done" in lines or any(
            ln.startswith("=> => naming to") and tag in ln for ln in lines)
        again = _screen(ok(services.berth("build", "--progress", "tty", "-t", tag, str(tmp_path))).stderr)
        assert any(re.match(r"=> CACHED \[2/4\] RUN ", ln) for ln in again), again
    finally:
        services.berth("rmi", tag)


def test_tty_progress_keeps_a_failing_steps_output(services, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo first-words; echo '[/bold] last-words'; exit 5\n")
    r = services.berth("build", "--progress", "tty", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = _screen(r.stderr)
    final = lines[lines.index(next(ln for ln in lines if ln.startswith("=> [2/2] RUN echo first-words"))):]
    assert "=> => # first-words" in final and "=> => # [/bold] last-words" in final, lines
    assert "Dockerfile:2: RUN exit code 5" in lines[-1]
