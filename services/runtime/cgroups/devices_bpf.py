"""cgroup v2 device access: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the rules.

v2 has no devices controller; the kernel instead runs the BPF programs attached to a
process's (unified) cgroup and its ancestors at every open/mknod of a device node, and
refuses it unless all of them return 1. The program is assembled here from the same
"TYPE MAJOR:MINOR ACCESS" rules as v1's devices.allow (an allow-list, default deny), loaded
with bpf(2) through ctypes, and attached to the container's cgroup before any process joins.
The cgroup holds the program: it goes when the cgroup is removed, nothing to clean up.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2  # ancestors' programs (systemd's) keep running too: all must allow
NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

# struct bpf_cgroup_dev_ctx { u32 access_type /* access << 16 | type */; u32 major; u32 minor; }
DEV_BLOCK, DEV_CHAR = 1, 2
ACCESS = {"m": 1, "r": 2, "w": 4}
TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}

# eBPF opcodes used (class | size/op | source)
LDX_MEM_W = 0x61   # dst = *(u32 *)(src + off)
MOV64_X = 0xBF     # dst = src
MOV64_K = 0xB7     # dst = imm
AND32_K = 0x54     # dst &= imm (32-bit)
RSH32_K = 0x74     # dst >>= imm (32-bit)
JNE_K = 0x55       # if dst != imm: pc += off
JSET_K = 0x45      # if dst & imm: pc += off
EXIT = 0x95
R0, R1, R2, R3, R4, R5 = range(6)


class BpfError(OSError):
    """The kernel would not load or attach the program (no CONFIG_CGROUP_BPF, a verifier refusal)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def parse_rule(rule: str) -> tuple[int, int, int, int]:
    """'c 1:3 rwm' -> (type, major, minor, access bits); -1 for a wildcard ('*')."""
    kind, numbers, access = rule.split()
    major, minor = numbers.split(":")
    bits = 0
    for ch in access:
        bits |= ACCESS[ch]
    return (TYPES[kind], -1 if major == "*" else int(major), -1 if minor == "*" else int(minor), bits)


def assemble(rules: tuple[str, ...] | list[str]) -> bytes:
    """The program: 1 (allow) at the first rule matching type, major, minor and covering the
    access asked for; 0 (EPERM) when none does."""
    prog = [
        _insn(LDX_MEM_W, R2, R1, 0),   # r2 = access_type
        _insn(MOV64_X, R3, R2),        # r3 = access_type >> 16: the access asked for
        _insn(RSH32_K, R3, imm=16),
        _insn(AND32_K, R2, imm=0xFFFF),  # r2 = the device type
        _insn(LDX_MEM_W, R4, R1, 4),   # r4 = major
        _insn(LDX_MEM_W, R5, R1, 8),   # r5 = minor
    ]
    for rule in rules:
        kind, major, minor, bits = parse_rule(rule)
        tests = [(JNE_K, R2, kind)]
        if bits != 7:
            tests.append((JSET_K, R3, 7 & ~bits))  # asks for an access the rule does not give
        if major >= 0:
            tests.append((JNE_K, R4, major))
        if minor >= 0:
            tests.append((JNE_K, R5, minor))
        size = len(tests) + 2
        for i, (code, reg, imm) in enumerate(tests):
            prog.append(_insn(code, reg, off=size - i - 1, imm=imm))  # no match: on to the next rule
        prog += [_insn(MOV64_K, R0, imm=1), _insn(EXIT)]
    prog += [_insn(MOV64_K, R0, imm=0), _insn(EXIT)]
    return b"".join(prog)


class _LoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _AttachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(0, f"bpf(2): unknown syscall number on {platform.machine()}")
    rc = _libc().syscall(ctypes.c_long(nr), ctypes.c_long(cmd), ctypes.byref(attr),
                         ctypes.c_uint(ctypes.sizeof(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(2) command {cmd}: {os.strerror(err)}")
    return rc


def load(rules: tuple[str, ...] | list[str]) -> int:
    """Load the program for ``rules``; its fd (the caller closes it)."""
    code = assemble(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(4096)
    attr = _LoadAttr(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(code) // 8,
                     insns=ctypes.addressof(insns), license=ctypes.addressof(license_),
                     prog_name=b"berth_devices", expected_attach_type=BPF_CGROUP_DEVICE)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except BpfError:
        # again with the verifier's log, for a message that says why
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        try:
            return _bpf(BPF_PROG_LOAD, attr)
        except BpfError as exc:
            detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise BpfError(exc.errno, f"{exc.strerror} {detail[0]}".strip()) from None


def attach(cgroup_dir: str | os.PathLike, rules: tuple[str, ...] | list[str]) -> None:
    """Load the program for ``rules`` and attach it to the cgroup (before anything joins it)."""
    prog = load(rules)
    try:
        target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(BPF_PROG_ATTACH, _AttachAttr(target_fd=target, attach_bpf_fd=prog,
                                              attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI))
        finally:
            os.close(target)
    finally:
        os.close(prog)


@functools.cache
def supported() -> bool:
    """Whether this kernel loads cgroup device programs (checked once, with a trivial one)."""
    try:
        os.close(load(["c 1:3 rwm"]))
    except OSError:
        return False
    return True
