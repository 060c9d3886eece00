"""Berth's error hierarchy, defined once and mapped once to gRPC status codes.

Services raise these; ``server.py`` turns them into a status code with the
message as details, and the CLI turns the status back into one line on stderr.
"""

from __future__ import annotations

import grpc


class BerthError(Exception):
    code = grpc.StatusCode.UNKNOWN


class NotFound(BerthError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BerthError):
    code = grpc.StatusCode.ALREADY_EXISTS


class InvalidArgument(BerthError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(BerthError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(BerthError):
    code = grpc.StatusCode.UNAVAILABLE


class CommandNotFound(BerthError):
    """The container's command does not exist (Docker exit 127)."""

    code = grpc.StatusCode.NOT_FOUND
    exit_code = 127


class CommandNotExecutable(BerthError):
    """The container's command cannot be invoked (Docker exit 126)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    exit_code = 126


_BY_CODE = {cls.code: cls for cls in (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition, Unavailable)}


def from_rpc_error(err: grpc.RpcError) -> BerthError:
    """Rebuild a Berth error from a status received from another service."""
    code = err.code()
    message = err.details() or str(code)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return CommandNotExecutable(message)
    cls = _BY_CODE.get(code, BerthError)
    return cls(message)
