"""The one seam between the runtime and the kernel for calls Python 3.11 lacks.

``LinuxSyscalls`` calls libc through ctypes; ``RecordingSyscalls`` records every
call so the container init path (namespaces, rootfs, capabilities) can be
unit-tested without root. Code that sets up a container takes a ``Syscalls``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
import socket
import struct
from typing import Protocol

# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# prctl(2) options
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_PDEATHSIG = 1

_PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "armv7l": 218, "ppc64le": 203, "s390x": 217, "riscv64": 41}
_CAPGET_NR = {"x86_64": 125, "aarch64": 90, "armv7l": 184, "ppc64le": 183, "s390x": 184, "riscv64": 90}
_CAPSET_NR = {"x86_64": 126, "aarch64": 91, "armv7l": 185, "ppc64le": 184, "s390x": 185, "riscv64": 91}
_RT_SIGACTION_NR = {"x86_64": 13, "aarch64": 134, "armv7l": 174, "ppc64le": 173, "s390x": 174, "riscv64": 134}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class Syscalls(Protocol):
    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int) -> None: ...
    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None: ...
    def umount2(self, target: str, flags: int = 0) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int: ...
    def mknod(self, path: str, mode: int, device: int) -> None: ...
    def clear_inheritable_caps(self) -> None: ...
    def link_up(self, name: str) -> None: ...
    def default_signal(self, sig: int) -> None: ...


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class LinuxSyscalls:
    """The real thing: libc through ctypes."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                                     ctypes.c_char_p]
        self._libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._libc.unshare.argtypes = [ctypes.c_int]
        self._libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        self._libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self._libc.syscall.restype = ctypes.c_long
        self._arch = platform.machine()

    @staticmethod
    def _b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    def unshare(self, flags: int) -> None:
        _check(self._libc.unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        _check(self._libc.setns(fd, nstype), "setns")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        _check(self._libc.mount(self._b(source), self._b(target), self._b(fstype), flags, self._b(data)),
               f"mount {fstype or source or ''} on {target}")

    def umount2(self, target: str, flags: int = 0) -> None:
        _check(self._libc.umount2(self._b(target), flags), f"umount {target}")

    def pivot_root(self, new_root: str, put_old: str) -> None:
        nr = _PIVOT_ROOT_NR[self._arch]
        _check(self._libc.syscall(ctypes.c_long(nr), ctypes.c_char_p(self._b(new_root)),
                                  ctypes.c_char_p(self._b(put_old))), "pivot_root")

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(self._libc.sethostname(raw, len(raw)), "sethostname")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        return _check(self._libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)

    def clear_inheritable_caps(self) -> None:
        header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct {effective, permitted, inheritable}
        _check(self._libc.syscall(ctypes.c_long(_CAPGET_NR[self._arch]), header, data), "capget")
        data[2] = 0
        data[5] = 0
        _check(self._libc.syscall(ctypes.c_long(_CAPSET_NR[self._arch]), header, data), "capset")

    def default_signal(self, sig: int) -> None:
        """SIG_DFL through the raw syscall: glibc and Python refuse signals 32 and 33
        (glibc's internal ones), yet an ignored disposition for them is inherited
        across execve from whoever started the supervisor."""
        act = ctypes.create_string_buffer(64)  # struct sigaction, zeroed: SIG_DFL, no flags, empty mask
        _check(self._libc.syscall(ctypes.c_long(_RT_SIGACTION_NR[self._arch]), ctypes.c_long(sig), act,
                                  None, ctypes.c_long(8)), f"rt_sigaction({sig})")

    def link_up(self, name: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH14x", name.encode(), 0)
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
            flags = struct.unpack("16sH14x", res)[1]
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


class RecordingSyscalls:
    """A fake that records calls; ``fail`` maps a call name to an errno to raise."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail = fail or {}

    def _record(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise OSError(self.fail[name], f"{name}: {os.strerror(self.fail[name])}")

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", fd, nstype)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int = 0) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self._record("prctl", option, arg2)
        return 0

    def mknod(self, path: str, mode: int, device: int) -> None:
        self._record("mknod", path, mode, device)

    def clear_inheritable_caps(self) -> None:
        self._record("clear_inheritable_caps")

    def link_up(self, name: str) -> None:
        self._record("link_up", name)

    def default_signal(self, sig: int) -> None:
        self._record("default_signal", sig)


__all__ = ["Syscalls", "LinuxSyscalls", "RecordingSyscalls", "errno"]
