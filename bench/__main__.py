"""`make bench`: start latency, API cycle, and per-container overhead, with peers.

Starts a private Berth (tests/harness.py), imports the busybox rootfs, and times:
- `berth run --rm busybox true`, CLI start to exit;
- the same cycle through the gRPC API (Run with auto-remove) from a connected client;
- `crun run` / `runc run` of the same rootfs, and `docker run --rm` / `podman run --rm`
  where those are installed and working, in the same run, printed as ratios;
- supervisor memory per running container (RSS delta over 20 sleeping containers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests import images
from tests.harness import REPO, Services

RUNS = int(os.environ.get("BENCH_RUNS", "20"))


def timed(fn: Callable[[], object], runs: int = RUNS) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def check(cmd: list[str], **kw: object) -> None:
    r = subprocess.run(cmd, capture_output=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc={r.returncode} {r.stderr[-500:]!r}")


def bundle(base: Path, rootfs_tar: Path, runtime: str) -> Path:
    """An OCI bundle for crun/runc from the same rootfs, running `true`."""
    b = base / f"bundle-{runtime}"
    (b / "rootfs").mkdir(parents=True)
    with tarfile.open(rootfs_tar) as t:
        t.extractall(b / "rootfs", filter="tar")
    check([runtime, "spec"], cwd=b)
    spec = json.loads((b / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    (b / "config.json").write_text(json.dumps(spec))
    return b


def peer_oci(base: Path, rootfs_tar: Path, runtime: list[str]) -> list[float] | None:
    if not shutil.which(runtime[0]):
        return None
    b = bundle(base / "-".join(runtime).replace("=", "-"), rootfs_tar, runtime[0])
    n = [0]

    def once() -> None:
        n[0] += 1
        check([*runtime, "run", f"berth-bench-{os.getpid()}-{n[0]}"], cwd=b, stdin=subprocess.DEVNULL)

    try:
        return timed(once)
    except RuntimeError as err:
        print(f"{runtime[0]}: skipped ({err})")
        return None


def peer_engine(rootfs_tar: Path, cmd: list[str], extra: list[str]) -> list[float] | None:
    """Time `<engine> run --rm` of the same rootfs; None when the engine is missing or down."""
    if not shutil.which(cmd[0]) or subprocess.run([*cmd, "info"], capture_output=True).returncode != 0:
        return None
    tag = f"berth-bench-busybox:{os.getpid()}"
    try:
        check([*cmd, "import", str(rootfs_tar), tag])
        return timed(lambda: check([*cmd, "run", "--rm", "--network", "none", *extra, tag, "true"]))
    except RuntimeError as err:
        print(f"{cmd[0]}: skipped ({err})")
        return None
    finally:
        subprocess.run([*cmd, "rmi", tag], capture_output=True)


@contextlib.contextmanager
def private_dockerd(base: Path) -> Iterator[list[str]]:
    """A docker engine for the comparison: the running one, or a private dockerd (with its
    own containerd, no bridge, no iptables, state under `base`) stopped by PID at the end."""
    if not shutil.which("docker") or subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        yield ["docker"]
        return
    if not shutil.which("dockerd"):
        yield ["docker"]
        return
    d = base / "dockerd"
    d.mkdir()
    # dockerd leaves its parent cgroups behind: remove them afterwards unless they were here.
    cgroups_before = set(Path("/sys/fs/cgroup").glob("*/docker"))
    sock = d / "docker.sock"
    with open(d / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
                                 "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
                                 "--pidfile", str(d / "docker.pid"), "-H", f"unix://{sock}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cmd = ["docker", "-H", f"unix://{sock}"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*cmd, "info"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                print("docker: skipped (private dockerd did not start)")
                break
            time.sleep(0.5)
        yield cmd
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-R", str(d)], capture_output=True)
        for cg in set(Path("/sys/fs/cgroup").glob("*/docker")) - cgroups_before:
            for sub in sorted(cg.rglob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            cg.rmdir()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="berth-bench-"))
    svc = Services(base)
    results: dict[str, list[float]] = {}
    try:
        svc.start()
        tar = base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        svc.berth("import", str(tar), "busybox", check=True)

        # Like for like with the peers, which run with --network none (the private dockerd has
        # no bridge); the default bridge's cost (netns, veth) is measured on its own below.
        cli = [sys.executable, "-m", "cli", "run", "--rm", "--network", "none", "busybox", "true"]
        results["berth run --rm (CLI to exit)"] = timed(
            lambda: subprocess.run(cli, env=svc.env, cwd=REPO, check=True, capture_output=True))

        from cli.client import Client

        os.environ["BERTH_RUN_DIR"] = str(svc.run_dir)
        client = Client()

        from berth.runtime.v1 import network_pb2

        def api_cycle(mode: str) -> None:
            spec = client.api.RunSpec(image="busybox", command=["true"], auto_remove=True, stop_timeout=-1,
                                      network=network_pb2.NetworkConfig(mode=mode))
            for resp in client.stub.Run(iter([client.api.RunRequest(spec=spec)])):
                if resp.WhichOneof("item") == "exit_code":
                    assert resp.exit_code == 0

        results["API Run cycle (connected client)"] = timed(lambda: api_cycle("none"))
        results["API Run cycle, default bridge"] = timed(lambda: api_cycle("bridge"))

        # crun refuses hybrid cgroup hosts (v1 controllers plus a v2 mount owning one),
        # so there it runs without cgroups: a floor, not a like-for-like figure.
        for runtime in (["crun"], ["crun", "--cgroup-manager=disabled"], ["runc"]):
            r = peer_oci(base, tar, runtime)
            if r:
                results[" ".join(runtime) + " run"] = r
        with private_dockerd(base) as docker:
            r = peer_engine(tar, docker, [])
            if r:
                results["docker run --rm"] = r
        # podman: this sandbox forbids raising rlimits and has no systemd; state kept in `base`.
        podman = ["podman", "--root", str(base / "podman"), "--runroot", str(base / "podman-run"),
                  "--cgroup-manager", "cgroupfs"]
        r = peer_engine(tar, podman, ["--ulimit", "nofile=1024:1024"])
        if r:
            results["podman run --rm"] = r

        # Per-container overhead: what the supervisor grows by per running container.
        sup = svc.supervisor_pid()
        before = rss_kb(sup) if sup else 0
        ids = [svc.berth("run", "-d", "busybox", "sleep", "300", check=True).stdout.strip() for _ in range(20)]
        time.sleep(0.5)
        sup = svc.supervisor_pid()
        after = rss_kb(sup) if sup else 0
        svc.berth("rm", "-f", *ids, check=True)
        overhead_kb = (after - before) / 20
    finally:
        svc.stop()
        svc.stop_supervisor()
        shutil.rmtree(base, ignore_errors=True)

    berth_cli = statistics.median(results["berth run --rm (CLI to exit)"])
    berth_api = statistics.median(results["API Run cycle (connected client)"])
    print(f"\n{'what':38} {'median ms':>10} {'min ms':>8}  berth CLI / API time as a multiple of it")
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"{name:38} {med * 1000:10.1f} {min(samples) * 1000:8.1f}  "
              f"{berth_cli / med:6.2f}x / {berth_api / med:6.2f}x")
    print(f"\nsupervisor RSS before {before} kB, with 20 containers {after} kB: "
          f"{overhead_kb:.1f} kB per running container (no per-container shim process)")


if __name__ == "__main__":
    main()
