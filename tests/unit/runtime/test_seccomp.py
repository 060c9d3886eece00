"""Seccomp profiles (parsing, compiling, what the default one lets through), capability
policy, device and --security-opt parsing, and user namespace range allocation."""

from __future__ import annotations

import ctypes
import errno
import json
import os

import pytest

from berth.runtime.v1 import runtime_pb2
from cli import specs
from cli.client import CliError
from services.common import errors
from services.runtime import capabilities
from services.runtime.security import devices, policy, seccomp, userns
from services.runtime.supervisor.spawn import SpawnConfig
from services.runtime.syscalls import PR_SET_NO_NEW_PRIVS, LinuxSyscalls

NR = {"keyctl": 250, "ptrace": 101, "unshare": 272, "clone3": 435, "getpid": 39, "socket": 41, "personality": 135,
      "mount": 165, "setns": 308, "mkdirat": 258}
needs_x86_64 = pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")


# ---- parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("{nope", "invalid JSON"),
    ("[]", "want a JSON object"),
    (json.dumps({"syscalls": []}), "defaultAction is required"),
    (json.dumps({"defaultAction": "SCMP_ACT_MAYBE"}), "unknown action"),
    (json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}), "unknown architecture"),
    (json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}), "no syscall names"),
    (json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "LIKE"}]}]}),
     "unknown op"),
    (json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}),
     "index outside"),
])
def test_bad_profiles_are_refused_with_a_reason(text, message):
    with pytest.raises(seccomp.ProfileError, match=message):
        seccomp.parse(text)


def test_default_profile_parses_and_is_an_allow_list():
    profile = seccomp.parse(seccomp.default_profile_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == errno.EPERM
    allowed = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("includes")
               for n in r["names"]}
    for name in ("read", "execve", "openat", "clone", "socket", "exit_group"):
        assert name in allowed
    for name in ("unshare", "mount", "keyctl", "add_key", "request_key", "ptrace", "setns", "bpf", "io_uring_setup",
                 "userfaultfd", "init_module", "kexec_load"):
        assert name not in allowed


# ---- compiling ----------------------------------------------------------------------------
def test_compiled_once_per_profile_and_capability_set():
    text = seccomp.default_profile_text()
    a = seccomp.compile_bpf(text, capabilities.DEFAULT)
    assert len(a) % 8 == 0 and len(a) > 8 * 100
    assert seccomp.compile_bpf(text, set(capabilities.DEFAULT)) is a          # cached
    more = seccomp.compile_bpf(text, capabilities.DEFAULT | {"SYS_ADMIN"})
    assert more != a                                                            # includes.caps matter
    assert seccomp.bpf_for(seccomp.UNCONFINED, capabilities.DEFAULT) == b""
    assert seccomp.bpf_for(seccomp.DEFAULT, sorted(capabilities.DEFAULT)) is a


