"""Build test images from what Debian ships, so the suite never needs a network.

``python -m tests.images OUT.tar`` writes a busybox rootfs tar (for ``berth import``);
the helpers below also write ``docker save`` and OCI image-layout archives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BUSYBOX = Path(shutil.which("busybox") or "/bin/busybox")


def _add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, mode: int = 0o644,
         type_: bytes = tarfile.REGTYPE, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = linkname
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def busybox_rootfs_bytes(extra: dict[str, bytes] | None = None) -> bytes:
    """A minimal rootfs: static busybox, its applet links, passwd and group."""
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root",
                  "var", "var/www", "home"):
            _add(tar, d, type_=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)
        for applet in applets:
            if applet != "bin/busybox":
                _add(tar, applet, type_=tarfile.SYMTYPE, linkname="/bin/busybox")
        _add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        _add(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
        _add(tar, "var/www/index.html", data=b"hello from berth\n")
        for name, data in (extra or {}).items():
            _add(tar, name, data=data, mode=0o755)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(diff_ids: list[str], cmd: list[str] | None = None, env: list[str] | None = None) -> bytes:
    return json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd or ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "tests/images.py"} for _ in diff_ids],
    }).encode()


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    """A layer from {path: content}; None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            if data is None:
                _add(tar, name, type_=tarfile.DIRTYPE, mode=0o755)
            else:
                _add(tar, name, data=data, mode=0o755)
    return buf.getvalue()


def docker_save_archive(layers: list[bytes], repo_tag: str, cmd: list[str] | None = None) -> bytes:
    """A `docker save` tarball: manifest.json, config JSON and one dir per layer."""
    diff_ids = [_sha(layer) for layer in layers]
    config = image_config(diff_ids, cmd)
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        names = []
        for layer in layers:
            name = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
            _add(tar, name.split("/")[0], type_=tarfile.DIRTYPE, mode=0o755)
            _add(tar, name, data=layer)
            names.append(name)
        _add(tar, config_name, data=config)
        manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": names}]
        _add(tar, "manifest.json", data=json.dumps(manifest).encode())
        _add(tar, "repositories", data=b"{}")
    return buf.getvalue()


def oci_layout_archive(layers: list[bytes], ref_name: str, cmd: list[str] | None = None) -> bytes:
    """An OCI image-layout archive with gzip-compressed layers."""
    diff_ids = [_sha(layer) for layer in layers]
    config = image_config(diff_ids, cmd)
    blobs: dict[str, bytes] = {}
    layer_descs = []
    for layer in layers:
        gz = gzip.compress(layer, mtime=0)
        blobs[_sha(gz)] = gz
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": _sha(gz), "size": len(gz)})
    blobs[_sha(config)] = config
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha(config),
                   "size": len(config)},
        "layers": layer_descs,
    }).encode()
    blobs[_sha(manifest)] = manifest
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest),
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    }).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "oci-layout", data=b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", data=index)
        for d in ("blobs", "blobs/sha256"):
            _add(tar, d, type_=tarfile.DIRTYPE, mode=0o755)
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest.split(":")[1], data=data)
    return buf.getvalue()


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "busybox-rootfs.tar")
    out.write_bytes(busybox_rootfs_bytes())
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
