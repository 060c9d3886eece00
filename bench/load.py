"""`python -m bench.load`: many clients at once, and many containers at once.

1. 50 clients (threads, each with its own gRPC channel) run `run --rm busybox sh -c
   'echo N; exit N%7'` until 500 containers have run: every exit code and output is
   checked, p50/p99 latency reported, and nothing may be left (containers, cgroups).
2. 200 `sleep` containers at once: host memory per container (MemAvailable delta, which
   includes the containers' own processes, and the supervisor's RSS delta), `ps` latency
   through the CLI, and the time to stop them all.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests import images
from tests.harness import REPO, Services
from tests.hostcheck import HostState

CLIENTS = int(os.environ.get("LOAD_CLIENTS", "50"))
TOTAL = int(os.environ.get("LOAD_TOTAL", "500"))
RUNNING = int(os.environ.get("LOAD_RUNNING", "200"))


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int | None) -> int:
    if not pid:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def concurrent_runs(svc: Services) -> None:
    from cli.client import Client

    counter = iter(range(TOTAL))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client_loop() -> None:
        client = Client()
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            spec = client.api.RunSpec(image="busybox", command=["sh", "-c", f"echo {n}; exit {n % 7}"],
                                      auto_remove=True, stop_timeout=-1)
            t = time.perf_counter()
            out, code = b"", None
            try:
                for resp in client.stub.Run(iter([client.api.RunRequest(spec=spec)])):
                    kind = resp.WhichOneof("item")
                    if kind == "output":
                        out += resp.output.data
                    elif kind == "exit_code":
                        code = resp.exit_code
            except Exception as err:  # noqa: BLE001 - counted and reported
                failures.append(f"{n}: {err}")
                continue
            latencies.append(time.perf_counter() - t)
            if (out, code) != (f"{n}\n".encode(), n % 7):
                failures.append(f"{n}: got {out!r} exit {code}")

    before = HostState.capture(svc.cgroup_parent)
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client_loop)
    wall = time.perf_counter() - start
    left = svc.berth("ps", "-aq").stdout.split()
    leaks = HostState.capture(svc.cgroup_parent).leaks_since(before)
    print(f"{TOTAL} runs by {CLIENTS} concurrent clients in {wall:.1f} s "
          f"({TOTAL / wall:.1f} containers/s): p50 {pct(latencies, 50) * 1000:.0f} ms, "
          f"p99 {pct(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"  wrong or failed: {len(failures)} {failures[:3]}; containers left: {len(left)}; leaks: {leaks}")


def many_running(svc: Services) -> None:
    mem0, sup0 = mem_available_kb(), rss_kb(svc.supervisor_pid())
    start = time.perf_counter()
    ids = []
    for _ in range(RUNNING):
        r = svc.berth("run", "-d", "busybox", "sleep", "3600")
        if r.returncode != 0:
            print(f"  run -d failed: {r.stderr.strip()}")
            break
        ids.append(r.stdout.strip())
    created = time.perf_counter() - start
    time.sleep(1)
    mem1, sup1 = mem_available_kb(), rss_kb(svc.supervisor_pid())
    ps_times = []
    for _ in range(5):
        t = time.perf_counter()
        n = len(svc.berth("ps", "-q").stdout.split())
        ps_times.append(time.perf_counter() - t)
    t = time.perf_counter()
    stop = subprocess.run([sys.executable, "-m", "cli", "stop", "-t", "1", *ids], env=svc.env, cwd=REPO,
                          capture_output=True, text=True)
    stop_time = time.perf_counter() - t
    svc.berth("rm", "-f", *ids)
    print(f"{len(ids)} sleeping containers started in {created:.1f} s (CLI per container); `ps` lists {n} in "
          f"{statistics.median(ps_times) * 1000:.0f} ms (median of 5, CLI to exit)")
    print(f"  host memory per running container {(mem0 - mem1) / max(1, len(ids)):.0f} kB (MemAvailable delta, "
          f"container processes included); supervisor {(sup1 - sup0) / max(1, len(ids)):.1f} kB")
    print(f"  `stop -t 1` of all {len(ids)}: {stop_time:.1f} s (rc {stop.returncode})")


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="berth-load-"))
    svc = Services(base)
    try:
        svc.start()
        tar = base / "busybox.tar"
        tar.write_bytes(images.busybox_rootfs_bytes())
        svc.berth("import", str(tar), "busybox", check=True)
        os.environ["BERTH_RUN_DIR"] = str(svc.run_dir)
        concurrent_runs(svc)
        many_running(svc)
    finally:
        svc.close()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
