"""Confinement flags end to end: --privileged, --cap-add/--cap-drop, --device, --security-opt, --userns."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.assertions import ok, one_line_error

pytestmark = pytest.mark.usefixtures("clean_host")


def test_default_confinement_and_unconfined(services):
    r = services.berth("run", "--rm", "busybox", "unshare", "-U", "true")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    ok(services.berth("run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "unshare", "-U", "true"))


def test_custom_seccomp_profile_file(services, tmp_path):
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                   "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    r = services.berth("run", "--rm", "--security-opt", f"seccomp={profile}", "busybox", "mkdir", "/tmp/d")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    one_line_error(services.berth("run", "--rm", "--security-opt", f"seccomp={bad}", "busybox", "true"), 125,
                   "seccomp profile")
    one_line_error(services.berth("run", "--rm", "--security-opt", "seccomp=/no/such.json", "busybox", "true"), 125,
                   "No such file")
    one_line_error(services.berth("run", "--rm", "--security-opt", "nonsense", "busybox", "true"), 125,
                   "--security-opt")


def test_cap_add_and_unknown_caps(services):
    r = services.berth("run", "--rm", "busybox", "ip", "link", "set", "lo", "mtu", "1400")
    assert r.returncode != 0
    r = ok(services.berth("run", "--rm", "--cap-add", "NET_ADMIN", "busybox", "sh", "-c",
                          "ip link set lo mtu 1400 && cat /sys/class/net/lo/mtu"))
    assert r.stdout == "1400\n"
    one_line_error(services.berth("run", "--rm", "--cap-add", "CAP_NOPE", "busybox", "true"), 125,
                   "unknown capability")
    one_line_error(services.berth("create", "--cap-drop", "WHATEVER", "busybox", "true"), 125, "unknown capability")
    assert services.berth("ps", "-aq").stdout == ""


def test_device_flag(services):
    r = ok(services.berth("run", "--rm", "--device", "/dev/zero:/dev/z", "busybox", "sh", "-c",
                          "head -c 3 /dev/z | od -An -tx1"))
    assert r.stdout.split() == ["00", "00", "00"]
    one_line_error(services.berth("run", "--rm", "--device", "/dev/berth-nope", "busybox", "true"), 125,
                   "no such file or directory")
    assert services.berth("ps", "-aq").stdout == ""


def test_devices_cgroup(services):
    """A node made for a host disk cannot be opened; a `--device` keeps its permissions
    (cgroup v1's devices controller); --privileged opens anything."""
    r = services.berth("run", "--rm", "busybox", "sh", "-c", "mknod /tmp/sda b 8 0; head -c1 /tmp/sda")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    if not Path("/dev/loop0").is_block_device():
        pytest.skip("no /dev/loop0 on this host")
    r = ok(services.berth("run", "--rm", "--privileged", "busybox", "sh", "-c",
                          "mknod /tmp/loop b 7 0 && head -c1 /tmp/loop >/dev/null && echo open-ok"))
    assert r.stdout == "open-ok\n"
    if not Path("/sys/fs/cgroup/devices/devices.list").exists():
        pytest.skip("no cgroup v1 devices controller: --device permissions are not enforced")
    r = services.berth("run", "--rm", "--device", "/dev/loop0:/dev/myloop:r", "busybox", "sh", "-c",
                       "head -c1 /dev/myloop && echo read-ok; echo x > /dev/myloop")
    assert r.returncode == 1 and r.stdout == "read-ok\n" and "Operation not permitted" in r.stderr


def test_privileged_and_inspect(services):
    r = ok(services.berth("run", "--rm", "--privileged", "busybox", "sh", "-c",
                          "mount -t tmpfs none /tmp && grep -c ' /tmp tmpfs' /proc/mounts"))
    assert r.stdout == "1\n"
    r = ok(services.berth("create", "--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD", "--device", "/dev/null",
                          "--security-opt", "seccomp=unconfined", "--userns", "auto", "busybox", "true"))
    cid = r.stdout.strip()
    try:
        host = json.loads(ok(services.berth("inspect", cid)).stdout)[0]["HostConfig"]
        assert host["CapAdd"] == ["NET_ADMIN"] and host["CapDrop"] == ["MKNOD"]
        assert host["SecurityOpt"] == ["seccomp=unconfined"] and host["UsernsMode"] == "auto"
        assert host["Privileged"] is False
        assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/null",
                                    "CgroupPermissions": "rwm"}]
    finally:
        services.berth("rm", "-f", cid)


def test_exec_gets_the_containers_filter_and_user_namespace(services):
    cid = ok(services.berth("run", "-d", "--userns", "auto", "busybox", "sleep", "30")).stdout.strip()
    try:
        r = ok(services.berth("exec", cid, "sh", "-c", "cat /proc/self/uid_map; grep Seccomp: /proc/self/status"))
        fields = r.stdout.split()
        assert fields[0] == "0" and int(fields[1]) >= 65536 and fields[2] == "65536"
        assert fields[3:5] == ["Seccomp:", "2"]
        r = services.berth("exec", cid, "unshare", "-U", "true")
        assert r.returncode == 1 and "Operation not permitted" in r.stderr
    finally:
        services.berth("rm", "-f", cid)


def test_userns_bind_mount_owner(services):
    d = Path(tempfile.mkdtemp(prefix="berth-e2e-userns-"))
    try:
        d.chmod(0o777)
        r = ok(services.berth("run", "--rm", "--userns", "auto", "-v", f"{d}:/data", "busybox", "sh", "-c",
                              "cat /proc/self/uid_map; touch /data/f; stat -c %u /data/f"))
        fields = r.stdout.split()
        base = int(fields[1])
        assert fields[0] == "0" and fields[2] == "65536" and fields[3] == "0"
        assert os.stat(d / "f").st_uid == base
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_userns_named_volume_is_writable(services):
    ok(services.berth("run", "--rm", "--userns", "auto", "-v", "berth-e2e-userns-vol:/data", "busybox", "sh", "-c",
                      "echo kept > /data/f && cat /data/f"))
    r = ok(services.berth("run", "--rm", "-v", "berth-e2e-userns-vol:/data", "busybox", "cat", "/data/f"))
    assert r.stdout == "kept\n"
    services.berth("volume", "rm", "berth-e2e-userns-vol")


def test_bind_mounting_the_host_root_is_read_only_when_asked(services):
    r = services.berth("run", "--rm", "-v", "/:/hostroot:ro", "busybox", "sh", "-c",
                       "ls /hostroot/etc/hostname && touch /hostroot/berth-must-not-exist")
    assert r.returncode == 1 and "Read-only file system" in r.stderr
    assert not os.path.exists("/berth-must-not-exist")


def test_cp_into_and_out_of_a_running_userns_container(services, tmp_path):
    cid = ok(services.berth("run", "-d", "--userns", "auto", "busybox", "sleep", "30")).stdout.strip()
    try:
        src = tmp_path / "f.txt"
        src.write_text("into userns\n")
        ok(services.berth("cp", str(src), f"{cid}:/tmp/"))
        r = ok(services.berth("exec", cid, "sh", "-c", "cat /tmp/f.txt; stat -c %u /tmp/f.txt"))
        assert r.stdout == "into userns\n0\n"  # the container's root owns it, as with Docker
        ok(services.berth("cp", f"{cid}:/tmp/f.txt", str(tmp_path / "back.txt")))
        assert (tmp_path / "back.txt").read_text() == "into userns\n"
    finally:
        services.berth("rm", "-f", cid)
