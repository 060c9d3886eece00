"""Health checks from the command line: the --health-* flags, `ps` STATUS, `inspect`'s
State.Health and Config.Healthcheck, and Docker's health_status events."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")


def health(services, name: str) -> dict:
    state = json.loads(ok(services.berth("inspect", "-f", "{{json .State}}", name)).stdout)
    return state.get("Health") or {}


def wait_health(services, name: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while (h := health(services, name)).get("Status") != status:
        assert time.monotonic() < deadline, h
        time.sleep(0.1)
    return h


def events(services, since: float, *filters: str) -> list[str]:
    """Actions of the recorded events matching ``filters`` (waiting a little for the first:
    runtime events reach the api's log asynchronously)."""
    args = [a for f in filters for a in ("--filter", f)]
    deadline = time.monotonic() + 5
    while True:
        r = ok(services.berth("events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}", *args,
                              "--format", "{{json .}}"))
        actions = [json.loads(line)["Action"] for line in r.stdout.splitlines()]
        if actions or time.monotonic() > deadline:
            return actions
        time.sleep(0.2)


def ps_status(services, name: str) -> str:
    out = ok(services.berth("ps", "-a", "--no-trunc")).stdout
    header, *rows = out.splitlines()
    start, end = header.index("STATUS"), header.index("PORTS")
    return next(row[start:end].strip() for row in rows if row.split()[-1] == name)


def test_health_flags_ps_inspect_and_events(services):
    since = time.time()
    ok(services.berth("run", "-d", "--name", "hc-ok", "--health-cmd", "test -f /tmp/ready && echo fine",
                      "--health-interval", "2s", "--health-retries", "2", "--health-timeout", "1s500ms",
                      "--health-start-period", "1m", "--health-start-interval", "100ms",
                      "busybox", "sh", "-c", "sleep 1; touch /tmp/ready; sleep 60"))
    try:
        assert ps_status(services, "hc-ok").endswith("(health: starting)")
        h = wait_health(services, "hc-ok", "healthy")
        assert h["FailingStreak"] == 0
        assert h["Log"][-1]["ExitCode"] == 0 and h["Log"][-1]["Output"] == "fine\n"
        assert h["Log"][-1]["Start"] <= h["Log"][-1]["End"]
        assert h["Log"][0]["ExitCode"] == 1  # failures while starting (every 100ms) were logged, not counted
        status = ps_status(services, "hc-ok")
        assert status.startswith("Up ") and status.endswith(" (healthy)"), status
        cfg = json.loads(ok(services.berth("inspect", "-f", "{{json .Config.Healthcheck}}", "hc-ok")).stdout)
        assert cfg == {"Test": ["CMD-SHELL", "test -f /tmp/ready && echo fine"], "Interval": 2_000_000_000,
                       "Timeout": 1_500_000_000, "StartPeriod": 60_000_000_000, "StartInterval": 100_000_000,
                       "Retries": 2}
        actions = events(services, since, "container=hc-ok", "event=health_status")
        assert actions == ["health_status: healthy"], actions
    finally:
        services.berth("rm", "-f", "hc-ok")


def test_unhealthy_in_ps_and_events(services):
    since = time.time()
    ok(services.berth("run", "-d", "--name", "hc-bad", "--health-cmd", "echo broken; exit 1",
                      "--health-interval", "200ms", "--health-retries", "2", "busybox", "sleep", "60"))
    try:
        h = wait_health(services, "hc-bad", "unhealthy")
        assert h["FailingStreak"] >= 2 and h["Log"][-1] == {**h["Log"][-1], "ExitCode": 1, "Output": "broken\n"}
        assert ps_status(services, "hc-bad").endswith(" (unhealthy)")
        assert events(services, since, "container=hc-bad", "event=health_status: unhealthy") == [
            "health_status: unhealthy"]
    finally:
        services.berth("rm", "-f", "hc-bad")


def test_no_health_flags_no_health(services):
    ok(services.berth("run", "-d", "--name", "hc-none", "busybox", "sleep", "60"))
    try:
        assert health(services, "hc-none") == {}
        assert ps_status(services, "hc-none").startswith("Up ")
        assert "health" not in ps_status(services, "hc-none")
    finally:
        services.berth("rm", "-f", "hc-none")


def test_create_takes_the_flags_and_no_healthcheck_records_none(services):
    ok(services.berth("create", "--name", "hc-created", "--no-healthcheck", "busybox", "sleep", "60"))
    try:
        cfg = ok(services.berth("inspect", "-f", "{{json .Config.Healthcheck}}", "hc-created")).stdout
        assert json.loads(cfg) == {"Test": ["NONE"]}
        ok(services.berth("start", "hc-created"))
        time.sleep(0.3)
        assert health(services, "hc-created") == {}
    finally:
        services.berth("rm", "-f", "hc-created")


@pytest.mark.parametrize("flags, needle", [
    (["--health-interval", "soon"], 'invalid argument "soon" for "--health-interval" flag'),
    (["--health-timeout", "5"], 'invalid argument "5" for "--health-timeout" flag'),
    (["--health-start-period", "1x"], "--health-start-period"),
    (["--health-interval", "10us"], "--health-interval cannot be less than 1ms"),
    (["--health-retries", "-1"], "--health-retries cannot be negative"),
    (["--health-retries", "many"], "--health-retries"),
    (["--no-healthcheck", "--health-cmd", "true"], "--no-healthcheck conflicts with --health-* options"),
])
def test_bad_health_flags_are_one_line_errors(services, flags, needle):
    r = services.berth("run", "--rm", "--name", "hc-bad-flag", *flags, "busybox", "true")
    one_line_error(r, 125, needle, max_lines=2)
    assert "hc-bad-flag" not in ok(services.berth("ps", "-a")).stdout
