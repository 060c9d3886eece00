"""`docker push`: upload an image's blobs and manifest to a registry.

Per blob, cheapest first: HEAD (the registry already has it), a
cross-repository mount from another repository of the same registry that we
know holds it (no bytes sent), then an upload: monolithic (POST, then one PUT
with the whole blob) up to `chunk_size`, chunked (PATCH per chunk with
Content-Range, then PUT) above it. The manifest goes last, by tag or by
digest, exactly as stored, so its digest is the one we already know. Foreign
(non-distributable) layers that name URLs are not uploaded: pullers fetch
them from those URLs.
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound
from services.image import distribution, reference
from services.image.distribution import Descriptor, Manifest
from services.image.pull import LayerEvent, Progress, StatusLine, _quiet
from services.image.registry import Cancelled, Credentials, RegistryClient, RegistryError, Settings
from services.image.store import ImageStore

DEFAULT_CHUNK_SIZE = 16 << 20
COPY_BLOCK = 1 << 20


@dataclass
class PushOutcome:
    reference: str
    tag: str
    digest: str
    size: int


def _with_digest(location: str, digest: str) -> str:
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + [("digest", digest)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class Uploader:
    """Blob uploads to one repository."""

    def __init__(self, store: ImageStore, client: RegistryClient, repo: str, scopes: tuple[str, ...],
                 progress: Progress, cancel: threading.Event, chunk_size: int) -> None:
        self.store = store
        self.client = client
        self.repo = repo
        self.scopes = scopes
        self.progress = progress
        self.cancel = cancel
        self.chunk_size = max(1, chunk_size)
        self.stats = {"exists": 0, "mounted": 0, "monolithic": 0, "chunked": 0}

    def _location(self, resp_location: str) -> str:
        if not resp_location:
            raise RegistryError(f"registry {self.client.host} started an upload without a Location")
        return urllib.parse.urljoin(self.client.base + "/", resp_location)

    def push_blob(self, desc: Descriptor, sources: list[str], show: bool = True) -> str:
        """Make `desc` present in the repository; returns how ("exists", "mounted", ...)."""
        if self.cancel.is_set():
            raise Cancelled("cancelled")
        resp = self.client.request("HEAD", f"/v2/{self.repo}/blobs/{desc.digest}", scopes=self.scopes)
        resp.close()
        if resp.status == 200:
            self.stats["exists"] += 1
            if show:
                self.progress(LayerEvent(desc.short, "Layer already exists", desc.size, desc.size))
            return "exists"
        if resp.status != 404:
            raise self.client.error(resp, "HEAD")
        location = ""
        for src in sources:
            scopes = (*self.scopes, f"repository:{src}:pull")
            q = urllib.parse.urlencode({"mount": desc.digest, "from": src})
            resp = self.client.request("POST", f"/v2/{self.repo}/blobs/uploads/?{q}", scopes=scopes,
                                       headers={"Content-Length": "0"})
            resp.read()
            resp.close()
            if resp.status == 201:
                self.stats["mounted"] += 1
                if show:
                    self.progress(LayerEvent(desc.short, f"Mounted from {src}", desc.size, desc.size))
                return "mounted"
            if resp.status == 202:  # not mountable; the registry opened an upload session instead
                location = self._location(resp.header("Location"))
                break
        if not location:
            resp = self.client.request("POST", f"/v2/{self.repo}/blobs/uploads/", scopes=self.scopes,
                                       headers={"Content-Length": "0"})
            if resp.status != 202:
                raise self.client.error(resp, "POST")
            resp.read()
            resp.close()
            location = self._location(resp.header("Location"))
        if desc.size <= self.chunk_size:
            self._monolithic(desc, location, show)
            self.stats["monolithic"] += 1
            how = "monolithic"
        else:
            self._chunked(desc, location, show)
            self.stats["chunked"] += 1
            how = "chunked"
        if show:
            self.progress(LayerEvent(desc.short, "Pushed", desc.size, desc.size))
        return how

    def _monolithic(self, desc: Descriptor, location: str, show: bool) -> None:
        if show:
            self.progress(LayerEvent(desc.short, "Pushing", 0, desc.size))
        resp = self.client.request("PUT", _with_digest(location, desc.digest), scopes=self.scopes,
                                   headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(desc.size)},
                                   body=lambda: self.store.content.open(desc.digest))
        if resp.status != 201:
            raise self.client.error(resp, "PUT")
        resp.close()

    def _chunked(self, desc: Descriptor, location: str, show: bool) -> None:
        offset = 0
        with self.store.content.open(desc.digest) as f:
            while chunk := f.read(self.chunk_size):
                if self.cancel.is_set():
                    raise Cancelled("cancelled")
                end = offset + len(chunk) - 1
                resp = self.client.request("PATCH", location, scopes=self.scopes, body=chunk, headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                    "Content-Range": f"{offset}-{end}"})
                if resp.status != 202:
                    raise self.client.error(resp, "PATCH")
                resp.read()
                resp.close()
                location = self._location(resp.header("Location") or location)
                offset = end + 1
                if show:
                    self.progress(LayerEvent(desc.short, "Pushing", offset, desc.size))
        resp = self.client.request("PUT", _with_digest(location, desc.digest), scopes=self.scopes,
                                   headers={"Content-Length": "0"})
        if resp.status != 201:
            raise self.client.error(resp, "PUT")
        resp.close()


def mount_sources(store: ImageStore, domain: str, repo: str, digest: str) -> list[str]:
    """Other repositories on the same registry that hold `digest`, from our own records."""
    found: list[str] = []
    for rec in store.list():
        if digest not in rec.row.blobs:
            continue
        for name in [*rec.tags, *rec.digests]:
            ref = reference.parse(name)
            if ref.domain == domain and ref.path != repo and ref.path not in found:
                found.append(ref.path)
    return found


def push(store: ImageStore, text: str, *, creds: Credentials | None = None, settings: Settings | None = None,
         progress: Progress = _quiet, cancel: threading.Event | None = None,
         chunk_size: int = DEFAULT_CHUNK_SIZE) -> PushOutcome:
    """Push the image `text` names (a tag, or name@digest) to its registry."""
    ref = reference.parse(text)
    if ref.digest is None:
        ref = ref.with_default_tag()
    try:
        rec = store.inspect(str(ref))
    except NotFound:
        raise NotFound(f"An image does not exist locally with the tag: {ref.familiar()}") from None
    manifest_digest = rec.row.manifest_digest
    if ref.digest is not None and ref.digest != manifest_digest:
        raise InvalidArgument(f"cannot push {ref.familiar()}: only the image's own manifest {manifest_digest} "
                              "can be pushed by digest")
    manifest_bytes = store.content.read(manifest_digest)
    doc = distribution.parse(manifest_bytes)
    if not isinstance(doc, Manifest):
        raise InvalidArgument(f"cannot push {ref.familiar()}: its stored manifest is an index")
    settings = settings or Settings.load()
    base = settings.endpoints(ref.domain, for_push=True)[0]
    client = RegistryClient(base, creds)
    scopes = (f"repository:{ref.path}:pull,push",)
    cancel = cancel or threading.Event()
    uploader = Uploader(store, client, ref.path, scopes, progress, cancel, chunk_size)
    progress(StatusLine(f"The push refers to repository [{ref.familiar_name}]"))
    for layer in reversed(doc.layers):
        progress(LayerEvent(layer.short, "Preparing", 0, layer.size))
    for layer in reversed(doc.layers):
        if layer.media_type in distribution.FOREIGN_TYPES and layer.urls:
            # Non-distributable: whoever pulls fetches it from its URLs (the image spec's
            # advice, and Docker's behaviour); without URLs the registry is the only source.
            progress(LayerEvent(layer.short, "Skipped foreign layer", layer.size, layer.size))
            continue
        uploader.push_blob(layer, mount_sources(store, ref.domain, ref.path, layer.digest))
    uploader.push_blob(doc.config, mount_sources(store, ref.domain, ref.path, doc.config.digest), show=False)

    ident = ref.digest or ref.tag or "latest"
    resp = client.request("PUT", f"/v2/{ref.path}/manifests/{ident}", scopes=scopes, body=manifest_bytes,
                          headers={"Content-Type": doc.media_type, "Content-Length": str(len(manifest_bytes))})
    if resp.status not in (200, 201):
        raise client.error(resp, "PUT")
    resp.close()
    echoed = resp.header("Docker-Content-Digest")
    if echoed and echoed != manifest_digest:
        raise RegistryError(f"registry stored manifest {echoed}, expected {manifest_digest}")
    store.add_names(rec.row.id, [], [f"{ref.name}@{manifest_digest}"])
    label = ref.tag or manifest_digest
    progress(StatusLine(f"{label}: digest: {manifest_digest} size: {len(manifest_bytes)}"))
    outcome = PushOutcome(ref.familiar(), ref.tag or "", manifest_digest, len(manifest_bytes))
    return outcome
