"""Faults from outside: a service SIGKILLed at the worst moment, a full disk, a locked database.

The moment is hit exactly, without hooks in the services: `strace -e inject=SYSCALL:signal=SIGKILL`
kills the service when it makes the N-th such syscall (e.g. the `rmdir` right after `rm`
committed, the `rename` that publishes a layer, the WAL write that records a start). After the
restart the state must be consistent (no record without its files, no files without their
record), nothing may be left on the host, and the command must work again.
(SIGKILL mid-pull is tests/integration/registry/test_service_recovery.py.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import images
from tests.harness import EXTERNAL, REPO, Services
from tests.hostcheck import HostState

pytestmark = pytest.mark.skipif(EXTERNAL or os.geteuid() != 0, reason="starts its own services; needs root")
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (fault injection)")
sqlite_only = pytest.mark.skipif(os.environ.get("BERTH_TEST_POSTGRES") == "1", reason="SQLite only")


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], r.stderr


def eventually(check, timeout: float = 15.0, what: str = "") -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="module")
def svc():
    s = Services(Path(tempfile.mkdtemp(prefix="berth-faults-")))
    try:
        s.start()
        tar = s.base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        ok(s.berth("import", str(tar), "busybox:latest"))
        yield s
        s.berth("rm", "-f", *s.berth("ps", "-aq").stdout.split())
    finally:
        s.close()


def assert_consistent(s: Services) -> None:
    """Every container has its runtime dir and its snapshot, and nothing else has one; the
    image service's scratch space is empty."""
    ids = set(ok(s.berth("ps", "-aq", "--no-trunc")).stdout.split())
    runtime_dirs = {p.name for p in (s.root_dir / "runtime" / "containers").iterdir()}
    snapshots = {p.name for p in (s.root_dir / "image" / "snapshots").iterdir()}
    assert runtime_dirs == ids, f"runtime dirs {runtime_dirs ^ ids} without/with records"
    assert snapshots == ids, f"snapshots {snapshots ^ ids} without/with containers"
    assert not list((s.root_dir / "image" / "tmp").iterdir()), "image scratch space not empty"
    assert not [p for p in (s.root_dir / "image").iterdir() if p.name.startswith("trash-")]


@pytest.fixture
def clean(svc: Services):
    """The host as before the test and the state consistent (after a crash: once reconciled)."""
    before = HostState.capture(svc.cgroup_parent)
    yield
    eventually(lambda: assert_consistent(svc), what="consistent state")

    def no_leaks() -> None:
        leaks = HostState.capture(svc.cgroup_parent).leaks_since(before)
        assert not leaks, f"host not clean: {leaks}"

    eventually(no_leaks, timeout=5)


