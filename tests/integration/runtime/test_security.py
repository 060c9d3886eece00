"""Confinement proven from inside containers: seccomp, capabilities, devices, privileged, user namespaces."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from berth.runtime.v1 import network_pb2, runtime_pb2, storage_pb2
from services.runtime import capabilities
from services.runtime.security import apparmor

Security = runtime_pb2.Security


def _host_caps() -> int:
    """The supervisor's own bounding set: --privileged gets all of it (a sandboxed host may lack some)."""
    return int(_status(Path("/proc/self/status").read_bytes(), "CapBnd"), 16)


def _status(out: bytes, key: str) -> str:
    for line in out.decode().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{key} not in {out!r}")


# ---- seccomp ------------------------------------------------------------------------------
def test_default_profile_is_on_with_no_new_privs(rt):
    code, out, _, _ = rt.run("cat", "/proc/self/status")
    assert code == 0
    assert _status(out, "Seccomp") == "2"
    assert _status(out, "NoNewPrivs") == "1"
    assert int(_status(out, "CapEff"), 16) == sum(1 << capabilities.BY_NAME[c] for c in capabilities.DEFAULT)


def test_default_profile_blocks_new_namespaces(rt):
    # A user namespace needs no capability: only the filter stands in the way.
    code, _, err, _ = rt.run("unshare", "-U", "true")
    assert code != 0
    assert b"Operation not permitted" in err
    code, _, _, _ = rt.run("unshare", "-U", "true", security=Security(seccomp="unconfined"))
    assert code == 0


def test_default_profile_blocks_mount_even_with_sys_admin_filtered_args(rt):
    code, _, err, _ = rt.run("mount", "-t", "tmpfs", "none", "/tmp")
    assert code != 0 and b"permission denied" in err
    # CAP_SYS_ADMIN opens mount in the default profile, as in Docker's.
    code, out, err, _ = rt.run("sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt && grep -c ' /mnt ' /proc/mounts",
                               security=Security(cap_add=["SYS_ADMIN"]))
    assert code == 0, err
    assert out.strip() == b"1"


def test_default_profile_refuses_device_nodes_but_not_fifos(rt):
    # Where the devices cgroup is enforced (v1) mknod succeeds, as in Docker, and the open fails.
    code, out, err, _ = rt.run("sh", "-c",
                               "mkfifo /tmp/fifo && echo fifo-ok; mknod /tmp/sda b 8 0 && head -c1 /tmp/sda")
    assert b"fifo-ok" in out
    assert code != 0 and b"Operation not permitted" in err


def test_custom_profile_denies_mkdir(rt, tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    code, out, err, _ = rt.run("sh", "-c", "touch /tmp/f && echo touch-ok; mkdir /tmp/d",
                               security=Security(seccomp=json.dumps(profile)))
    assert b"touch-ok" in out
    assert code != 0 and b"Permission denied" in err  # errnoRet 13 = EACCES


def test_invalid_profile_is_refused_at_create(rt):
    for bad in ("{not json", json.dumps({"syscalls": []}),
                json.dumps({"defaultAction": "SCMP_ACT_NOPE"}),
                json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "X"}]})):
        with pytest.raises(grpc.RpcError) as exc:
            rt.create("true", security=Security(seccomp=bad))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "seccomp profile" in exc.value.details()


# ---- capabilities -------------------------------------------------------------------------
def test_cap_add_net_admin_lets_ip_change_links(rt):
    code, _, err, _ = rt.run("ip", "link", "set", "lo", "mtu", "1400")
    assert code != 0 and b"Operation not permitted" in err
    code, out, err, _ = rt.run("sh", "-c", "ip link set lo mtu 1400 && cat /sys/class/net/lo/mtu",
                               security=Security(cap_add=["NET_ADMIN"]))
    assert code == 0, err
    assert out.strip() == b"1400"


def test_cap_drop(rt):
    code, _, err, _ = rt.run("sh", "-c", "touch /tmp/f && chown 65534 /tmp/f", security=Security(cap_drop=["CHOWN"]))
    assert code != 0 and b"Operation not permitted" in err
    code, out, _, _ = rt.run("cat", "/proc/self/status", security=Security(cap_drop=["ALL"], cap_add=["KILL"]))
    assert int(_status(out, "CapEff"), 16) == 1 << capabilities.BY_NAME["KILL"]


def test_unknown_capability_is_refused(rt):
    for sec in (Security(cap_add=["CAP_NOPE"]), Security(cap_drop=["BOGUS"])):
        with pytest.raises(grpc.RpcError) as exc:
            rt.create("true", security=sec)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown capability" in exc.value.details()


# ---- devices and --privileged ---------------------------------------------------------------
def test_device_passthrough(rt):
    sec = Security(devices=[runtime_pb2.Device(host_path="/dev/null", container_path="/dev/mynull")])
    code, out, err, _ = rt.run("sh", "-c", "echo hi > /dev/mynull && cat /dev/mynull | wc -c && stat -c '%t,%T %F' "
                               "/dev/mynull", security=sec)
    assert code == 0, err
    assert out.decode().split("\n")[:2] == ["0", "1,3 character special file"]


