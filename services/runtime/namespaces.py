"""Linux namespaces a container gets, and the call that creates them."""

from __future__ import annotations

import os

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


# The order setns wants: the mount namespace last, since entering it hides the host's
# /proc (all namespace files are opened first anyway), and pid applies to our next fork.
JOIN_ORDER = (("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET), ("pid", CLONE_NEWPID),
              ("cgroup", CLONE_NEWCGROUP), ("mnt", CLONE_NEWNS))


def enter_namespaces_of(sys: Syscalls, pid: int, proc: str = "/proc") -> None:
    """Join every namespace of process ``pid`` (an exec into a running container).

    All files are opened before the first setns: after entering the container's mount
    namespace the host's /proc/<pid> is no longer reachable.
    """
    fds = []
    try:
        for name, flag in JOIN_ORDER:
            fds.append((os.open(f"{proc}/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag))
        for fd, flag in fds:
            sys.setns(fd, flag)
    finally:
        for fd, _ in fds:
            os.close(fd)
