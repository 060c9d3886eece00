"""`python -m bench.pull`: pull an image of 200+ MB in 4 gzip layers from a local registry.

Side by side in one run, each from a cold store (the image removed between runs):
- `berth pull -q` through the CLI, api and image services (download, verify, unpack);
- `docker pull` and `podman pull` where they work here (they unpack too);
- `skopeo copy docker://… oci:…` (copies blobs, no unpack: a floor).

The layers are real files from this host (/usr), so they compress and inflate
like a real image's, not like random bytes.
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


def timed(fn: Callable[[], object], reset: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(RUNS):
        reset()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


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

        def berth_reset() -> None:
            subprocess.run([*cli, "rmi", ref], env=svc.env, capture_output=True)
            subprocess.run([*cli, "image", "prune", "-a", "-f"], env=svc.env, capture_output=True)

        results["berth pull (CLI, unpacked)"] = timed(
            lambda: run([*cli, "pull", "-q", ref], env=svc.env), berth_reset)

        if shutil.which("skopeo"):
            dest = base / "skopeo-oci"
            results["skopeo copy → oci: (no unpack)"] = timed(
                lambda: run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}"]),
                lambda: shutil.rmtree(dest, ignore_errors=True))

        with private_dockerd(base) as docker:
            if shutil.which("docker") and subprocess.run([*docker, "info"], capture_output=True).returncode == 0:
                try:
                    results["docker pull"] = timed(lambda: run([*docker, "pull", "-q", ref]),
                                                   lambda: subprocess.run([*docker, "rmi", "-f", ref],
                                                                          capture_output=True))
                except RuntimeError as err:
                    print(f"docker: skipped ({err})")
                subprocess.run([*docker, "rmi", "-f", ref], capture_output=True)
        if shutil.which("podman"):
            podman = ["podman", "--root", str(base / "podman"), "--runroot", str(base / "podman-run"),
                      "--cgroup-manager", "cgroupfs"]
            try:
                results["podman pull"] = timed(lambda: run([*podman, "pull", "-q", "--tls-verify=false", ref]),
                                               lambda: subprocess.run([*podman, "rmi", "-f", ref],
                                                                      capture_output=True))
            except RuntimeError as err:
                print(f"podman: skipped ({err})")
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