@contextlib.contextmanager
def killed_at(s: Services, name: str, syscall: str, when: int = 1) -> Iterator[None]:
    """SIGKILL service `name` when it enters its `when`-th `syscall` inside the block, then
    restart it. Fails if the block never made that syscall."""
    proc = s.procs[name]
    tracer = subprocess.Popen(["strace", "-f", "-p", str(proc.pid), "-e", f"trace={syscall}",
                               "-e", f"inject={syscall}:signal=SIGKILL:when={when}", "-o", "/dev/null"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # strace attaches every thread before the operation starts
        yield
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} never reached {syscall} #{when}") from None
        assert proc.returncode == -signal.SIGKILL
    finally:
        if tracer.poll() is None:
            tracer.terminate()
        tracer.wait(10)
        if proc.poll() is None:  # the injection missed: do not leave strace's victim stopped
            proc.kill()
            proc.wait()
        s.procs.pop(name, None)
    s.start(name)


def container_id(s: Services, name: str) -> str:
    return ok(s.berth("inspect", "-f", "{{.Id}}", name)).stdout.strip()


# ---- the runtime ------------------------------------------------------------------------

@needs_strace
def test_runtime_killed_in_rm_after_the_record_went(svc, clean):
    ok(svc.berth("run", "--name", "rm-victim", "busybox", "true"))
    cid = container_id(svc, "rm-victim")
    with killed_at(svc, "runtime", "rmdir"):  # the cgroups go right after the record
        one_line_error(svc.berth("rm", "rm-victim"), "runtime service")
    # The record was gone before the crash: its directory, cgroups and snapshot follow.
    eventually(lambda: assert_consistent(svc))
    assert cid not in ok(svc.berth("ps", "-aq", "--no-trunc")).stdout
    one_line_error(svc.berth("rm", "rm-victim"), "No such container")
    ok(svc.berth("run", "--name", "rm-victim", "busybox", "true"))  # the name is free again
    ok(svc.berth("rm", "rm-victim"))


@needs_strace
@sqlite_only  # the syscall hit is SQLite's WAL write
def test_runtime_killed_in_create_before_the_record(svc, clean):
    # The container's dir is made, then the record is written: the crash falls between.
    with killed_at(svc, "runtime", "pwrite64"):
        one_line_error(svc.berth("create", "--name", "create-victim", "busybox", "true"), "runtime service")
    eventually(lambda: assert_consistent(svc))
    ok(svc.berth("create", "--name", "create-victim", "busybox", "true"))
    ok(svc.berth("rm", "create-victim"))


@needs_strace
@sqlite_only  # with PostgreSQL the first recvfrom is the database's
def test_runtime_killed_in_start_after_the_spawn(svc, clean):
    ok(svc.berth("create", "--name", "start-victim", "--network", "none", "busybox", "sleep", "300"))
    # The spawn request is sent to the supervisor; the runtime dies waiting for its reply
    # (its first recvfrom: with no network, no netlink comes first), before it can record
    # that the container runs.
    with killed_at(svc, "runtime", "recvfrom"):
        one_line_error(svc.berth("start", "start-victim"), "runtime service")
    # The process outlived the runtime under the supervisor: it is adopted, not duplicated.
    inspect = ok(svc.berth("inspect", "-f", "{{.State.Status}} {{.State.Pid}}", "start-victim")).stdout.split()
    assert inspect[0] == "running" and Path(f"/proc/{inspect[1]}").exists(), inspect
    ok(svc.berth("start", "start-victim"))  # the same command again: already running
    assert ok(svc.berth("inspect", "-f", "{{.State.Pid}}", "start-victim")).stdout.split() == inspect[1:]
    assert ok(svc.berth("exec", "start-victim", "echo", "inside")).stdout == "inside\n"
    ok(svc.berth("rm", "-f", "start-victim"))
    assert not Path(f"/proc/{inspect[1]}").exists()


@needs_strace
def test_runtime_killed_mid_start_repeatedly(svc, clean):
    """The crash at several points of a start (each `openat` from the first on): whatever
    was made, the restart reconciles it and `start` works."""
    for when in (1, 3, 6):
        ok(svc.berth("create", "--name", f"start-{when}", "busybox", "sleep", "300"))
        with killed_at(svc, "runtime", "openat", when=when):
            svc.berth("start", f"start-{when}")
        ok(svc.berth("start", f"start-{when}"))
        assert ok(svc.berth("inspect", "-f", "{{.State.Status}}", f"start-{when}")).stdout.strip() == "running"
        assert ok(svc.berth("exec", f"start-{when}", "true"))
        ok(svc.berth("rm", "-f", f"start-{when}"))


# ---- the image service ------------------------------------------------------------------

def small_image(s: Services, tag: str) -> Path:
    path = s.base / f"{tag.replace(':', '_')}.tar"
    path.write_bytes(images.docker_save_archive(
        [images.busybox_rootfs_bytes(), images.layer_tar({"data.bin": os.urandom(1 << 20)})], tag))
    return path


def image_files(s: Services) -> tuple[set[str], set[str]]:
    root = s.root_dir / "image"
    return ({p.name for p in (root / "layers").iterdir()}, {p.name for p in (root / "blobs" / "sha256").iterdir()})


@needs_strace
def test_image_killed_in_rmi_after_the_record_went(svc, clean):
    before = image_files(svc)
    archive = small_image(svc, "rmi-victim:1")
    ok(svc.berth("load", "-i", str(archive)))
    with killed_at(svc, "image", "rename"):  # layers leave by rename, after the rows went
        one_line_error(svc.berth("rmi", "rmi-victim:1"))
    assert "rmi-victim" not in ok(svc.berth("images")).stdout
    assert image_files(svc) == before  # the restart collected what no row reaches
    ok(svc.berth("load", "-i", str(archive)))  # and it all works again
    ok(svc.berth("run", "--rm", "rmi-victim:1", "test", "-s", "/data.bin"))
    ok(svc.berth("rmi", "rmi-victim:1"))
    assert image_files(svc) == before


@needs_strace
@pytest.mark.parametrize("when", [1, 2, 4])
def test_image_killed_while_publishing_a_load(svc, clean, when):
    """Blobs and layers are published by rename, then recorded: a crash at any rename
    leaves nothing reachable and nothing behind once restarted."""
    before = image_files(svc)
    archive = small_image(svc, f"publish-{when}:1")
    with killed_at(svc, "image", "rename", when=when):
        one_line_error(svc.berth("load", "-i", str(archive)))
    assert f"publish-{when}" not in ok(svc.berth("images")).stdout
    assert image_files(svc) == before
    ok(svc.berth("load", "-i", str(archive)))
    ok(svc.berth("run", "--rm", f"publish-{when}:1", "test", "-s", "/data.bin"))
    ok(svc.berth("rmi", f"publish-{when}:1"))


def test_image_killed_in_the_middle_of_a_big_load(svc, clean):
    before = image_files(svc)
    archive = svc.base / "big.tar"
    archive.write_bytes(images.docker_save_archive(
        [images.busybox_rootfs_bytes(), images.layer_tar({"big.bin": os.urandom(96 << 20)})], "big-load:1"))
    try:
        load = subprocess.Popen([sys.executable, "-m", "cli", "load", "-i", str(archive)], env=svc.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        scratch = svc.root_dir / "image" / "tmp"

        def staged() -> int:
            total = 0
            for dirpath, _, files in os.walk(scratch):
                for f in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, f)).st_size
            return total

        deadline = time.monotonic() + 60
        while staged() < 16 << 20 and load.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert load.poll() is None, "the load finished before it could be interrupted"
        svc.stop("image", sig=signal.SIGKILL)
        _, err = load.communicate(timeout=30)
        assert load.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        svc.start("image")
        assert "big-load" not in ok(svc.berth("images")).stdout
        assert image_files(svc) == before  # no partial blob, no half layer
        ok(svc.berth("load", "-i", str(archive), timeout=120))  # the same command, now to the end
        ok(svc.berth("run", "--rm", "big-load:1", "test", "-s", "/big.bin"))
        ok(svc.berth("rmi", "big-load:1"))
    finally:
        archive.unlink(missing_ok=True)


