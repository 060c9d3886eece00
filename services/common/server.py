"""Run a gRPC servicer on a unix socket with health checking and error mapping."""

from __future__ import annotations

import errno
import functools
import grp
import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.exc import DataError, OperationalError

from services.common import config, errors

log = logging.getLogger("berth")


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, errors.BerthError):
        context.abort(exc.code, str(exc))
    if isinstance(exc, grpc.RpcError):  # a downstream service's status: pass it on
        context.abort(exc.code(), exc.details() or str(exc.code()))
    if isinstance(exc, DataError):  # a value the database cannot hold (e.g. NUL in PostgreSQL text)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "invalid argument: " + (str(exc.orig).splitlines() or ["unstorable value"])[0])
    if isinstance(exc, OperationalError):  # locked, read-only or gone (a PostgreSQL restart): one line
        # Not UNAVAILABLE: that says "the service is down" to the api, which would retry.
        reason = (str(exc.orig).strip().splitlines() or ["unavailable"])[0]
        log.warning("database unavailable: %s", reason)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"database unavailable: {reason}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        log.warning("%s", exc)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED if exc.errno != errno.EROFS
                      else grpc.StatusCode.FAILED_PRECONDITION, os.strerror(exc.errno).lower())
    log.exception("internal error")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")


def map_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method so Berth errors become gRPC statuses, never tracebacks."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(self, request, context):  # noqa: ANN001
            try:
                yield from fn(self, request, context)
            except Exception as exc:  # noqa: BLE001 - the boundary of the service
                _abort(context, exc)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(self, request, context):  # noqa: ANN001
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the boundary of the service
            _abort(context, exc)

    return wrapper


def secure_socket(path: Path, group: str = "berth") -> None:
    """root-owned, mode 0660, group `berth` when that group exists: members may use
    Berth without being root; anyone else is refused at connect() with EACCES."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = 0
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)


def serve(
    name: str,
    socket_path: Path,
    add_servicers: Callable[[grpc.Server], None],
    service_names: list[str],
    on_stop: Callable[[], None] | None = None,
    max_workers: int = 32,
    tcp: tuple[str, grpc.ServerCredentials] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; the socket is 0660 and removed at exit. `tcp` is an
    extra (address, credentials) listener, only ever a secure one (services/common/tls.py)."""
    logging.basicConfig(level=os.environ.get("BERTH_LOG_LEVEL", "INFO"),
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                 # a TCP port another process holds is an error, not a silently shared port
                 *([("grpc.so_reuseport", 0)] if tcp else [])],
    )
    add_servicers(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")
    if tcp is not None:
        try:
            bound = server.add_secure_port(tcp[0], tcp[1])
        except RuntimeError:
            bound = 0
        if not bound:  # exit before the socket is healthy, so `daemon start` reports it
            log.error("%s: cannot listen on tcp://%s", name, tcp[0])
            raise SystemExit(1)
    old_umask = os.umask(0o117)
    try:
        server.start()
    finally:
        os.umask(old_umask)
    secure_socket(socket_path, config.load().socket_group)
    for svc in ["", *service_names]:
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on %s", name, socket_path)
    if tcp is not None:
        log.info("%s serving on tcp://%s (mutual TLS)", name, tcp[0])

    done = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    done.wait()
    for svc in ["", *service_names]:
        health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.stop(grace=2).wait()
    if on_stop is not None:
        on_stop()
    socket_path.unlink(missing_ok=True)
    log.info("%s stopped", name)


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # A restarted service must be reachable again at once, not after gRPC's
    # default exponential backoff (up to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def channel(socket_path: Path) -> grpc.Channel:
    """A channel to another Berth service's unix socket."""
    return grpc.insecure_channel(f"unix://{socket_path}", options=CHANNEL_OPTIONS)
