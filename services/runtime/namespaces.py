"""Linux namespaces a container gets, and the call that creates them."""

from __future__ import annotations

from services.runtime.syscalls import Syscalls

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Everything but the user namespace: the container's init is root on the host,
# confined by namespaces, a reduced capability set and cgroups.
CONTAINER_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWPID


def enter_new_namespaces(sys: Syscalls, flags: int = CONTAINER_NAMESPACES) -> None:
    """Unshare the container's namespaces; the pid namespace applies to the next fork."""
    sys.unshare(flags)
