"""AppArmor: applied only where the host has it enabled.

The container's init asks the kernel to switch to a profile at its next execve by
writing ``exec <profile>`` to its own attr file. On hosts without AppArmor (this
module's ``enabled()`` is False) nothing is done, and asking for a named profile is
refused at create rather than silently ignored.
"""

from __future__ import annotations

import os

ENABLED_FILE = "/sys/module/apparmor/parameters/enabled"
PROFILES_FILE = "/sys/kernel/security/apparmor/profiles"
DEFAULT_PROFILE = "berth-default"


def enabled(path: str = ENABLED_FILE) -> bool:
    try:
        with open(path) as f:
            return f.read().strip().upper().startswith("Y")
    except OSError:
        return False


def loaded(name: str, path: str = PROFILES_FILE) -> bool:
    """Is a profile of that name loaded in the kernel?"""
    try:
        with open(path) as f:
            return any(line.split(" (")[0] == name for line in f)
    except OSError:
        return False


def resolve(requested: str) -> str:
    """The profile to apply for `--security-opt apparmor=...` ("" for none).

    "" asks for the default: berth-default where AppArmor is enabled and that profile
    is loaded, else none. "unconfined" is none. A name needs AppArmor (ValueError).
    """
    if requested == "unconfined":
        return ""
    if not requested:
        return DEFAULT_PROFILE if enabled() and loaded(DEFAULT_PROFILE) else ""
    if not enabled():
        raise ValueError(f'apparmor profile "{requested}": AppArmor is not enabled on this host')
    return requested


def apply(profile: str) -> None:
    """Change to ``profile`` at the next execve (runs in the container's init, /proc mounted)."""
    if not profile:
        return
    data = f"exec {profile}".encode()
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return
    raise OSError(f"cannot apply apparmor profile {profile}: no attr/exec in /proc")
