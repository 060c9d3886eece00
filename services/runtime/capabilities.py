"""Linux capabilities: Docker's default set, and dropping the rest before exec."""

from __future__ import annotations

from services.runtime.syscalls import PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_CAPBSET_DROP, Syscalls

NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
]
BY_NAME = {name: number for number, name in enumerate(NAMES)}

DEFAULT = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})


def last_cap(path: str = "/proc/sys/kernel/cap_last_cap") -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(NAMES) - 1


def to_drop(keep: frozenset[str] | set[str], last: int) -> list[int]:
    """Capability numbers 0..last that are not in ``keep``."""
    kept = {BY_NAME[name] for name in keep}
    return [n for n in range(last + 1) if n not in kept]


def restrict(sys: Syscalls, keep: frozenset[str] | set[str] = DEFAULT, last: int | None = None) -> None:
    """Drop from the bounding set every capability not kept; clear inheritable and ambient.

    Must run while the process still has CAP_SETPCAP, i.e. before setuid.
    """
    for cap in to_drop(keep, last_cap() if last is None else last):
        sys.prctl(PR_CAPBSET_DROP, cap)
    sys.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    sys.clear_inheritable_caps()
