"""Manifests and indexes as registries serve them: parse, validate, pick a platform.

Everything here is pure (bytes in, dataclasses out) so the rules are unit
tested without a registry: which media types Berth accepts, what makes a
manifest malformed, and Docker's platform matching (`linux/arm64` matches a
`v8` variant, `linux/arm` means `v7`).
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument
from services.image.archive import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_OCI_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
)
from services.image.content import DIGEST_RE
from services.image.imageconfig import host_arch

MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MT_DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                     "application/vnd.docker.distribution.manifest.v1+prettyjws")

CONFIG_TYPES = {MT_DOCKER_CONFIG, MT_OCI_CONFIG}
LAYER_TYPES = {
    MT_DOCKER_LAYER: "gzip", MT_DOCKER_FOREIGN: "gzip",
    MT_OCI_LAYER: "", MT_OCI_LAYER + "+gzip": "gzip", MT_OCI_LAYER + "+zstd": "zstd",
    MT_OCI_NONDIST: "", MT_OCI_NONDIST + "+gzip": "gzip", MT_OCI_NONDIST + "+zstd": "zstd",
}
FOREIGN_TYPES = {MT_DOCKER_FOREIGN, MT_OCI_NONDIST, MT_OCI_NONDIST + "+gzip", MT_OCI_NONDIST + "+zstd"}
ACCEPT = ", ".join([MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST])
MANIFEST_LIMIT = 4 << 20
CONFIG_LIMIT = 8 << 20
MAX_SIZE = (1 << 63) - 1  # descriptor sizes are int64


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: list[str] = field(default_factory=list)
    platform: Platform | None = None

    @property
    def short(self) -> str:
        """The 12 hex digits Docker prints for a layer."""
        return self.digest.split(":", 1)[1][:12]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]


@dataclass
class Index:
    media_type: str
    manifests: list[Descriptor]


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
                 "i386": "386", "i686": "386"}


def normalize_platform(p: Platform) -> Platform:
    """containerd's normalisation: arm64 has no variant unless v8 is implied, arm means v7."""
    os_ = (p.os or "linux").lower()
    arch = _ARCH_ALIASES.get(p.architecture.lower(), p.architecture.lower())
    variant = p.variant.lower()
    if arch == "arm64" and variant in ("8", "v8"):
        variant = ""
    if arch == "arm" and variant in ("", "7"):
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""
    return Platform(os_, arch, variant)


def host_platform() -> Platform:
    variant = ""
    if host_arch() == "arm":
        machine = _platform.machine()
        variant = "v6" if machine.startswith("armv6") else "v7"
    return normalize_platform(Platform("linux", host_arch(), variant))


def parse_platform(text: str) -> Platform:
    """`linux/arm64`, `linux/arm/v7`, `arm64` (os defaults to linux)."""
    parts = [p for p in text.strip().split("/")]
    if not text.strip() or len(parts) > 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {text!r}: expected os/arch[/variant]")
    if len(parts) == 1:
        parts = ["linux", parts[0]]
    return normalize_platform(Platform(*parts))


def _descriptor(obj: Any, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"malformed manifest: {what} is not an object")
    digest, size, mt = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise InvalidArgument(f"malformed manifest: {what} has an invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise InvalidArgument(f"malformed manifest: {what} has an invalid size {size!r}")
    if not isinstance(mt, str):
        raise InvalidArgument(f"malformed manifest: {what} has an invalid mediaType")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidArgument(f"malformed manifest: {what} has invalid urls")
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = Platform(str(plat.get("os") or ""), str(plat.get("architecture") or ""),
                            str(plat.get("variant") or ""))
    return Descriptor(mt, digest, size, list(urls), platform)


def parse(data: bytes, content_type: str = "") -> Manifest | Index:
    """Parse what a registry served for a manifest reference.

    The media type comes from the document when it names one, else from the
    Content-Type header, else from its shape (OCI allows omitting it).
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed manifest: not valid JSON ({exc})") from None
    except RecursionError:  # hostile nesting: Python's parser recurses once per level
        raise InvalidArgument("malformed manifest: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("malformed manifest: not a JSON object")
    header_type = content_type.split(";", 1)[0].strip()
    media_type = doc.get("mediaType") or header_type
    if media_type in MT_DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise InvalidArgument("unsupported media type: Docker image manifest schema 1 is deprecated and not "
                              "supported; push the image again with a current client")
    if media_type not in INDEX_TYPES | MANIFEST_TYPES:
        if "manifests" in doc:
            media_type = MT_OCI_INDEX
        elif "config" in doc and "layers" in doc and media_type in ("", "application/json",
                                                                     "application/octet-stream"):
            media_type = MT_OCI_MANIFEST
        else:
            raise InvalidArgument(f"unsupported media type {media_type or header_type or '(none)'!r}")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"malformed manifest: schemaVersion is {doc.get('schemaVersion')!r}, expected 2")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument("malformed manifest: index has no manifests list")
        return Index(media_type, [_descriptor(e, f"manifests[{i}]") for i, e in enumerate(entries)])
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument("malformed manifest: layers is not a list")
    config = _descriptor(doc.get("config"), "config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidArgument(f"unsupported media type {config.media_type!r} for the image config: "
                              "this is not a container image")
    descs = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
    for d in descs:
        if d.media_type not in LAYER_TYPES:
            raise InvalidArgument(f"unsupported media type {d.media_type!r} for layer {d.digest}")
    return Manifest(media_type, config, descs)


def choose(index: Index, want: Platform, where: str) -> Descriptor:
    """The manifest for `want`; a clear error listing what the index offers otherwise."""
    want = normalize_platform(want)
    candidates = []
    for d in index.manifests:
        if d.platform is None or d.media_type not in MANIFEST_TYPES | INDEX_TYPES | {""}:
            continue
        have = normalize_platform(d.platform)
        if have.os == want.os and have.architecture == want.architecture:
            if have.variant == want.variant:
                return d
            if not want.variant:
                candidates.append(d)
    if candidates:
        return candidates[0]
    available = sorted({str(normalize_platform(d.platform)) for d in index.manifests
                        if d.platform is not None and d.platform.os not in ("", "unknown")})
    raise InvalidArgument(f"no matching manifest for {want} in the manifest list entries of {where} "
                          f"(available: {', '.join(available) or 'none'})")