def _in_filtered_child(bpf: bytes, calls: list[tuple[str, tuple]]) -> list[int]:
    """Fork, install ``bpf`` (after no_new_privs), make raw syscalls; their errnos (0: success)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            sys_ = LinuxSyscalls()
            sys_.prctl(PR_SET_NO_NEW_PRIVS, 1)
            seccomp.install(sys_, bpf)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            out = []
            for name, args in calls:
                ctypes.set_errno(0)
                rc = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
                out.append(ctypes.get_errno() if rc == -1 else 0)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


@needs_x86_64
def test_the_kernel_enforces_the_default_profile():
    bpf = seccomp.compile_bpf(seccomp.default_profile_text(), capabilities.DEFAULT)
    results = _in_filtered_child(bpf, [
        ("getpid", ()),
        ("keyctl", (0, 0)),                   # KEYCTL_GET_KEYRING_ID
        ("ptrace", (16, os.getpid())),        # PTRACE_ATTACH to another process
        ("unshare", (0x10000000,)),           # CLONE_NEWUSER
        ("clone3", (0, 0)),                   # libc falls back to clone on ENOSYS
        ("socket", (40, 1, 0)),               # AF_VSOCK
        ("personality", (0xFFFFFFFF,)),       # a query: allowed
        ("mount", (0, 0, 0, 0, 0)),
        ("setns", (-1, 0)),
    ])
    assert results[0] == 0
    assert results[1:4] == [errno.EPERM] * 3
    assert results[4] == errno.ENOSYS
    assert results[5] == errno.EPERM
    assert results[6] == 0
    assert results[7:] == [errno.EPERM] * 2


@needs_x86_64
def test_a_custom_profile_is_enforced_too():
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}
    bpf = seccomp.compile_bpf(json.dumps(profile), capabilities.DEFAULT)
    assert _in_filtered_child(bpf, [("mkdirat", (-100, 0, 0o755)), ("getpid", ())]) == [errno.EACCES, 0]


@needs_x86_64
def test_sys_ptrace_opens_ptrace():
    bpf = seccomp.compile_bpf(seccomp.default_profile_text(), capabilities.DEFAULT | {"SYS_PTRACE"})
    # PTRACE_ATTACH to pid 0: the filter lets it through and the kernel answers ESRCH.
    assert _in_filtered_child(bpf, [("ptrace", (16, 0))]) == [errno.ESRCH]


# ---- capabilities, devices, userns policy -----------------------------------------------------
def test_effective_capabilities_follow_dockers_rules():
    S = runtime_pb2.Security
    assert policy.effective_caps(S()) == capabilities.DEFAULT
    assert policy.effective_caps(S(cap_add=["cap_net_admin"])) == capabilities.DEFAULT | {"NET_ADMIN"}
    assert policy.effective_caps(S(cap_drop=["ALL"], cap_add=["CHOWN"])) == {"CHOWN"}
    assert policy.effective_caps(S(cap_add=["ALL"], cap_drop=["NET_RAW"])) == set(capabilities.NAMES)
    assert policy.effective_caps(S(privileged=True)) == set(capabilities.NAMES)
    with pytest.raises(errors.InvalidArgument, match='unknown capability: "CAP_BOGUS"'):
        policy.effective_caps(S(cap_add=["CAP_BOGUS"]))


def test_spawn_fields_for_privileged_and_default():
    d = policy.spawn_fields(runtime_pb2.Security())
    assert d["seccomp"] == seccomp.DEFAULT and d["no_new_privs"] and not d["privileged"]
    p = policy.spawn_fields(runtime_pb2.Security(privileged=True))
    assert p["seccomp"] == seccomp.UNCONFINED and not p["no_new_privs"]
    # A config from before confinement existed still gets the default confinement.
    cfg = SpawnConfig.from_dict({"id": "x", "args": ["true"], "env": [], "rootfs": {}, "rootfs_dir": "",
                                 "state_dir": "", "log_path": ""})
    assert cfg.seccomp == seccomp.DEFAULT and cfg.caps is None and cfg.no_new_privs


def test_device_checks():
    assert devices.check("/dev/null") == ("/dev/null", "/dev/null", "rwm")
    assert devices.check("/dev/null", "/dev/x", "r") == ("/dev/null", "/dev/x", "r")
    for args, message in ((("/dev/berth-nope",), "no such file"), (("/etc/passwd",), "not a device"),
                          (("/dev/null", "rel"), "invalid device path"), (("/dev/null", "/dev/x", "rwz"), "mode")):
        with pytest.raises(devices.DeviceError, match=message):
            devices.check(*args)


def test_userns_allocation_skips_used_and_reserved_ranges():
    assert userns.allocate(set(), 100000) == 100000
    assert userns.allocate({100000}, 100000) == 165536
    assert userns.allocate(set(), 100000, reserved=[(100000, 65536), (170000, 10)]) == 231072
    assert userns.allocate({100000, 231072}, 100000, reserved=[(165536, 65536)]) == 296608
    with pytest.raises(userns.UsernsError):
        userns.allocate(set(), 2**32 - 1000)
    assert userns.userns_uid_map(165536) == "0 165536 65536" and userns.userns_uid_map(0) == ""
    assert userns.first_id({"BERTH_USERNS_BASE": "200000"}) == 200000
    assert userns.default_mode({"BERTH_USERNS_DEFAULT": "auto"}) == "auto"


# ---- CLI flag parsing -------------------------------------------------------------------------
def test_cli_device_and_security_opt_parsing(tmp_path):
    assert specs.parse_device("/dev/fuse") == {"host_path": "/dev/fuse", "container_path": "", "permissions": ""}
    assert specs.parse_device("/dev/fuse:r") == {"host_path": "/dev/fuse", "container_path": "", "permissions": "r"}
    assert specs.parse_device("/dev/a:/dev/b:rw")["container_path"] == "/dev/b"
    with pytest.raises(CliError):
        specs.parse_device("/dev/a:/dev/b:xyz")
    assert specs.parse_security_opt("no-new-privileges") == ("no-new-privileges", "true")
    assert specs.parse_security_opt("seccomp:unconfined") == ("seccomp", "unconfined")
    with pytest.raises(CliError) as exc:
        specs.parse_security_opt("bogus=1")
    assert exc.value.exit_code == 125
    sec = runtime_pb2.Security()
    profile = tmp_path / "p.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    specs.apply_security(sec, privileged=False, cap_add=["NET_ADMIN,SYS_TIME"], cap_drop=[], device=[],
                         security_opt=[f"seccomp={profile}"], userns="auto")
    assert list(sec.cap_add) == ["NET_ADMIN", "SYS_TIME"] and sec.userns == "auto"
    assert json.loads(sec.seccomp) == {"defaultAction": "SCMP_ACT_ALLOW"}
    with pytest.raises(CliError, match="decoding seccomp profile"):
        bad = tmp_path / "bad.json"
        bad.write_text("{")
        specs.apply_security(runtime_pb2.Security(), privileged=False, cap_add=[], cap_drop=[], device=[],
                             security_opt=[f"seccomp={bad}"], userns="")


# ---- the init's root filesystem sequence ------------------------------------------------------
def _build(tmp_path, monkeypatch, **kw) -> list[tuple]:
    from services.runtime.supervisor.spawn import build_rootfs

    copied = []  # no real host device nodes in a temp dir
    monkeypatch.setattr(devices, "create_host_devices", copied.append)
    from services.runtime.syscalls import RecordingSyscalls

    root = tmp_path / ("privileged" if kw.get("privileged") else "default")
    root.mkdir()
    fake = RecordingSyscalls()
    cfg = SpawnConfig(id="x", args=["true"], env=[], rootfs={"type": "overlay", "lowerdirs": ["/l"]},
                      rootfs_dir=str(root), state_dir="", log_path="", **kw)
    cwd = os.getcwd()
    try:
        build_rootfs(fake, cfg)
    finally:
        os.chdir(cwd)
    assert copied == ([str(root)] if kw.get("privileged") else [])
    return [c for c in fake.calls if c[0] == "mount"]


def test_privileged_skips_masked_and_readonly_paths(tmp_path, monkeypatch):
    default = {c[2] for c in _build(tmp_path, monkeypatch)}
    assert "/proc/keys" in default and "/proc/sys" in default
    privileged = {c[2] for c in _build(tmp_path, monkeypatch, privileged=True)}
    assert "/proc/keys" not in privileged and "/proc/sys" not in privileged
    assert str(tmp_path / "privileged" / "proc") in privileged  # the rest of the sequence is the same
