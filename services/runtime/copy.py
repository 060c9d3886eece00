"""`cp`: tar streams out of and into a container's root filesystem.

The supervisor forks a short-lived helper per copy. The helper enters the container's
mount namespace (running container: setns makes its root our root) or mounts the
snapshot in a private mount namespace of its own and chroots into it (stopped
container). Every path is then resolved by the kernel *inside* the container's root,
so a symlink such as ``/tmp/x -> /etc`` leads to the container's /etc, never the
host's. The helper talks tar over a socketpair whose other end the supervisor hands to
the runtime server (SCM_RIGHTS): the supervisor never carries the data.

Wire format on the socket: the helper writes one JSON status line first (``ok`` or
``error``); a copy *from* the container then streams a tar until EOF; a copy *to* it
reads a tar until the client shuts down its write side, then writes a final status line.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import stat
import tarfile

from services.common import tarsafe
from services.common.mount import Mount
from services.runtime import namespaces, rootfs
from services.runtime.security import userns
from services.runtime.syscalls import Syscalls


class CopyError(Exception):
    pass


def enter_root(sys: Syscalls, pid: int, mount: dict, rootfs_dir: str) -> None:
    """Make the container's root filesystem our root (see the module docstring)."""
    if pid:
        # A container with its own user namespace: enter it last (after the mount
        # namespace, which needs our host privilege), so files are written as the
        # container's root, which the idmapped layers store as 0, not as host root.
        user_fd = userns.foreign_userns_fd(pid)
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sys.setns(fd, namespaces.CLONE_NEWNS)
        finally:
            os.close(fd)
        if user_fd >= 0:
            try:
                userns.join(sys, user_fd)
            finally:
                os.close(user_fd)
    else:
        sys.unshare(namespaces.CLONE_NEWNS)
        os.makedirs(rootfs_dir, exist_ok=True)
        rootfs.mount_root(sys, Mount.from_dict(mount), rootfs_dir)
        os.chroot(rootfs_dir)
    os.chdir("/")


def _status(sock: socket.socket, **msg: object) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def split_target(dest: str) -> tuple[str, str | None]:
    """Where a tar with one top-level item goes: (directory, new name or None).

    Docker's rules: into ``dest`` if it is a directory; else ``dest`` names the copy
    (its parent must exist); ``dest/`` that does not exist is an error.
    """
    dest = dest or "/"
    if os.path.isdir(dest):
        return dest, None
    if dest.endswith("/"):
        raise CopyError(f"destination directory {dest} does not exist")
    parent = posixpath.dirname(dest.rstrip("/")) or "/"
    if not os.path.isdir(parent):
        raise CopyError(f"no such directory: {parent}")
    return parent, posixpath.basename(dest.rstrip("/"))


class Renamer:
    """Give the archive's top-level item its new name (``cp f box:/tmp/g`` writes g).

    An archive of a directory's contents (``cp dir/. box:/new``) has "." on top: its
    members go under the new name.
    """

    def __init__(self, new_top: str | None) -> None:
        self.new_top = new_top
        self.contents: bool | None = None

    def __call__(self, member: tarfile.TarInfo) -> tarfile.TarInfo:
        if not self.new_top:
            return member
        name = member.name[2:] if member.name.startswith("./") else member.name
        name = name.rstrip("/")
        if self.contents is None:
            self.contents = name in ("", ".")
        if name in ("", "."):
            member.name = self.new_top
        elif self.contents:
            member.name = f"{self.new_top}/{name}"
        else:
            _, _, rest = name.partition("/")
            member.name = self.new_top + ("/" + rest if rest else "")
        return member


def send(sock: socket.socket, path: str, container: str) -> None:
    """Tar ``path`` (inside our root) onto the socket."""
    try:
        st = os.lstat(path)
    except OSError:
        _status(sock, ok=False, error=f"Could not find the file {path} in container {container}")
        return
    _status(sock, ok=True, mode=st.st_mode, size=st.st_size, dir=stat.S_ISDIR(st.st_mode))
    contents = path.endswith("/.")
    arcname = "." if contents or path.rstrip("/") == "" else posixpath.basename(path.rstrip("/"))
    with sock.makefile("wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=arcname, recursive=True)


def receive(sock: socket.socket, dest: str) -> None:
    """Untar from the socket at ``dest`` (inside our root), then report."""
    try:
        directory, new_top = split_target(dest)
    except CopyError as exc:
        _status(sock, ok=False, error=str(exc))
        return
    _status(sock, ok=True)
    try:
        with sock.makefile("rb") as src, tarfile.open(fileobj=src, mode="r|") as tar:
            rename = Renamer(new_top)
            for member in tar:
                tarsafe.extract(tar, rename(member), directory)
    except (tarfile.TarError, OSError) as exc:
        _status(sock, ok=False, error=f"copy failed: {exc}")
        return
    _status(sock, ok=True)


def helper(sys: Syscalls, sock: socket.socket, req: dict) -> None:
    """The forked helper's whole life: never returns."""
    code = 0
    try:
        enter_root(sys, int(req.get("pid") or 0), req.get("rootfs") or {}, req.get("rootfs_dir", ""))
        if req["mode"] == "from":
            send(sock, req["path"], req.get("id", ""))
        else:
            receive(sock, req["path"])
    except BaseException as exc:  # noqa: BLE001 - report, never return into the supervisor
        code = 1
        with contextlib.suppress(OSError):
            _status(sock, ok=False, error=f"copy failed: {exc}")
    finally:
        os._exit(code)
