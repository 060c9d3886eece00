"""Seccomp profiles: Docker's JSON format, compiled to BPF with libseccomp, installed before exec.

A profile is parsed and checked here (``parse``), compiled once per distinct
(profile, capability set) pair in the supervisor (``compile_bpf``, cached), and the
resulting BPF program is installed by the container's init right before ``execve``
(``install``), after no_new_privs. The forked child never calls libseccomp: it only
hands the ready bytes to ``prctl(PR_SET_SECCOMP)``, which is cheap and allocation-free.

The capability set matters because a profile's rules may be conditional on it
(``includes.caps`` / ``excludes.caps``): the default profile allows ``mount`` and
``unshare`` only to a container that was given CAP_SYS_ADMIN, as Docker's does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import platform
from pathlib import Path

from services.runtime.syscalls import Syscalls

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

DEFAULT_PROFILE_PATH = Path(__file__).with_name("default_seccomp.json")

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ACT_TRACE = 0x7FF00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000

ACTIONS = {
    "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS, "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
    "SCMP_ACT_ERRNO": SCMP_ACT_ERRNO, "SCMP_ACT_TRACE": SCMP_ACT_TRACE, "SCMP_ACT_LOG": SCMP_ACT_LOG,
    "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# Docker's architecture names -> libseccomp's.
ARCHES = {
    "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32", "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips", "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32", "SCMP_ARCH_MIPSEL": "mipsel", "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32", "SCMP_ARCH_PPC": "ppc", "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_S390": "s390", "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_RISCV64": "riscv64",
}
# platform.machine() -> the Go names Docker's profiles use in includes/excludes.arches.
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "i686": "386"}
NATIVE_SCMP = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "armv7l": "SCMP_ARCH_ARM",
               "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}
MAX_PROFILE_BYTES = 1 << 20
SCMP_FLTATR_CTL_OPTIMIZE = 8
DEFAULT = "default"        # a SpawnConfig's seccomp: the built-in profile
# ... the built-in profile with mknod of device nodes allowed: only set by the runtime for a
# container whose devices cgroup is enforced (never from a request: validate refuses it).
DEFAULT_WITH_MKNOD = "default+mknod"
MKNOD_SYSCALLS = ("mknod", "mknodat")
UNCONFINED = "unconfined"  # ... no filter; anything else is a profile's JSON


class ProfileError(ValueError):
    """A profile that cannot be used; the message names what is wrong in it."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _action(name: str, errno_ret: int | None, where: str) -> int:
    if name not in ACTIONS:
        raise ProfileError(f"seccomp profile: unknown action {name!r} in {where}")
    value = ACTIONS[name]
    if value == SCMP_ACT_ERRNO:
        return value | ((1 if errno_ret is None else int(errno_ret)) & 0xFFFF)
    if value == SCMP_ACT_TRACE:
        return value | ((int(errno_ret or 0)) & 0xFFFF)
    return value


