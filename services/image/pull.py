"""`docker pull`: resolve a reference on a registry and store the image, all or nothing.

One pass per layer: bytes arrive from the socket, are hashed and written to a
scratch blob, decompressed, hashed again (diff id) and unpacked, all while
streaming (`Ingest.add_layer`). Layers download concurrently (bounded, six
at a time: a browser's per-host limit), so the inflate and file creation of one
layer overlap the others'. Nothing is visible until every digest checked out: then `publish`
renames blobs and layers into place and writes the rows under the store lock.
A crash leaves only scratch files, swept at the next start; the next pull
skips whatever is already stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from services.common.errors import BerthError, InvalidArgument, NotFound
from services.image import distribution, reference
from services.image.archive import _new_image
from services.image.content import sha256_digest
from services.image.distribution import Descriptor, Index, Manifest, Platform
from services.image.imageconfig import parse_config
from services.image.ingest import Ingest, LayerResult
from services.image.layers import chain_ids
from services.image.reference import Reference
from services.image.registry import (
    BlobReader,
    Cancelled,
    Credentials,
    RegistryClient,
    RegistryError,
    Settings,
    Unauthorized,
)
from services.image.store import ImageStore

log = logging.getLogger("berth.image.pull")

# Layers in flight at once. Each is a whole pipeline (download, verify, inflate,
# unpack), not only a download, so a layer of thousands of small files, whose
# file creation is the longest step, must not wait for a slot behind big ones:
# measured on the bench image, 5 at once took half the time of Docker's 3.
MAX_CONCURRENT_DOWNLOADS = 6
PROGRESS_INTERVAL = 0.1  # seconds between progress events per layer


@dataclass
class StatusLine:
    text: str


@dataclass
class LayerEvent:
    id: str
    status: str
    current: int = 0
    total: int = 0


@dataclass
class PullOutcome:
    reference: str  # familiar
    digest: str  # what the reference resolved to (index or manifest)
    image_id: str
    up_to_date: bool


Progress = Callable[[StatusLine | LayerEvent], None]


def _quiet(_event: StatusLine | LayerEvent) -> None:
    pass


class Resolver:
    """Fetch manifests and small blobs from a repository, trying mirrors in order."""

    def __init__(self, ref: Reference, creds: Credentials | None, settings: Settings, push: bool = False) -> None:
        self.ref = ref
        self.repo = ref.path
        self.scopes: tuple[str, ...] = (f"repository:{ref.path}:pull" + (",push" if push else ""),)
        self.clients = [RegistryClient(url, creds, settings=settings)
                        for url in settings.endpoints(ref.domain, for_push=push)]
        self.client = self.clients[-1]

    def get_manifest(self, ident: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest by tag or digest, verified when by digest."""
        last: BerthError | None = None
        for client in self.clients:
            try:
                data, media_type, digest = self._get_manifest(client, ident)
            except (RegistryError, NotFound, Unauthorized) as exc:
                if client is self.clients[-1]:
                    raise
                log.info("mirror %s failed for %s: %s", client.base, ident, exc)
                last = exc
                continue
            self.client = client  # blobs come from where the manifest came from
            return data, media_type, digest
        raise last or RegistryError("no registry endpoint")

    def _get_manifest(self, client: RegistryClient, ident: str) -> tuple[bytes, str, str]:
        resp = client.request("GET", f"/v2/{self.repo}/manifests/{ident}", scopes=self.scopes,
                              headers={"Accept": distribution.ACCEPT})
        if resp.status != 200:
            err = client.error(resp)
            if isinstance(err, NotFound):
                raise NotFound(f"manifest for {self.ref.familiar()} not found: {err}")
            raise err
        try:
            data = resp.read_limited(distribution.MANIFEST_LIMIT)
        finally:
            resp.close()
        digest = sha256_digest(data)
        if ident.startswith("sha256:") and digest != ident:
            raise InvalidArgument(f"digest mismatch for manifest {ident}: content hashes to {digest}")
        header = resp.header("Docker-Content-Digest")
        if header.startswith("sha256:") and header != digest:
            raise InvalidArgument(f"digest mismatch for manifest {header}: content hashes to {digest}")
        return data, resp.header("Content-Type"), digest

    def get_blob(self, desc: Descriptor, limit: int) -> bytes:
        if desc.size > limit:
            raise InvalidArgument(f"blob {desc.digest} is too large ({desc.size} bytes)")
        reader = BlobReader(self.client, self.repo, desc.digest, desc.size, scopes=self.scopes)
        try:
            chunks = []
            while chunk := reader.read(1 << 20):
                chunks.append(chunk)
        finally:
            reader.close()
        data = b"".join(chunks)
        got = sha256_digest(data)
        if got != desc.digest:
            raise InvalidArgument(f"digest mismatch for blob {desc.digest}: content hashes to {got}")
        return data