# ---- the api ----------------------------------------------------------------------------

def test_api_killed_during_run_rm(svc, clean):
    """The --rm container outlives its `run`; the restarted api removes it once it exits."""
    run = subprocess.Popen([sys.executable, "-m", "cli", "run", "--rm", "--name", "api-victim", "busybox",
                            "sh", "-c", "echo started; sleep 2"], env=svc.env, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "started\n"
    svc.stop("api", sig=signal.SIGKILL)
    _, err = run.communicate(timeout=30)
    assert run.returncode != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    svc.start("api")

    def removed() -> None:
        assert "api-victim" not in ok(svc.berth("ps", "-a")).stdout

    eventually(removed, timeout=20)
    r = ok(svc.berth("run", "--rm", "--name", "api-victim", "busybox", "sh", "-c", "echo again"))
    assert r.stdout == "again\n"


def test_api_killed_between_snapshot_and_create(svc, clean):
    """The runtime is frozen so the api dies with the snapshot made and the container not yet."""
    runtime = svc.procs["runtime"]
    snapshots = svc.root_dir / "image" / "snapshots"
    before = set(os.listdir(snapshots))
    os.kill(runtime.pid, signal.SIGSTOP)
    try:
        run = subprocess.Popen([sys.executable, "-m", "cli", "run", "--rm", "busybox", "true"], env=svc.env,
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def snapshot_made() -> None:
            assert set(os.listdir(snapshots)) - before, "no snapshot yet"

        eventually(snapshot_made, timeout=20)
        svc.stop("api", sig=signal.SIGKILL)
        run.communicate(timeout=30)
    finally:
        os.kill(runtime.pid, signal.SIGCONT)
    svc.start("api")
    # The snapshot goes with the api's reconcile, or, if the Create still reached the thawed
    # runtime, stays paired with a created container, which `rm` then removes whole.
    eventually(lambda: assert_consistent(svc), timeout=20)
    leftover = ok(svc.berth("ps", "-aq", "--no-trunc")).stdout.split()
    if leftover:
        ok(svc.berth("rm", *leftover))
    ok(svc.berth("run", "--rm", "busybox", "true"))


# ---- the database -----------------------------------------------------------------------

@sqlite_only
def test_database_locked_then_released(svc, clean):
    db = sqlite3.connect(svc.root_dir / "image" / "image.db", timeout=30, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    released = False
    try:
        assert "busybox" in ok(svc.berth("images")).stdout  # readers go on (WAL)
        tag = subprocess.Popen([sys.executable, "-m", "cli", "tag", "busybox", "locked:1"], env=svc.env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert tag.poll() is None  # the writer waits for the lock...
        db.execute("ROLLBACK")
        released = True
        _, err = tag.communicate(timeout=30)
        assert tag.returncode == 0, err  # ...and gets it
    finally:
        if not released:
            db.execute("ROLLBACK")
        db.close()
    ok(svc.berth("rmi", "locked:1"))


@sqlite_only
def test_database_locked_too_long_is_a_clear_error(svc, clean):
    db = sqlite3.connect(svc.root_dir / "image" / "image.db", timeout=30, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    try:
        r = svc.berth("tag", "busybox", "locked:2", timeout=90)
    finally:
        db.execute("ROLLBACK")
        db.close()
    one_line_error(r, "database", "locked")
    ok(svc.berth("tag", "busybox", "locked:2"))  # released: it works again
    ok(svc.berth("rmi", "locked:2"))


def test_read_only_state_is_named_at_start_and_recovers(busybox_tar):
    """A state dir (and with it every database) that went read-only: `daemon start` says so in
    one line; writable again, all is back."""
    base = Path(tempfile.mkdtemp(prefix="berth-ro-"))
    lib = base / "lib"
    lib.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "berth-test-ro", str(lib)], check=True)
    s = Services(base)
    try:
        ok(s.berth("daemon", "start"))
        ok(s.berth("import", str(busybox_tar), "busybox"))
        ok(s.berth("daemon", "stop"))
        subprocess.run(["mount", "-o", "remount,ro", str(lib)], check=True)
        r = s.berth("daemon", "start")
        one_line_error(r, "cannot start the image service", "image.log: Read-only file system")
        subprocess.run(["mount", "-o", "remount,rw", str(lib)], check=True)
        ok(s.berth("daemon", "start"))
        assert ok(s.berth("run", "--rm", "busybox", "echo", "writable")).stdout == "writable\n"
    finally:
        s.berth("daemon", "stop")
        s.stop_supervisor()
        subprocess.run(["umount", str(lib)], check=False)
        s.close()


# ---- a full disk ------------------------------------------------------------------------

@pytest.fixture
def small_disk():
    """Services whose state dir is a 48 MB tmpfs (unmounted afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="berth-full-"))
    lib = base / "lib"
    lib.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "berth-test-full", str(lib)], check=True)
    s = Services(base)
    before = HostState.capture(s.cgroup_parent)
    try:
        s.start()
        tar = base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        ok(s.berth("import", str(tar), "busybox:latest"))
        yield s
        s.berth("rm", "-f", *s.berth("ps", "-aq").stdout.split())
    finally:
        s.stop()
        s.stop_supervisor()
        subprocess.run(["umount", str(lib)], check=False)
        s.close()
    leaks = HostState.capture(s.cgroup_parent).leaks_since(before)
    assert not leaks, leaks


def fill(path: Path, leave: int) -> Path:
    """A file that leaves about `leave` bytes free on path's filesystem."""
    filler = path / "filler"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        for _ in range(max(0, free - leave) >> 20):
            f.write(chunk)
    return filler


def test_disk_full_while_writing_a_blob(small_disk):
    s = small_disk
    before = image_files(s)
    big = s.base / "too-big.tar"  # outside the tmpfs: bigger than all of it
    big.write_bytes(images.docker_save_archive(
        [images.busybox_rootfs_bytes(), images.layer_tar({"big.bin": os.urandom(64 << 20)})], "too-big:1"))
    r = s.berth("load", "-i", str(big), timeout=120)
    one_line_error(r, "no space left on device")
    assert "too-big" not in ok(s.berth("images")).stdout
    assert image_files(s) == before  # no partial blob
    assert not list((s.root_dir / "image" / "tmp").iterdir())
    # the space came back with the failed load: the service works
    ok(s.berth("load", "-i", str(small_image(s, "fits:1"))))
    ok(s.berth("run", "--rm", "fits:1", "test", "-s", "/data.bin"))


def test_disk_full_while_writing_logs(small_disk):
    s = small_disk
    runtime, supervisor = s.procs["runtime"].pid, s.supervisor_pid()
    ok(s.berth("run", "-d", "--name", "loud", "busybox", "sh", "-c",
               "sleep 1; i=0; while [ $i -lt 40000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
               "i=$((i+1)); done; echo the-end"))
    pid = int(ok(s.berth("inspect", "-f", "{{.State.Pid}}", "loud")).stdout)
    filler = fill(s.root_dir, leave=256 << 10)  # the log outgrows what is left
    try:
        def gone() -> None:
            assert not os.path.exists(f"/proc/{pid}")

        eventually(gone, timeout=60)  # it was never blocked on a log nobody could write
        assert os.path.exists(f"/proc/{runtime}") and os.path.exists(f"/proc/{supervisor}")
        ok(s.berth("ps", "-a"))
    finally:
        filler.unlink()

    def exited() -> None:  # the exit the full disk kept out of the DB is recorded now
        state = ok(s.berth("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "loud")).stdout.split()
        assert state == ["exited", "0"], state

    eventually(exited, timeout=15)
    logs = s.berth("logs", "loud")
    assert logs.returncode == 0 and logs.stdout.startswith("line-0-"), logs.stderr
    lines = logs.stdout.splitlines()
    assert len(lines) < 40001  # truncated, not all there
    assert all(line.startswith("line-") or line == "the-end" for line in lines)  # no half-written entry
    ok(s.berth("rm", "loud"))
    assert ok(s.berth("run", "--rm", "busybox", "echo", "still-here")).stdout == "still-here\n"


# ---- PostgreSQL -------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("BERTH_TEST_POSTGRES") != "1" or shutil.which("pg_ctlcluster") is None,
                    reason="BERTH_TEST_POSTGRES=1 with a local PostgreSQL (make postgres)")
def test_services_reconnect_after_postgres_restarts(svc, clean):
    ok(svc.berth("run", "--name", "pg-before", "busybox", "true"))
    version = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split()[0]
    subprocess.run(["pg_ctlcluster", version, "main", "restart"], check=True)
    ok(svc.berth("ps", "-a"))
    subprocess.run(["pg_ctlcluster", version, "main", "stop"], check=True)
    try:  # while it is down: one clear line, no traceback, no hang
        one_line_error(svc.berth("tag", "busybox", "pg-down:1", timeout=60), "database unavailable")
    finally:
        subprocess.run(["pg_ctlcluster", version, "main", "start"], check=True)
    assert ok(svc.berth("run", "--rm", "busybox", "echo", "after")).stdout == "after\n"
    ok(svc.berth("tag", "busybox", "pg-after:1"))
    ok(svc.berth("rmi", "pg-after:1"))
    ok(svc.berth("rm", "pg-before"))

