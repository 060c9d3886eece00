"""Finish what a crash interrupted between the image and runtime services.

The api is the only one that pairs a snapshot (image service) with a container (runtime
service), so it is the one that can tell when a crash broke a pair:
- a snapshot whose container was never created (the api died between PrepareSnapshot and
  Create) or whose container record is gone (the runtime died inside `rm`, before the api
  could remove the snapshot): the snapshot goes;
- a `--rm` container whose `run` died with the api: it is removed once it has exited.

It runs when the api starts and again whenever the runtime comes back after a restart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import grpc

from berth.image.v1 import image_pb2
from berth.runtime.v1 import runtime_pb2
from berth.types.v1 import types_pb2
from services.common import errors

log = logging.getLogger("berth.api")

_CONTAINER_KEY = re.compile(r"^[0-9a-f]{64}$")  # the api names snapshots after their containers
# A snapshot is an orphan only if it still has no container this long after first seen:
# a `create` in flight makes its snapshot a moment before its container.
SETTLE_SECONDS = 2.0


def _container_ids(servicer: Any) -> set[str]:
    return {c.id for c in servicer.runtime.List(runtime_pb2.ListRequest(all=True)).containers}


def _orphan_snapshots(servicer: Any) -> list[str]:
    keys = {s.key for s in servicer.image.ListSnapshots(image_pb2.ListSnapshotsRequest()).snapshots
            if _CONTAINER_KEY.match(s.key)}
    suspects = keys - _container_ids(servicer)
    if suspects:
        time.sleep(SETTLE_SECONDS)
        suspects -= _container_ids(servicer)
    return sorted(suspects)


def reconcile(servicer: Any, at_start: bool) -> None:
    """One pass; `at_start` also takes over the `--rm` containers of a `run` that died with us."""
    for key in _orphan_snapshots(servicer):
        log.warning("removing snapshot %s: it has no container", key)
        servicer._remove_snapshot(key)
    if not at_start:
        return  # a live api still finishes its own `run --rm`s
    for c in servicer.runtime.List(runtime_pb2.ListRequest(all=True)).containers:
        if not c.spec.auto_remove:
            continue
        if c.status == "running":
            servicer._auto_remove_when_done(c.id)
        elif c.status == "exited":  # not "created": `create --rm` waits for its `start`
            log.warning("removing %s: a --rm container whose run was interrupted", c.id)
            servicer._remove(c.id, force=True)


def follow(servicer: Any, runtime_stub: Any) -> None:
    """Reconcile now, and again each time the runtime's event stream comes back."""

    def loop() -> None:
        first = True
        while True:
            try:
                reconcile(servicer, at_start=first)
                first = False
                for _ in runtime_stub.WatchEvents(types_pb2.Empty()):
                    pass  # only the stream's end matters here: the runtime went away
            except (grpc.RpcError, errors.BerthError):
                pass  # a service is down: try again once it is back
            except Exception:  # noqa: BLE001 - never let the reconciler die; the next pass retries
                log.exception("reconciling after a crash")
            time.sleep(0.5)

    threading.Thread(target=loop, name="crash-reconcile", daemon=True).start()