def resolve(resolver: Resolver, ident: str, want: Platform) -> tuple[str, bytes, str, Manifest]:
    """Follow an index down to the manifest for `want`: (top digest, manifest bytes, its digest, parsed)."""
    data, media_type, digest = resolver.get_manifest(ident)
    top = digest
    doc = distribution.parse(data, media_type)
    depth = 0
    while isinstance(doc, Index):
        depth += 1
        if depth > 4:
            raise InvalidArgument("malformed manifest: indexes nested too deeply")
        desc = distribution.choose(doc, want, resolver.ref.familiar())
        data, media_type, digest = resolver.get_manifest(desc.digest)
        doc = distribution.parse(data, desc.media_type or media_type)
    return top, data, digest, doc


class _Throttle:
    """Progress for one layer, at most every PROGRESS_INTERVAL."""

    def __init__(self, progress: Progress, layer_id: str, total: int) -> None:
        self.progress = progress
        self.id = layer_id
        self.total = total
        self.current = 0
        self._last = 0.0

    def __call__(self, n: int) -> None:
        self.current += n
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self.progress(LayerEvent(self.id, "Downloading", self.current, self.total))


def pull(store: ImageStore, text: str, *, creds: Credentials | None = None, platform: str = "",
         settings: Settings | None = None, progress: Progress = _quiet,
         cancel: threading.Event | None = None, max_concurrent: int = MAX_CONCURRENT_DOWNLOADS) -> PullOutcome:
    """Pull `text` (a reference) into `store`; see the module docstring."""
    ref = reference.parse(text)
    if ref.digest is None:
        ref = ref.with_default_tag()
    settings = settings or Settings.load()
    want = distribution.parse_platform(platform) if platform else distribution.host_platform()
    cancel = cancel or threading.Event()
    resolver = Resolver(ref, creds, settings)
    ident = ref.digest or ref.tag or "latest"
    try:
        top, manifest_bytes, manifest_digest, manifest = resolve(resolver, ident, want)
        # Once the registry answered, as Docker does: an unreachable one fails in one line.
        progress(StatusLine(f"{ident}: Pulling from {ref.path}"))
        image_id = manifest.config.digest
        tags = [str(ref)] if ref.tag and not ref.digest else []
        repo_digests = [f"{ref.name}@{top}"]
        outcome = PullOutcome(ref.familiar(), top, image_id, up_to_date=False)
        if _complete(store, image_id, manifest_digest):  # nothing to download, not even the config
            store.add_names(image_id, tags, repo_digests)
            progress(StatusLine(f"Digest: {top}"))
            progress(StatusLine(f"Status: Image is up to date for {ref.familiar()}"))
            outcome.up_to_date = True
            return outcome
        config_bytes = resolver.get_blob(manifest.config, distribution.CONFIG_LIMIT)
    except Unauthorized as exc:
        raise Unauthorized(f"pull access denied for {ref.familiar_name}, repository does not exist or may "
                           f"require 'berth login': {exc}") from None
    cfg = parse_config(config_bytes)
    if len(cfg.diff_ids) != len(manifest.layers):
        raise InvalidArgument(f"malformed manifest: {len(manifest.layers)} layers but {len(cfg.diff_ids)} "
                              "diff_ids in the image config")

    with Ingest(store) as ingest:
        config_digest = ingest.add_blob(config_bytes, manifest.config.digest)
        stored_manifest = ingest.add_blob(manifest_bytes, manifest_digest)
        layers = _fetch_layers(store, ingest, resolver, manifest.layers, cfg.diff_ids, progress, cancel,
                               max_concurrent)
        new = _new_image(config_bytes, config_digest, stored_manifest, layers, tags)
        new.repo_digests = repo_digests
        ingest.publish([new])
        ingest.finish()
    progress(StatusLine(f"Digest: {top}"))
    progress(StatusLine(f"Status: Downloaded newer image for {ref.familiar()}"))
    return outcome


