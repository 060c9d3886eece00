"""Resolving a container's health check from the run's flags and the image's HEALTHCHECK.

Docker's rules: the run's ``test`` replaces the image's (``["NONE"]`` switches the
image's check off, as ``--no-healthcheck`` does); durations and retries the run left at
zero are taken from the image, so ``--health-interval 1s`` alone speeds up the image's
own check. The runtime only ever sees the result.
"""

from __future__ import annotations

from berth.types.v1 import types_pb2
from services.common import errors

TEST_KINDS = ("NONE", "CMD", "CMD-SHELL")
MIN_DURATION_NS = 1_000_000  # Docker rejects anything shorter than 1ms (0 means "default")


def resolve(run: types_pb2.HealthCheck | None, image: types_pb2.HealthCheck | None) -> types_pb2.HealthCheck | None:
    """The check the container gets; None when neither the run nor the image has one."""
    has_run = run is not None and run.ByteSize() > 0
    has_image = image is not None and image.ByteSize() > 0
    if not has_run and not has_image:
        return None
    if has_run:
        validate(run)
    out = types_pb2.HealthCheck()
    if has_image:
        out.CopyFrom(image)
    if not has_run:
        return out
    if run.test:
        del out.test[:]
        out.test.extend(run.test)
    if out.test and out.test[0] == "NONE":
        return types_pb2.HealthCheck(test=["NONE"])
    for name in ("interval_ns", "timeout_ns", "start_period_ns", "retries", "start_interval_ns"):
        value = getattr(run, name)
        if value:
            setattr(out, name, value)
    return out


def validate(hc: types_pb2.HealthCheck) -> None:
    """Docker's checks of a run's health options: InvalidArgument names the bad one."""
    if hc.test and hc.test[0] not in TEST_KINDS:
        raise errors.InvalidArgument(f"invalid health check test {hc.test[0]!r}: want NONE, CMD or CMD-SHELL")
    if hc.test and hc.test[0] != "NONE" and len(hc.test) < 2:
        raise errors.InvalidArgument(f"health check test {hc.test[0]} needs a command")
    for name, label in (("interval_ns", "Interval"), ("timeout_ns", "Timeout"),
                        ("start_period_ns", "StartPeriod"), ("start_interval_ns", "StartInterval")):
        value = getattr(hc, name)
        if value < 0 or 0 < value < MIN_DURATION_NS:
            raise errors.InvalidArgument(f"{label} in Healthcheck cannot be less than 1ms")
    if hc.retries < 0:
        raise errors.InvalidArgument("Retries in Healthcheck cannot be negative")