def parse(text: str) -> dict:
    """Check a profile's JSON and structure; returns it as a dict. ProfileError otherwise."""
    if len(text) > MAX_PROFILE_BYTES:
        raise ProfileError("seccomp profile: larger than 1 MiB")
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise ProfileError(f"seccomp profile: invalid JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise ProfileError("seccomp profile: want a JSON object")
    default = profile.get("defaultAction")
    if not isinstance(default, str):
        raise ProfileError("seccomp profile: defaultAction is required")
    _action(default, profile.get("defaultErrnoRet"), "defaultAction")
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if not isinstance(entry, dict):
            raise ProfileError("seccomp profile: archMap entries must be objects")
        arches += [entry.get("architecture", "")] + list(entry.get("subArchitectures") or [])
    for arch in arches:
        if arch not in ARCHES:
            raise ProfileError(f"seccomp profile: unknown architecture {arch!r}")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ProfileError("seccomp profile: syscalls must be a list")
    for i, rule in enumerate(syscalls):
        where = f"syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ProfileError(f"seccomp profile: {where} must be an object")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ProfileError(f"seccomp profile: {where} has no syscall names")
        _action(str(rule.get("action", "")), rule.get("errnoRet"), where)
        for arg in rule.get("args") or []:
            if not isinstance(arg, dict) or arg.get("op") not in OPERATORS:
                raise ProfileError(f"seccomp profile: {where} has an argument with an unknown op")
            if not 0 <= int(arg.get("index", -1)) <= 5:
                raise ProfileError(f"seccomp profile: {where} has an argument index outside 0..5")
    return profile


@functools.cache
def default_profile_text() -> str:
    return DEFAULT_PROFILE_PATH.read_text()


@functools.cache
def default_with_mknod_text() -> str:
    """The default profile with its mknod/mknodat rules (regular files, FIFOs and sockets
    only) replaced by an unconditional allow, as in Docker's profile.

    Safe only where the devices cgroup refuses opening nodes off the container's allow-list:
    a node made for a host disk is then useless inside (EPERM at open). CAP_MKNOD is still
    needed, and a user namespace refuses device nodes whatever the filter says.
    """
    profile = json.loads(default_profile_text())
    rules = [r for r in profile["syscalls"] if not set(r.get("names") or []) & set(MKNOD_SYSCALLS)]
    rules.append({"comment": "mknod of any node: the devices cgroup decides what may be opened.",
                  "names": list(MKNOD_SYSCALLS), "action": "SCMP_ACT_ALLOW"})
    profile["syscalls"] = rules
    return json.dumps(profile)


def _applies(rule: dict, caps: frozenset[str], arch: str) -> bool:
    """Docker's includes/excludes: a rule may depend on capabilities and architectures."""
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not all(c.upper().removeprefix("CAP_") in caps for c in inc["caps"]):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if exc.get("caps") and any(c.upper().removeprefix("CAP_") in caps for c in exc["caps"]):
        return False
    return not (exc.get("arches") and arch in exc["arches"])


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise ProfileError(f"seccomp: libseccomp is not installed ({exc})") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def _profile_arches(profile: dict, machine: str) -> list[str]:
    """The native architecture first, then its companions (x86 and x32 beside x86_64)."""
    native = NATIVE_SCMP.get(machine, "")
    wanted = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            wanted += [entry["architecture"], *(entry.get("subArchitectures") or [])]
    return [ARCHES[a] for a in dict.fromkeys(wanted) if a != native]


def compile_bpf(text: str, caps: frozenset[str] | set[str], machine: str | None = None) -> bytes:
    """The BPF program (struct sock_filter[]) for a profile and a capability set, cached."""
    return _compile_cached(text, frozenset(caps), machine or platform.machine())


@functools.lru_cache(maxsize=32)
def _compile_cached(text: str, caps: frozenset[str], machine: str) -> bytes:
    profile = parse(text)
    lib = _lib()
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"), "defaultAction")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ProfileError("seccomp: seccomp_init failed")
    try:
        # A binary tree of syscall numbers instead of a linear list: the kernel evaluates
        # (and, at attach, pre-evaluates for its per-syscall cache) far fewer instructions.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        for arch in _profile_arches(profile, machine):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            if token:
                lib.seccomp_arch_add(ctx, token)  # -EEXIST for the native one: fine
        go_arch = GO_ARCH.get(machine, machine)
        for rule in profile.get("syscalls") or []:
            if not _applies(rule, caps, go_arch):
                continue
            action = _action(rule["action"], rule.get("errnoRet"), "a rule")
            if action == default:
                continue  # libseccomp refuses rules that repeat the default action
            args = rule.get("args") or []
            cmps = (_ArgCmp * max(1, len(args)))()
            for i, arg in enumerate(args):
                cmps[i] = _ArgCmp(int(arg["index"]), OPERATORS[arg["op"]], int(arg.get("value", 0)) & (2**64 - 1),
                                  int(arg.get("valueTwo", 0)) & (2**64 - 1))
            for name in rule.get("names") or [rule.get("name")]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: a syscall this libseccomp does not know; skip, like Docker
                    continue
                rc = lib.seccomp_rule_add_array(ctx, action, nr, len(args), cmps)
                if rc < 0 and not args:
                    raise ProfileError(f"seccomp: cannot add a rule for {name}: {os.strerror(-rc)}")
                # A rule with argument checks that an architecture cannot express (a
                # multiplexed socketcall) is left out: the syscall then gets the default action.
        fd = os.memfd_create("berth-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise ProfileError(f"seccomp: cannot export the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def install(sys: Syscalls, bpf: bytes) -> None:
    """Load a compiled filter into this process (and what it execs). no_new_privs first.

    Runs in the container's init between fork and execve: no libseccomp, no allocation
    beyond the two small buffers, and only prctl.
    """
    if not bpf or len(bpf) % 8:
        raise ValueError("seccomp: an empty or malformed BPF program")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    sys.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def bpf_for(profile: str, caps: list[str] | frozenset[str]) -> bytes:
    """The compiled filter for a SpawnConfig's ``seccomp`` value (b"" for unconfined).

    Called in the supervisor before forking; compilation is cached per profile and
    capability set, so a busy host compiles the default profile once.
    """
    if profile == UNCONFINED:
        return b""
    if profile == DEFAULT_WITH_MKNOD:
        return compile_bpf(default_with_mknod_text(), frozenset(caps))
    text = default_profile_text() if profile in (DEFAULT, "") else profile
    return compile_bpf(text, frozenset(caps))