def _complete(store: ImageStore, image_id: str, manifest_digest: str) -> bool:
    """The image, its manifest and every layer are already stored."""
    try:
        rec = store.inspect(image_id)
    except NotFound:
        return False
    if rec.row.manifest_digest != manifest_digest:
        return False
    return (all(store.layer_size(c) is not None for c in chain_ids(rec.row.diff_ids))
            and all(store.content.exists(b) for b in rec.row.blobs))


def _fetch_layers(store: ImageStore, ingest: Ingest, resolver: Resolver, descs: list[Descriptor],
                  diff_ids: list[str], progress: Progress, cancel: threading.Event,
                  max_concurrent: int) -> list[LayerResult]:
    """Download, verify and unpack every layer, `max_concurrent` at a time."""
    chains = chain_ids(diff_ids)
    for d in descs:
        progress(LayerEvent(d.short, "Pulling fs layer", 0, d.size))

    def one(i: int) -> LayerResult:
        desc, chain = descs[i], chains[i]
        parent = chains[i - 1] if i else None
        ingest.hold(chain)
        ingest.hold(desc.digest)
        if store.layer_size(chain) is not None and store.content.exists(desc.digest):
            progress(LayerEvent(desc.short, "Already exists", desc.size, desc.size))
            return LayerResult(diff_ids[i], chain, desc.digest, desc.size,
                               distribution.LAYER_TYPES.get(desc.media_type, ""))
        if store.content.exists(desc.digest):  # blob here, layer not unpacked: no download
            with store.content.open(desc.digest) as f:
                result = ingest.add_layer(f, parent_chain=parent, diff_id=diff_ids[i], blob_digest=desc.digest)
            progress(LayerEvent(desc.short, "Pull complete", desc.size, desc.size))
            return result
        if cancel.is_set():
            raise Cancelled("cancelled")
        counter = _Throttle(progress, desc.short, desc.size)
        reader = BlobReader(resolver.client, resolver.repo, desc.digest, desc.size, scopes=resolver.scopes,
                            on_bytes=counter, cancel=cancel, urls=desc.urls)
        try:
            result = ingest.add_layer(reader, parent_chain=parent, diff_id=diff_ids[i], blob_digest=desc.digest)
        except InvalidArgument as exc:
            # Corrupt bytes usually break decompression before the digest can be
            # compared: name the blob either way, so the user knows which one.
            if desc.digest in str(exc):
                raise
            raise InvalidArgument(f"error pulling layer {desc.digest}: {exc}") from None
        finally:
            reader.close()
        if result.blob_size != desc.size:
            raise InvalidArgument(f"layer {desc.digest} is {result.blob_size} bytes, its descriptor says {desc.size}")
        progress(LayerEvent(desc.short, "Pull complete", desc.size, desc.size))
        return result

    if not descs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(max_concurrent, len(descs))),
                            thread_name_prefix="pull-layer") as pool:
        futures = [pool.submit(one, i) for i in range(len(descs))]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            cancel.set()  # the others stop at their next read
            wait(futures)
            raise _first_error(futures)
    return [f.result() for f in futures]


def _first_error(futures: list) -> BaseException:  # noqa: ANN001 - concurrent futures
    """The root cause: a sibling's Cancelled is only a consequence."""
    errors = [f.exception() for f in futures if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, Cancelled)]
    return (real or errors)[0]
