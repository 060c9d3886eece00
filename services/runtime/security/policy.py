"""From a container's ``Security`` (what the user asked for) to what its init applies.

``validate`` runs at create, so a bad request is refused before anything exists:
unknown capabilities, missing or non-device `--device` paths, unusable seccomp
profiles, user namespaces combined with what they cannot share. ``spawn_fields``
runs at each start (and exec) and gives the supervisor plain values: the capability
set to keep, the seccomp profile (``"default"``, ``"unconfined"`` or a profile's
JSON), devices, AppArmor profile, and the user namespace range.
"""

from __future__ import annotations

from berth.runtime.v1 import runtime_pb2
from services.common import errors
from services.runtime import capabilities
from services.runtime.security import apparmor, devices, seccomp, userns

USERNS_MODES = ("", "host", "auto")
SECCOMP_DEFAULT = seccomp.DEFAULT
SECCOMP_UNCONFINED = seccomp.UNCONFINED


def normalize_cap(name: str) -> str:
    return name.strip().upper().removeprefix("CAP_")


def _check_caps(names: list[str], field: str) -> list[str]:
    out = []
    for raw in names:
        name = normalize_cap(raw)
        if name != "ALL" and name not in capabilities.BY_NAME:
            raise errors.InvalidArgument(f'invalid {field}: unknown capability: "{raw}"')
        out.append(name)
    return out


def effective_caps(sec: runtime_pb2.Security) -> frozenset[str]:
    """Docker's rules: --privileged is every capability; else the default set, with
    `--cap-drop` (ALL: none) applied and then `--cap-add` (ALL: every one) on top."""
    every = frozenset(capabilities.NAMES)
    if sec.privileged:
        return every
    add = set(_check_caps(list(sec.cap_add), "CapAdd"))
    drop = set(_check_caps(list(sec.cap_drop), "CapDrop"))
    caps = set() if "ALL" in drop else set(capabilities.DEFAULT) - drop
    caps |= every if "ALL" in add else add
    return frozenset(caps)


def userns_mode(sec: runtime_pb2.Security) -> str:
    """The user namespace mode: the container's own, else the daemon's default."""
    if sec.userns == "host" or sec.privileged:
        return ""
    return sec.userns or userns.default_mode()


def seccomp_profile(sec: runtime_pb2.Security) -> str:
    if sec.privileged or sec.seccomp == SECCOMP_UNCONFINED:
        return SECCOMP_UNCONFINED
    return sec.seccomp or SECCOMP_DEFAULT


def validate(spec: runtime_pb2.ContainerSpec) -> None:
    """InvalidArgument for anything in ``spec.security`` that cannot be honoured."""
    sec = spec.security
    effective_caps(sec)
    for d in sec.devices:
        try:
            devices.check(d.host_path, d.container_path, d.permissions)
        except devices.DeviceError as exc:
            raise errors.InvalidArgument(str(exc)) from None
    profile = seccomp_profile(sec)
    if profile not in (SECCOMP_DEFAULT, SECCOMP_UNCONFINED):
        try:
            seccomp.parse(profile)
        except seccomp.ProfileError as exc:
            raise errors.InvalidArgument(str(exc)) from None
    if sec.userns not in USERNS_MODES:
        raise errors.InvalidArgument(f'invalid --userns mode "{sec.userns}": want "host" or "auto"')
    if sec.userns == "auto" and sec.privileged:
        raise errors.InvalidArgument("privileged mode is incompatible with user namespaces; "
                                     "run it with --userns=host")
    if userns_mode(sec) == "auto" and spec.network.mode == "host":
        raise errors.InvalidArgument("cannot share the host's network namespace when user namespaces are enabled")
    if sec.apparmor and not sec.privileged:
        try:
            apparmor.resolve(sec.apparmor)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc)) from None


def spawn_fields(sec: runtime_pb2.Security, userns_base: int = 0) -> dict:
    """SpawnConfig fields for a start (or, without userns_base, an exec)."""
    try:
        profile = "" if sec.privileged else apparmor.resolve(sec.apparmor)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc)) from None
    return {
        "caps": sorted(effective_caps(sec)),
        "seccomp": seccomp_profile(sec),
        "privileged": sec.privileged,
        "devices": [{"host_path": d.host_path, "container_path": d.container_path,
                     "permissions": d.permissions} for d in sec.devices],
        "apparmor": profile,
        "no_new_privs": not sec.privileged or sec.no_new_privileges,
        "userns_base": userns_base,
        "userns_size": userns.SIZE if userns_base else 0,
    }

