"""`python -m bench.pull`: pull an image of 200+ MB in 4 gzip layers from a local registry.

Side by side in one run, each from a cold store (the image removed between runs):
- `berth pull -q` through the CLI, api and image services (download, verify, unpack);
- `docker pull` and `podman pull` where they work here (they unpack too);
- `skopeo copy docker://… oci:…` (copies blobs, no unpack: a floor).

The layers are real files from this host (/usr), so they compress and inflate
like a real image's, not like random bytes.

The tools take turns, one run each per round, so a burst of load from other
work on a shared machine hits them alike. After each reset (the previous copy
deleted) the file system is synced and left alone for BENCH_PULL_SETTLE
seconds (default 6): ext4 without a journal will not reuse an inode freed in
the last 5 s (300 s while its table block is dirty), and looking past thousands
of just-freed inodes costs about a millisecond of CPU per new file, so without
the pause every tool mostly measures the deletion of its previous copy.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.__main__ import private_dockerd
from tests import images
from tests.harness import Services
from tests.registry import Registry, TestImage, make_image, push_image

RUNS = int(os.environ.get("BENCH_PULL_RUNS", "3"))
SETTLE = float(os.environ.get("BENCH_PULL_SETTLE", "6"))
LAYER_BUDGET = 64 << 20  # uncompressed bytes per host-file layer
SOURCES = ["/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec", "/usr/sbin", "/usr/include", "/usr/local"]


def host_layers(budget: int, count: int) -> list[bytes]:
    """`count` layer tars of real host files, about `budget` bytes each."""
    layers: list[bytes] = []
    files: list[Path] = []
    for src in SOURCES:
        for dirpath, _dirs, names in os.walk(src):
            for n in sorted(names):
                p = Path(dirpath) / n
                if p.is_file() and not p.is_symlink():
                    files.append(p)
    it = iter(files)
    for _ in range(count):
        buf = io.BytesIO()
        size = 0
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p in it:
                try:
                    st = p.stat()
                    if st.st_size > 16 << 20:
                        continue
                    tar.add(str(p), arcname=str(p).lstrip("/"), recursive=False)
                except OSError:
                    continue
                size += st.st_size
                if size >= budget:
                    break
        layers.append(buf.getvalue())
    return layers


def settle() -> None:
    """Let freed inodes become reusable (see the module docstring)."""
    if SETTLE > 0:
        os.sync()
        time.sleep(SETTLE)


def timed_rounds(tools: dict[str, tuple[Callable[[], object], Callable[[], object]]]) -> dict[str, list[float]]:
    """Each tool's pull times, the tools taking turns: `tools` maps name -> (pull, reset)."""
    out: dict[str, list[float]] = {name: [] for name in tools}
    broken: set[str] = set()
    for _ in range(RUNS):
        for name, (fn, reset) in tools.items():
            if name in broken:
                continue
            reset()
            settle()
            t = time.perf_counter()
            try:
                fn()
            except RuntimeError as err:
                print(f"{name}: skipped ({err})")
                broken.add(name)
                continue
            out[name].append(time.perf_counter() - t)
    return {name: times for name, times in out.items() if times}


def run(cmd: list[str], **kw: object) -> None:
    r = subprocess.run(cmd, capture_output=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}…: rc={r.returncode} {r.stderr[-400:]!r}")


def build() -> tuple[TestImage, int]:
    """The image and its uncompressed size."""
    layers = [images.busybox_rootfs_bytes(), *host_layers(LAYER_BUDGET, 4)]
    return make_image(layers, compression="gzip"), sum(len(layer) for layer in layers)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="berth-bench-pull-"))
    reg = Registry("none").start()
    (base / "berth").mkdir()
    svc = Services(base / "berth")
    results: dict[str, list[float]] = {}
    try:
        t = time.perf_counter()
        img, unpacked = build()
        raw = sum(len(x) for x in img.blobs.values())
        ref = f"{reg.host}/bench/app:1"
        push_image(base, ref, img)
        print(f"image: {len(img.diff_ids)} layers, {unpacked / 1e6:.0f} MB uncompressed, {raw / 1e6:.0f} MB gzip "
              f"(built and pushed in {time.perf_counter() - t:.0f} s)")

        svc.start("image", "api")
        cli = [sys.executable, "-m", "cli"]
        tools: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}

        def berth_reset() -> None:
            subprocess.run([*cli, "rmi", ref], env=svc.env, capture_output=True)
            subprocess.run([*cli, "image", "prune", "-a", "-f"], env=svc.env, capture_output=True)

        tools["berth pull (CLI, unpacked)"] = (lambda: run([*cli, "pull", "-q", ref], env=svc.env), berth_reset)
        if shutil.which("skopeo"):
            dest = base / "skopeo-oci"
            tools["skopeo copy → oci: (no unpack)"] = (
                lambda: run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}"]),
                lambda: shutil.rmtree(dest, ignore_errors=True))
        podman = ["podman", "--root", str(base / "podman"), "--runroot", str(base / "podman-run"),
                  "--cgroup-manager", "cgroupfs"]
        if shutil.which("podman"):
            tools["podman pull"] = (lambda: run([*podman, "pull", "-q", "--tls-verify=false", ref]),
                                    lambda: subprocess.run([*podman, "rmi", "-f", ref], capture_output=True))
        with private_dockerd(base) as docker:
            if shutil.which("docker") and subprocess.run([*docker, "info"], capture_output=True).returncode == 0:
                tools["docker pull"] = (lambda: run([*docker, "pull", "-q", ref]),
                                        lambda: subprocess.run([*docker, "rmi", "-f", ref], capture_output=True))
            print(f"load average before: {os.getloadavg()[0]:.2f}")
            results.update(timed_rounds(tools))
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            subprocess.run([*docker, "rmi", "-f", ref], capture_output=True)
        if shutil.which("podman"):
            subprocess.run([*podman, "rmi", "-af"], capture_output=True)
            subprocess.run(["umount", "-R", str(base / "podman")], capture_output=True)
    finally:
        svc.close()
        reg.close()
        shutil.rmtree(base, ignore_errors=True)

    mine = statistics.median(results["berth pull (CLI, unpacked)"])
    print(f"\n{'what':34} {'median s':>9} {'min s':>7} {'MB/s':>7}  berth's time as a multiple of it")
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"{name:34} {med:9.2f} {min(samples):7.2f} {raw / 1e6 / med:7.0f}  {mine / med:.2f}x")


if __name__ == "__main__":
    main()
