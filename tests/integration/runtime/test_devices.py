"""The devices cgroup, proven from inside containers: what a container may open.

A default container may only open Docker's default nodes (null, zero, full, random,
urandom, tty, console, ptmx, its ptys, tun) and its `--device`s, with their permissions;
a node it makes itself for anything else is refused at open with EPERM. `--privileged`
opens everything. On cgroup v2 (no devices controller; no BPF device program yet) the
default seccomp profile refuses mknod of device nodes instead, so the node never exists.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import secrets
import stat
import time
from pathlib import Path

import pytest

from berth.runtime.v1 import runtime_pb2
from services.runtime.cgroups import DeviceAccess, Limits, detect, devices_bpf
from services.runtime.cgroups.v2 import V2Manager
from services.runtime.security.devices import cgroup_access

Security = runtime_pb2.Security
CGROUP_ROOT = Path("/sys/fs/cgroup")
# loop0 (block 7:0) exists on most hosts; without one the kernel answers ENXIO, not EPERM.
LOOP0 = Path("/dev/loop0")


def _devices_cgroup() -> bool:
    return detect(CGROUP_ROOT) == "v1" and (CGROUP_ROOT / "devices" / "devices.list").exists()


needs_v1_devices = pytest.mark.skipif(not _devices_cgroup(), reason="no cgroup v1 devices controller on this host")


@needs_v1_devices
def test_default_container_makes_nodes_but_cannot_open_them(rt):
    script = ("mknod /tmp/blk b 7 0 && echo mknod-ok; head -c1 /tmp/blk; echo head=$?; "
              "mknod /tmp/kmsg c 1 11 && echo mknod2-ok; head -c1 /tmp/kmsg; echo head2=$?; "
              "mkfifo /tmp/fifo && echo fifo-ok")
    code, out, err, _ = rt.run("sh", "-c", script)
    text = out.decode()
    assert code == 0, err
    # mknod is allowed again (as in Docker): the devices cgroup, not seccomp, guards the open
    assert "mknod-ok" in text and "mknod2-ok" in text and "fifo-ok" in text, (text, err)
    assert "head=1" in text and "head2=1" in text, text
    assert err.count(b"Operation not permitted") == 2, err


def test_default_container_cannot_use_a_host_disk_node(rt):
    """Whatever the host's cgroup version: no way to read a block device from a default container."""
    code, out, err, _ = rt.run("sh", "-c", "mknod /tmp/sda b 8 0; head -c1 /tmp/sda && echo read-ok")
    assert code != 0 and b"read-ok" not in out
    assert b"Operation not permitted" in err, err


@needs_v1_devices
def test_device_permissions_are_enforced(rt):
    if not LOOP0.is_block_device():
        pytest.skip("no /dev/loop0 on this host")
    sec = Security(devices=[runtime_pb2.Device(host_path=str(LOOP0), container_path="/dev/myloop",
                                               permissions="r")])
    script = "head -c1 /dev/myloop && echo read-ok; echo x > /dev/myloop && echo write-ok"
    code, out, err, _ = rt.run("sh", "-c", script, security=sec)
    text = out.decode()
    assert "read-ok" in text and "write-ok" not in text, (text, err)
    assert b"Operation not permitted" in err, err


@needs_v1_devices
def test_device_permissions_add_to_the_defaults(rt):
    """As in Docker, rules for one major:minor add up: /dev/null (1:3) is rwm by default, so
    `--device /dev/null:/dev/mynull:r` cannot take write away (the cgroup knows numbers, not paths)."""
    sec = Security(devices=[runtime_pb2.Device(host_path="/dev/null", container_path="/dev/mynull",
                                               permissions="r")])
    code, out, err, _ = rt.run("sh", "-c", "cat /dev/mynull && echo read-ok; echo x > /dev/mynull && echo write-ok",
                               security=sec)
    assert code == 0, err
    assert out.decode().split("\n")[:2] == ["read-ok", "write-ok"]


@needs_v1_devices
def test_device_with_full_permissions_and_an_unlisted_device(rt):
    if not LOOP0.is_block_device():
        pytest.skip("no /dev/loop0 on this host")
    script = "head -c1 /dev/loop0 >/dev/null && echo loop-ok; head -c1 /dev/zero | wc -c"
    # not given: the container has no /dev/loop0 at all; made by hand, it cannot be opened
    code, out, err, _ = rt.run("sh", "-c", "mknod /dev/loop0 b 7 0 && " + script)
    assert b"loop-ok" not in out and b"Operation not permitted" in err, (out, err)
    code, out, err, _ = rt.run("sh", "-c", script,
                               security=Security(devices=[runtime_pb2.Device(host_path=str(LOOP0))]))
    assert code == 0, err
    assert out.decode().split("\n")[:2] == ["loop-ok", "1"]


def test_privileged_opens_any_node(rt):
    if not LOOP0.is_block_device():
        pytest.skip("no /dev/loop0 on this host")
    code, out, err, _ = rt.run("sh", "-c", "mknod /tmp/blk b 7 0 && head -c1 /tmp/blk >/dev/null && echo open-ok",
                               security=Security(privileged=True))
    assert code == 0, err
    assert out.strip() == b"open-ok"


