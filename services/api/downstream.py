"""Calls from the gateway to the image and runtime services.

A service that is down must reach the user as one clear line naming it, not as
gRPC's "failed to connect to all addresses" with a socket dump.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from services.common import errors

RETRY_TIMEOUT = 3.0


class Downstream:
    """Wrap a gRPC stub so UNAVAILABLE becomes `Unavailable("<name> service ...")`."""

    def __init__(self, name: str, socket: str, stub: Any) -> None:
        self._name = name
        self._socket = socket
        self._stub = stub

    def _unavailable(self) -> errors.Unavailable:
        return errors.Unavailable(f"the {self._name} service is not running (unix://{self._socket})")

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self._stub, method)

        def invoke(*args: Any, **kwargs: Any) -> Any:
            try:
                result = call(*args, **kwargs)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if not (os.path.exists(self._socket) and args and isinstance(args[0], Message)):
                    raise self._unavailable() from None
                # The socket is there: the service may have just restarted while the
                # channel was backing off. Retry a unary request once, waiting briefly.
                try:
                    result = call(*args, wait_for_ready=True, timeout=RETRY_TIMEOUT, **kwargs)
                except grpc.RpcError as again:
                    if again.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise self._unavailable() from None
                    raise
            if isinstance(result, grpc.Call) and isinstance(result, Iterator):
                return self._stream(result)
            return result

        return invoke

    def _stream(self, it: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from it
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise self._unavailable() from None
            raise
