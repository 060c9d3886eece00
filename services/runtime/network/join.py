"""The namespace step of a container's init (child A) when networking is involved.

The runtime prepares a container's network namespace *before* the spawn (a named
netns with its veth end already moved in, addressed and routed), so the supervisor
stays single-threaded and needs no extra round trip: child A unshares every other
namespace and ``setns``es into the prepared one. ``--network host`` keeps the
host's network namespace; ``--network none`` gets a fresh one with only ``lo``.
"""

from __future__ import annotations

import os

from services.runtime import namespaces
from services.runtime.syscalls import Syscalls


def enter_container_namespaces(sys: Syscalls, netns_path: str = "", host_network: bool = False) -> None:
    """Unshare the container's namespaces; join ``netns_path`` instead of a new netns if given."""
    flags = namespaces.CONTAINER_NAMESPACES
    if netns_path or host_network:
        flags &= ~namespaces.CLONE_NEWNET
    if netns_path:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sys.setns(fd, namespaces.CLONE_NEWNET)
        finally:
            os.close(fd)
    namespaces.enter_new_namespaces(sys, flags)
