"""Device nodes a container is given: `--device` passthrough and `--privileged`'s host /dev.

Nodes are made in the container's private /dev (a tmpfs in its mount namespace) by its
init, before pivot_root, with the major/minor, mode and owner of the host's node. A
requested path must exist and be a device: anything else is refused at create.

What a container may *open* is the devices cgroup's business (``cgroup_access``): Docker's
default allow-list, plus each `--device` with its permissions, or everything for
`--privileged`. A node the container makes itself (mknod, when allowed) is still refused
at open unless its major:minor is on that list.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from services.runtime.cgroups import DeviceAccess

# Docker's default devices cgroup allow-list: "m" (mknod) of any node, and read/write/mknod
# of the nodes every container's /dev has, its ptys and /dev/net/tun.
DEFAULT_RULES = (
    "c *:* m",      # mknod of any character device ...
    "b *:* m",      # ... and block device; opening one needs a rule below
    "c 1:3 rwm",    # /dev/null
    "c 1:5 rwm",    # /dev/zero
    "c 1:7 rwm",    # /dev/full
    "c 1:8 rwm",    # /dev/random
    "c 1:9 rwm",    # /dev/urandom
    "c 5:0 rwm",    # /dev/tty
    "c 5:1 rwm",    # /dev/console
    "c 5:2 rwm",    # /dev/ptmx (also /dev/pts/ptmx of the container's devpts)
    "c 136:* rwm",  # /dev/pts/N
    "c 10:200 rwm",  # /dev/net/tun
)

# Host /dev entries `--privileged` does not copy: the container has its own of these.
SKIP_PRIVILEGED = {"pts", "shm", "mqueue", "ptmx", "console", "fd", "stdin", "stdout", "stderr", "core"}
PERMISSIONS = set("rwm")


class DeviceError(ValueError):
    """A `--device` that cannot be given; the message is Docker's."""


def check(host_path: str, container_path: str = "", permissions: str = "") -> tuple[str, str, str]:
    """(host path, container path, permissions) with defaults filled in, or DeviceError."""
    container_path = container_path or host_path
    permissions = permissions or "rwm"
    what = f'error gathering device information while adding custom device "{host_path}"'
    if not host_path.startswith("/"):
        raise DeviceError(f"{what}: not an absolute path")
    try:
        st = os.stat(host_path)
    except FileNotFoundError:
        raise DeviceError(f"{what}: no such file or directory") from None
    except OSError as exc:
        raise DeviceError(f"{what}: {exc.strerror}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DeviceError(f"{what}: not a device node")
    if not container_path.startswith("/") or ".." in container_path.split("/"):
        raise DeviceError(f'invalid device path in container: "{container_path}"')
    if not permissions or not set(permissions) <= PERMISSIONS:
        raise DeviceError(f'invalid device mode: "{permissions}"')
    return host_path, os.path.normpath(container_path), permissions


def cgroup_rule(host_path: str, permissions: str = "") -> str:
    """The devices cgroup rule for a `--device`: its host node's type and major:minor."""
    st = os.stat(host_path)
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
    if not kind:
        raise DeviceError(f'error gathering device information while adding custom device "{host_path}": '
                          "not a device node")
    return f"{kind} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {permissions or 'rwm'}"


def cgroup_access(privileged: bool, requested: Iterable[tuple[str, str]]) -> DeviceAccess:
    """What the devices cgroup lets a container open: (host path, permissions) of each `--device`.

    Computed at each start from the host's node (a device may have been re-created with
    another number since create); a node gone meanwhile is a DeviceError.
    """
    if privileged:
        return DeviceAccess(allow_all=True)
    rules = list(DEFAULT_RULES)
    for host_path, permissions in requested:
        try:
            rules.append(cgroup_rule(host_path, permissions))
        except OSError as exc:
            raise DeviceError(f'error gathering device information while adding custom device "{host_path}": '
                              f"{exc.strerror}") from None
    return DeviceAccess(rules=tuple(rules))


def make_node(host_path: str, target: str) -> None:
    """Copy the host's node (type, major/minor, mode, owner) to ``target``, replacing what is there."""
    st = os.stat(host_path)
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if os.path.lexists(target):
        os.unlink(target)
    os.mknod(target, stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode), st.st_rdev)
    os.chmod(target, stat.S_IMODE(st.st_mode))
    os.lchown(target, st.st_uid, st.st_gid)


def container_target(root: str, container_path: str) -> str:
    """Where a node goes under the (not yet pivoted) root; only below /dev or new paths, no symlinks followed."""
    from services.runtime.mounts import secure_join

    return secure_join(root, container_path)


def create(root: str, devices: list[dict]) -> None:
    """Make each `--device` node in the container (runs in its init, before pivot_root)."""
    for d in devices:
        host_path, container_path, _ = check(d.get("host_path", ""), d.get("container_path", ""),
                                             d.get("permissions", ""))
        make_node(host_path, container_target(root, container_path))


def host_devices(dev: str = "/dev") -> list[str]:
    """Every character and block device under the host's /dev (for --privileged)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(dev):
        if dirpath == dev:
            dirnames[:] = [d for d in dirnames if d not in SKIP_PRIVILEGED]
        for name in filenames:
            if dirpath == dev and name in SKIP_PRIVILEGED:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append(path)
    return found


def create_host_devices(root: str, dev: str = "/dev") -> None:
    """--privileged: the host's devices in the container's /dev (those it has not got already)."""
    for path in host_devices(dev):
        target = os.path.join(root, path.lstrip("/"))
        if os.path.lexists(target):
            continue
        try:
            make_node(path, target)
        except OSError:
            continue  # a device that vanished meanwhile
