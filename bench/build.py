"""`make bench-build`: `berth build` cold, fully cached, and after one changed file,
side by side with `docker build` (a private dockerd, same busybox base) in one run.

The Dockerfile is a small realistic one: a context of 2,000 small files and one 20 MB
file, a RUN that generates files, COPYs, metadata. Each tool builds it with no cache,
then again with nothing changed, then after one COPY'd file changed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.__main__ import private_dockerd
from tests import images
from tests.harness import Services

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
DOCKERFILE = """FROM busybox
WORKDIR /app
COPY small/ small/
RUN for i in $(seq 1 200); do echo "line $i" > gen-$i.txt; done
COPY big.bin .
COPY version.txt .
ENV MODE=bench
CMD ["cat", "/app/version.txt"]
"""


def make_context(root: Path) -> None:
    (root / "small").mkdir(parents=True)
    for i in range(2000):
        (root / "small" / f"f{i:04d}.txt").write_text(f"small file {i}\n")
    (root / "big.bin").write_bytes(os.urandom(20 << 20))
    (root / "version.txt").write_text("1\n")
    (root / "Dockerfile").write_text(DOCKERFILE)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}…: rc={r.returncode} {r.stderr[-400:]!r}")
    return time.perf_counter() - t


def rounds(ctx: Path, build: Callable[[list[str]], float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cold (--no-cache)": [], "cached (no change)": [], "one file changed": []}
    for n in range(ROUNDS):
        out["cold (--no-cache)"].append(build(["--no-cache"]))
        out["cached (no change)"].append(build([]))
        (ctx / "version.txt").write_text(f"{n + 2}\n")
        out["one file changed"].append(build([]))
    return out


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="berth-bench-build-"))
    ctx = base / "ctx"
    make_context(ctx)
    rootfs = base / "busybox.tar"
    rootfs.write_bytes(images.busybox_rootfs_bytes())
    results: dict[str, dict[str, list[float]]] = {}
    (base / "berth").mkdir()
    svc = Services(base / "berth")
    try:
        svc.start()
        cli = [sys.executable, "-m", "cli"]
        subprocess.run([*cli, "import", str(rootfs), "busybox:latest"], env=svc.env, check=True, capture_output=True)
        results["berth build"] = rounds(ctx, lambda extra: timed([*cli, "build", "-q", *extra, "-t", "bench:1",
                                                                  str(ctx)], svc.env))
        with private_dockerd(base) as docker:
            if shutil.which("docker") and subprocess.run([*docker, "info"], capture_output=True).returncode == 0:
                subprocess.run([*docker, "import", str(rootfs), "busybox:latest"], check=True, capture_output=True)
                env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder: no buildx plugin here
                results["docker build (classic)"] = rounds(
                    ctx, lambda extra: timed([*docker, "build", "-q", *extra, "-t", "bench:1", str(ctx)], env))
                subprocess.run([*docker, "rmi", "-f", "bench:1", "busybox:latest"], capture_output=True)
                subprocess.run([*docker, "builder", "prune", "-af"], capture_output=True)
            else:
                print("docker: skipped (no working docker engine)")
    finally:
        svc.close()
        shutil.rmtree(base, ignore_errors=True)
    mine = results["berth build"]
    print(f"\n{'tool':24} {'phase':20} {'median s':>9} {'min s':>7}  berth's time as a multiple of it")
    for tool, phases in results.items():
        for phase, samples in phases.items():
            med = statistics.median(samples)
            print(f"{tool:24} {phase:20} {med:9.2f} {min(samples):7.2f}  {statistics.median(mine[phase]) / med:.2f}x")


if __name__ == "__main__":
    main()
