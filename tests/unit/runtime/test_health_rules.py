"""Docker's health-check rules as pure functions: the state machine, defaults, the merge
of a run's options with the image's, and the CLI's parsing of the --health-* flags."""

from __future__ import annotations

import pytest

from berth.api.v1 import api_pb2
from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from cli import specs
from cli.client import CliError
from services.api.health import resolve
from services.common import errors
from services.runtime.health import apply_result, check_of

MS = 1_000_000


def result(code: int) -> runtime_pb2.HealthLog:
    return runtime_pb2.HealthLog(exit_code=code)


def test_state_machine_counts_consecutive_failures_and_resets_on_success():
    h = runtime_pb2.Health(status="starting")
    for expected in ("starting", "starting", "unhealthy"):
        apply_result(h, result(1), in_start_period=False, retries=3)
        assert h.status == expected
    apply_result(h, result(0), in_start_period=False, retries=3)
    assert (h.status, h.failing_streak) == ("healthy", 0)
    apply_result(h, result(2), in_start_period=False, retries=1)
    assert (h.status, h.failing_streak) == ("unhealthy", 1)


def test_start_period_failures_count_only_after_a_success():
    h = runtime_pb2.Health(status="starting")
    apply_result(h, result(1), in_start_period=True, retries=1)
    assert (h.status, h.failing_streak) == ("starting", 0)
    apply_result(h, result(0), in_start_period=True, retries=1)
    apply_result(h, result(1), in_start_period=True, retries=1)  # healthy once: failures count again
    assert h.status == "unhealthy"


def test_log_keeps_the_last_five():
    h = runtime_pb2.Health(status="starting")
    for code in range(8):
        apply_result(h, result(code), in_start_period=False, retries=100)
    assert [e.exit_code for e in h.log] == [3, 4, 5, 6, 7]


def test_check_of_defaults_and_forms():
    assert check_of(types_pb2.HealthCheck()) is None
    assert check_of(types_pb2.HealthCheck(test=["NONE"])) is None
    c = check_of(types_pb2.HealthCheck(test=["CMD-SHELL", "curl -f localhost"]))
    assert c.args == ["/bin/sh", "-c", "curl -f localhost"]
    assert (c.interval, c.timeout, c.start_period, c.retries, c.start_interval) == (30.0, 30.0, 0.0, 3, 5.0)
    c = check_of(types_pb2.HealthCheck(test=["CMD", "true", "x"], interval_ns=200 * MS, retries=1))
    assert c.args == ["true", "x"] and c.interval == 0.2 and c.retries == 1


def test_resolve_merges_run_over_image():
    image = types_pb2.HealthCheck(test=["CMD", "probe"], interval_ns=5 * MS, retries=4)
    assert resolve(types_pb2.HealthCheck(), None) is None
    assert resolve(types_pb2.HealthCheck(), image) == image
    got = resolve(types_pb2.HealthCheck(timeout_ns=7 * MS), image)
    assert list(got.test) == ["CMD", "probe"] and got.timeout_ns == 7 * MS and got.retries == 4
    got = resolve(types_pb2.HealthCheck(test=["CMD-SHELL", "mine"], retries=1), image)
    assert list(got.test) == ["CMD-SHELL", "mine"] and got.retries == 1 and got.interval_ns == 5 * MS
    assert resolve(types_pb2.HealthCheck(test=["NONE"]), image) == types_pb2.HealthCheck(test=["NONE"])
    for bad in (types_pb2.HealthCheck(test=["SOMETIMES", "x"]), types_pb2.HealthCheck(interval_ns=10),
                types_pb2.HealthCheck(retries=-1), types_pb2.HealthCheck(test=["CMD-SHELL"])):
        with pytest.raises(errors.InvalidArgument):
            resolve(bad, image)


def flags(**kw) -> api_pb2.RunSpec:
    spec = api_pb2.RunSpec()
    args = {"cmd": None, "interval": "", "timeout": "", "retries": 0, "start_period": "", "start_interval": "",
            "no_healthcheck": False, **kw}
    specs.apply_health(spec, **args)
    return spec


def test_cli_flags():
    assert not flags().HasField("healthcheck")
    hc = flags(cmd="true", interval="1m30s", timeout="500ms", retries=2, start_period="0",
               start_interval="1s").healthcheck
    assert list(hc.test) == ["CMD-SHELL", "true"]
    assert (hc.interval_ns, hc.timeout_ns, hc.start_period_ns, hc.start_interval_ns, hc.retries) == (
        90_000_000_000, 500 * MS, 0, 1000 * MS, 2)
    assert list(flags(no_healthcheck=True).healthcheck.test) == ["NONE"]
    for bad in ({"interval": "fast"}, {"timeout": "10"}, {"interval": "1ns"}, {"retries": -2},
                {"no_healthcheck": True, "interval": "1s"}):
        with pytest.raises(CliError) as err:
            flags(**bad)
        assert err.value.exit_code == 125
