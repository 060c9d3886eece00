"""What a process sees from inside a container: its own pids, hostname, network, proc, privileges."""

from __future__ import annotations

import os
import socket

from berth.runtime.v1 import runtime_pb2
from services.runtime import capabilities


def test_ps_shows_only_its_own_processes(rt):
    code, out, _, _ = rt.run("sh", "-c", "sleep 5 & sleep 0.3; ps -o pid,comm; true")
    assert code == 0
    rows = [line.split() for line in out.decode().splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["ps", "sh", "sleep"]
    assert ["1", "sh"] in rows


def test_hostname_differs_from_the_hosts(rt):
    code, out, _, c = rt.run("hostname")
    assert code == 0
    assert out.decode().strip() == c.id[:12] != socket.gethostname()
    code, out, _, _ = rt.run("sh", "-c", "hostname; cat /etc/hostname; echo $HOSTNAME", hostname="web1")
    assert out.decode().split() == ["web1", "web1", "web1"]


def test_only_loopback_and_it_is_up(rt):
    code, out, _, _ = rt.run("ip", "-o", "link")
    assert code == 0
    links = [line.split(":")[1].strip() for line in out.decode().splitlines()]
    assert links == ["lo"]
    assert "UP" in out.decode()


def test_kernel_is_the_hosts(rt):
    _, out, _, _ = rt.run("uname", "-r")
    assert out.decode().strip() == os.uname().release


def test_proc_sys_is_read_only(rt):
    code, _, err, _ = rt.run("sh", "-c", "echo 1 > /proc/sys/kernel/domainname")
    assert code != 0
    assert b"Read-only file system" in err


def test_masked_paths(rt):
    # Masked files read as /dev/null, masked dirs as an empty read-only tmpfs (the host has these).
    code, out, _, _ = rt.run("sh", "-c", "cat /proc/keys /proc/timer_list | wc -c; "
                                         "find /proc/acpi /sys/firmware -mindepth 1 | wc -l; "
                                         "grep -E ' /proc/(keys|acpi) ' /proc/mounts | cut -d' ' -f3,4")
    assert code == 0
    lines = out.decode().splitlines()
    assert lines[:2] == ["0", "0"]
    assert any(line.startswith("tmpfs ro") for line in lines[2:])


def test_sysfs_is_read_only(rt):
    code, _, err, _ = rt.run("touch", "/sys/x")
    assert code != 0 and b"Read-only" in err


def test_default_capability_bounding_set_and_no_new_privs(rt):
    code, out, _, _ = rt.run("grep", "-E", "^(CapBnd|CapInh|CapAmb|NoNewPrivs|SigIgn|SigBlk):", "/proc/self/status")
    assert code == 0
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    want = sum(1 << capabilities.BY_NAME[n] for n in capabilities.DEFAULT)
    assert int(fields["CapBnd"], 16) == want
    assert int(fields["CapInh"], 16) == 0 and int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    # Python ignores SIGPIPE: the container must not inherit that, nor a blocked mask.
    assert int(fields["SigIgn"], 16) == 0 and int(fields["SigBlk"], 16) == 0


def test_user_by_name_and_number(rt):
    _, out, _, _ = rt.run("sh", "-c", "id -u; id -g; echo $HOME", user="nobody")
    assert out.decode().split() == ["65534", "65534", "/home"]
    _, out, _, _ = rt.run("sh", "-c", "id -u; id -g", user="1000:1001")
    assert out.decode().split() == ["1000", "1001"]
    _, out, _, _ = rt.run("sh", "-c", "id -u; echo $HOME")
    assert out.decode().split() == ["0", "/root"]


def test_cwd_is_created_and_env_completed(rt):
    _, out, _, _ = rt.run("sh", "-c", "pwd; echo $PATH; echo $FOO", cwd="/work/app", env=["FOO=bar"])
    assert out.decode().split() == ["/work/app", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                    "bar"]


def test_dev_has_the_usual_nodes(rt):
    code, out, err, _ = rt.run("sh", "-c", "ls /dev; echo x > /dev/null; head -c 4 /dev/zero | wc -c; "
                                            "touch /dev/shm/ok; ls -ld /dev/pts/ptmx /dev/mqueue >/dev/null")
    assert code == 0, err
    names = set(out.decode().split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout", "stderr", "ptmx", "pts",
            "shm", "mqueue", "4"} <= names


def test_etc_files_are_generated(rt):
    code, out, _, _ = rt.run("sh", "-c", "grep -c localhost /etc/hosts; grep -c nameserver /etc/resolv.conf")
    assert code == 0
    assert all(int(n) >= 1 for n in out.decode().split())


def test_nothing_is_mounted_on_the_host_while_running(rt):
    c = rt.create("sleep", "30")
    rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
    with open("/proc/self/mountinfo") as f:
        assert c.id not in f.read()


def test_no_supervisor_file_descriptors_leak_in(rt):
    code, out, _, _ = rt.run("ls", "/proc/self/fd")
    assert code == 0
    assert sorted(int(x) for x in out.split()) == [0, 1, 2, 3]  # 3: ls's own listing of the dir
