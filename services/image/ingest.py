"""One import or load in flight: stage every blob and layer, then publish all or nothing.

Layers are unpacked and blobs written into scratch space while the bytes
stream in, outside the store lock; only when every digest checked out does
`publish` rename them into place and write the rows, under the lock. Any
error, or a crash, leaves nothing reachable: `abort` deletes the scratch
files and start-up sweeps whatever a crash left.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.image.content import LocalBlobWriter
from services.image.layers import CORRUPT_ERRORS, StagedLayer, unpack
from services.image.store import ImageRecord, ImageStore, NewImage
from services.image.streams import HashingReader, Peekable, Readable, compression_of, decompressed


@dataclass
class LayerResult:
    diff_id: str
    chain_id: str
    blob_digest: str
    blob_size: int
    compression: str  # of the stored blob: "" (plain tar), "gzip", "zstd", ...


def next_chain(parent: str | None, diff_id: str) -> str:
    if parent is None:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


class Ingest:
    """Collects staged blobs and layers for one operation; use as a context manager."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self._blobs: dict[str, LocalBlobWriter] = {}
        self._layers: dict[str, StagedLayer] = {}
        self._sizes: dict[str, int] = {}
        self._leases: list[str] = []
        self._done = False
        # A pull adds layers from several threads at once.
        self._mutex = threading.Lock()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def _lease(self, name: str) -> None:
        self.store.lease(name)
        with self._mutex:
            self._leases.append(name)

    def hold(self, name: str) -> None:
        """Keep an already stored layer or blob out of GC until this operation ends."""
        self._lease(name)

    def add_blob(self, data: bytes, expected: str | None = None) -> str:
        """Stage a small blob (config, manifest); verified against `expected` if given."""
        writer = self.store.content.writer(expected)
        try:
            writer.write(data)
            digest = writer.finish()
        except BaseException:
            writer.abort()
            raise
        self._keep_blob(digest, writer)
        return digest

    def _keep_blob(self, digest: str, writer: LocalBlobWriter) -> None:
        self._lease(digest)
        with self._mutex:
            if digest in self._blobs or self.store.content.exists(digest):
                writer.abort()
            else:
                self._blobs[digest] = writer

    def add_layer(self, src: Readable, *, parent_chain: str | None, diff_id: str | None = None,
                  blob_digest: str | None = None, store_uncompressed: bool = False) -> LayerResult:
        """Stream one layer: store its blob, check its digests, unpack it unless already there.

        `diff_id` (from the image config) and `blob_digest` (from a descriptor) are
        verified when given. With `store_uncompressed` the stored blob is the
        uncompressed tar (import), otherwise the bytes exactly as received.
        """
        writer = self.store.content.writer(blob_digest)
        staged: StagedLayer | None = None
        try:
            src = Peekable(src)
            if store_uncompressed:
                plain, _ = decompressed(src)
                tee = HashingReader(plain, writer.write)
                compression = ""
            else:
                tee = HashingReader(src, writer.write)
                compression = compression_of(src.peek(6))
            chain = next_chain(parent_chain, diff_id) if diff_id else None
            if chain is not None:
                self._lease(chain)
            if chain is not None and (chain in self._layers or self.store.layer_size(chain) is not None):
                got = unpack(tee, None).diff_id  # already unpacked: only verify the bytes
                staged = None
            else:
                staged = self.store.layers.stage(tee)
                got = staged.diff_id
            tee.drain()
            if diff_id is not None and got != diff_id:
                raise InvalidArgument(f"layer digest mismatch: expected diff_id {diff_id}, content has {got}")
            digest = writer.finish()
        except CORRUPT_ERRORS as exc:
            writer.abort()
            if staged is not None:
                self.store.layers.discard(staged)
            raise InvalidArgument(f"invalid layer tar: {exc}") from None
        except BaseException:
            writer.abort()
            if staged is not None:
                self.store.layers.discard(staged)
            raise
        if chain is None:
            chain = next_chain(parent_chain, got)
            self._lease(chain)
        if staged is not None:
            with self._mutex:
                if chain in self._layers or self.store.layer_size(chain) is not None:
                    self.store.layers.discard(staged)
                else:
                    self._layers[chain] = staged
                    self._sizes[chain] = staged.size
        self._keep_blob(digest, writer)
        return LayerResult(got, chain, digest, writer.size, compression)

    def publish(self, images: list[NewImage]) -> list[ImageRecord]:
        """Rename every staged file into place, then write the rows, under the store lock."""
        with self.store.lock:
            for writer in self._blobs.values():
                writer.commit()
            sizes = dict(self._sizes)
            for chain, staged in self._layers.items():
                self.store.layers.commit(staged, chain)
            self._blobs.clear()
            self._layers.clear()
            records = []
            for new in images:
                for chain in new_chains(new):
                    if chain not in sizes:
                        size = self.store.layer_size(chain)
                        if size is None:
                            raise InvalidArgument(f"layer {chain} is missing from the store")
                        sizes[chain] = size
                records.append(self.store.record(new, sizes))
        return records

    def finish(self) -> None:
        """End the operation: release leases and discard whatever was not published."""
        self.abort()
        self._done = True

    def abort(self) -> None:
        for writer in self._blobs.values():
            writer.abort()
        for staged in self._layers.values():
            self.store.layers.discard(staged)
        self._blobs.clear()
        self._layers.clear()
        for name in self._leases:
            self.store.release(name)
        self._leases.clear()


def new_chains(new: NewImage) -> list[str]:
    chains: list[str] = []
    for d in new.diff_ids:
        chains.append(next_chain(chains[-1] if chains else None, d))
    return chains