def test_default_nodes_still_work(rt):
    script = ("cat /dev/null; echo x > /dev/null && echo null-ok; head -c 5 /dev/zero | wc -c; "
              "head -c 7 /dev/urandom | wc -c; head -c 3 /dev/random | wc -c; "
              "echo x > /dev/full; echo full=$?; test -c /dev/net/tun || echo no-tun")
    code, out, err, _ = rt.run("sh", "-c", script)
    lines = out.decode().split("\n")
    assert lines[:5] == ["null-ok", "5", "7", "3", "full=1"], (out, err)
    assert b"No space left on device" in err  # /dev/full opened (ENOSPC at write, not EPERM at open)


def test_tty_and_ptys_still_work(rt):
    code, out, err, _ = rt.run("sh", "-c", "tty; echo hi > /dev/tty && echo tty-ok; ls /dev/pts/ptmx >/dev/null "
                               "&& echo ptmx-ok", tty=True)
    assert code == 0, (out, err)
    text = out.decode()
    assert "/dev/pts/0" in text and "tty-ok" in text and "ptmx-ok" in text, text


def _exec(rt, cid: str, *args: str) -> tuple[int, bytes]:
    q: queue.Queue = queue.Queue()
    q.put(runtime_pb2.ExecRequest(spec=runtime_pb2.ExecSpec(container=cid, args=list(args))))

    def requests():
        while (item := q.get()) is not None:
            yield item

    out, code = b"", None
    try:
        for r in rt.stub.Exec(requests(), timeout=30):
            if r.HasField("output"):
                out += r.output.data
            elif r.HasField("exit_code"):
                code = r.exit_code
    finally:
        q.put(None)
    assert code is not None
    return code, out


@needs_v1_devices
def test_exec_is_confined_like_the_init(rt):
    c = rt.create("sleep", "300")
    rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
    deadline = time.monotonic() + 10
    while rt.stub.Inspect(runtime_pb2.ContainerRef(id=c.id)).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code, out = _exec(rt, c.id, "sh", "-c", "mknod /tmp/blk b 7 0 && echo mknod-ok; head -c1 /tmp/blk 2>&1; "
                      "head -c2 /dev/zero | wc -c")
    text = out.decode()
    assert "mknod-ok" in text and "Operation not permitted" in text and text.rstrip().endswith("2"), text
    rt.stub.Remove(runtime_pb2.RemoveRequest(id=c.id, force=True))


# ---- cgroup v2: the BPF device program, on the unified hierarchy (hybrid hosts have one too) ----
def _unified_root() -> Path | None:
    if detect(CGROUP_ROOT) == "v2":
        return CGROUP_ROOT
    unified = CGROUP_ROOT / "unified"
    return unified if (unified / "cgroup.procs").exists() else None


def _opens_in(procs: Path, attempts: list[tuple[str, int]], make: str = "") -> list[str]:
    """Fork a child into the cgroup whose ``procs`` file is given, (optionally mknod ``make``
    as block 7:1, loop1, first), try each open: "ok" or the errno's name."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            procs.write_text(str(os.getpid()))
            out = []
            if make:
                os.mknod(make, stat.S_IFBLK | 0o600, os.makedev(7, 1))
            for path, flags in attempts:
                try:
                    os.close(os.open(path, flags))
                    out.append("ok")
                except OSError as exc:
                    out.append(errno.errorcode[exc.errno])
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


def test_v2_bpf_device_program_enforces_the_rules(tmp_path):
    root = _unified_root()
    if root is None or not devices_bpf.supported():
        pytest.skip("no cgroup v2 hierarchy or no cgroup BPF on this host")
    if not LOOP0.is_block_device():
        pytest.skip("no /dev/loop0 on this host")
    m = V2Manager(root, "berth-devtest-" + secrets.token_hex(4))
    assert m.enforces_devices
    cid = secrets.token_hex(32)
    try:
        access = cgroup_access(False, [(str(LOOP0), "r")])
        procs = m.create(cid, Limits(devices=access))
        node = str(tmp_path / "blk")
        results = _opens_in(procs[0], [("/dev/null", os.O_RDWR), ("/dev/zero", os.O_RDONLY), (str(LOOP0), os.O_RDONLY),
                                       (str(LOOP0), os.O_WRONLY), (node, os.O_RDONLY), ("/dev/kmsg", os.O_RDONLY)],
                            make=node)
        # loop1 made (b *:* m) but not opened; loop0 read-only as asked; kmsg not on the list
        assert results == ["ok", "ok", "ok", "EPERM", "EPERM", "EPERM"], results
        m.remove(cid)
        os.unlink(node)
        procs = m.create(cid, Limits(devices=DeviceAccess(allow_all=True)))
        assert _opens_in(procs[0], [(str(LOOP0), os.O_WRONLY)]) == ["ok"]
    finally:
        m.remove(cid)
        m.remove_parent()
    assert not (root / m.parent).exists()