def test_device_must_exist_and_be_a_device(rt):
    for path in ("/dev/berth-no-such-device", "/etc/hostname"):
        with pytest.raises(grpc.RpcError) as exc:
            rt.create("true", security=Security(devices=[runtime_pb2.Device(host_path=path)]))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert path in exc.value.details()


def test_privileged(rt):
    script = ("mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted; wc -c < /proc/timer_list; "
              "grep -c ' /proc/keys ' /proc/mounts; ls /dev | wc -l; cat /proc/self/status")
    code, out, err, _ = rt.run("sh", "-c", script, security=Security(privileged=True))
    assert code == 0, err
    lines = out.decode().split("\n")
    assert _status(out, "Seccomp") == "0"
    assert int(_status(out, "CapEff"), 16) == _host_caps()
    assert lines[0] == "mounted"
    assert int(lines[1]) > 0       # not masked
    assert lines[2] == "0"         # nothing mounted over /proc/keys
    host_devices = sum(1 for p in Path("/dev").iterdir() if p.is_char_device() or p.is_block_device())
    assert int(lines[3]) >= min(host_devices, 20)
    code, out, _, _ = rt.run("sh", "-c", "wc -c < /proc/timer_list; ls /dev | wc -l")
    assert out.decode().split("\n")[0] == "0"  # the default masks it


# ---- AppArmor -----------------------------------------------------------------------------
def test_apparmor_profile_applied_where_enabled(rt):
    if not apparmor.enabled():
        with pytest.raises(grpc.RpcError) as exc:
            rt.create("true", security=Security(apparmor="berth-test"))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        pytest.skip("AppArmor is not enabled on this host")
    code, out, _, _ = rt.run("cat", "/proc/self/attr/current", security=Security(apparmor="unconfined"))
    assert code == 0 and b"unconfined" in out


# ---- user namespaces ------------------------------------------------------------------------
@pytest.fixture
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="berth-userns-"))
    d.chmod(0o777)
    (d / "hostfile").write_text("host root's\n")
    (d / "hostfile").chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_userns_auto_maps_root_to_a_private_range(rt, shared_dir):
    bind = storage_pb2.MountSpec(type="bind", source=str(shared_dir), target="/shared")
    script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /shared/made-inside /made-in-rootfs; "
              "stat -c %u /made-in-rootfs /bin/busybox; echo x >> /shared/hostfile || echo cannot-write-host-file")
    code, out, err, c = rt.run("sh", "-c", script, security=Security(userns="auto"), mounts=[bind])
    assert code == 0, (err, c.error)
    base = int(c.userns_uid_map.split()[1])
    assert c.userns_uid_map == f"0 {base} 65536" and base > 0
    lines = out.decode().split("\n")
    assert lines[0].split() == ["0", str(base), "65536"]
    assert lines[1].split() == ["0", str(base), "65536"]
    assert lines[2:5] == ["0", "0", "0"]          # root inside; image files owned by root inside
    assert "cannot-write-host-file" in lines
    assert b"Permission denied" in err
    # On the host: what container root made in the bind mount belongs to the range's first uid...
    st = os.stat(shared_dir / "made-inside")
    assert (st.st_uid, st.st_gid) == (base, base)
    assert (shared_dir / "hostfile").read_text() == "host root's\n"
    # ... and in the snapshot (an idmapped layer) it is stored as 0, like any image file.
    upper = Path(c.spec.rootfs.upperdir)
    assert os.stat(upper / "made-in-rootfs").st_uid == 0


def test_userns_root_cannot_do_host_root_things(rt):
    sec = Security(userns="auto", cap_add=["ALL"], seccomp="unconfined")
    script = ("mount -t tmpfs none /tmp 2>&1 || echo no-mount; echo 1 > /proc/sys/kernel/domainname 2>&1 || "
              "echo no-sysctl; mknod /tmp/sda b 8 0 2>&1 && (head -c1 /tmp/sda >/dev/null 2>&1 || echo no-disk)")
    code, out, _, _ = rt.run("sh", "-c", script, security=sec)
    text = out.decode()
    assert "no-mount" in text and "no-sysctl" in text
    assert "no-disk" in text or "Operation not permitted" in text


def test_userns_ranges_are_private_and_reused(rt):
    a = rt.create("sleep", "1", security=Security(userns="auto"))
    b = rt.create("true", security=Security(userns="auto"))
    base_a, base_b = (int(x.userns_uid_map.split()[1]) for x in (a, b))
    assert abs(base_a - base_b) >= 65536
    rt.stub.Remove(runtime_pb2.RemoveRequest(id=b.id, force=True))
    c = rt.create("true", security=Security(userns="auto"))
    assert c.userns_uid_map == b.userns_uid_map  # the freed range comes back
    plain = rt.create("true")
    assert plain.userns_uid_map == ""


def test_userns_with_host_network_is_refused(rt):
    with pytest.raises(grpc.RpcError) as exc:
        rt.create("true", security=Security(userns="auto"), network=network_pb2.NetworkConfig(mode="host"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_userns_container_keeps_low_ports_and_dev(rt):
    code, out, err, _ = rt.run("sh", "-c", "httpd -p 80 && echo bound; echo ok > /dev/null && echo devnull; "
                               "stat -c %u /dev/null", security=Security(userns="auto"))
    assert code == 0, err
    assert out.decode().split("\n")[:3] == ["bound", "devnull", "0"]

