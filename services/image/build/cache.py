"""The build cache: what each step produced, keyed by everything that could change it.

A key covers the state before the step (the whole image config, env included,
and the layer chain), the instruction after substitution, the build args in
effect and, for COPY and ADD, a hash of the copied files' contents, modes and
owners. The value is the state after the step. Rows live in the image service's
DB (table `build_cache`, on the store's Base and engine). Each row leases its
layers and blobs once, so the store's garbage collection spares them while the
row exists; `prune` deletes rows and returns their leases, and then whatever no
image and no other row needs is collected (`docker builder prune`). A row whose
layers went missing is simply a miss.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, String, Text, delete
from sqlalchemy.orm import Mapped, mapped_column

from services.image.layers import chain_ids
from services.image.models import Base
from services.image.store import ImageStore


class BuildCacheRow(Base):
    __tablename__ = "build_cache"

    key: Mapped[str] = mapped_column(String(71), primary_key=True)
    state_json: Mapped[str] = mapped_column(Text)
    created_unix: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass
class State:
    """An image under construction: its config (the whole config JSON) and its layers."""

    config: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)  # {mediaType, digest, size, diffID}

    @property
    def diff_ids(self) -> list[str]:
        return [layer["diffID"] for layer in self.layers]

    @property
    def chains(self) -> list[str]:
        return chain_ids(self.diff_ids)

    @property
    def blobs(self) -> list[str]:
        return [layer["digest"] for layer in self.layers]

    def to_json(self) -> str:
        return json.dumps({"config": self.config, "layers": self.layers}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> State:
        data = json.loads(text)
        return cls(data["config"], data["layers"])

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json().encode()).hexdigest()

    def copy(self) -> State:
        return State.from_json(self.to_json())


def step_key(parent: State, instruction: str, build_args: dict[str, str], content: str = "") -> str:
    text = json.dumps([parent.digest(), instruction, sorted(build_args.items()), content], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)  # record ids
    space_reclaimed: int = 0


@dataclass
class Usage:
    total: int
    active: int
    size: int  # bytes of layers and blobs that only the cache keeps
    reclaimable: int


def record_id(key: str) -> str:
    """The id `builder prune` prints: 25 characters, as BuildKit's record ids are."""
    return key.removeprefix("sha256:")[:25]


class BuildCache:
    """Cache rows plus the leases they hold; every change happens under the store's lock,
    so a build's commit, a lookup, a prune and garbage collection never interleave."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self._sessions = store._sessions  # noqa: SLF001 - the image service's own DB
        BuildCacheRow.__table__.create(self._sessions.kw["bind"], checkfirst=True)  # type: ignore[attr-defined]
        self._held: dict[str, list[str]] = {}  # key -> the names its lease covers
        self._states: dict[str, State] = {}  # key -> its state (what the lease is for)
        self._in_use: Counter[str] = Counter()  # keys running builds looked up or wrote
        with self._sessions() as s:
            rows = s.query(BuildCacheRow).all()
        for row in rows:
            self._lease(row.key, State.from_json(row.state_json))

    def _lease(self, key: str, state: State) -> None:
        with self.store.lock:
            self._unlease(key)
            names = [*state.chains, *state.blobs]
            for name in names:
                self.store.lease(name)
            self._held[key] = names
            self._states[key] = state

    def _unlease(self, key: str) -> None:
        self._states.pop(key, None)
        for name in self._held.pop(key, []):
            self.store.release(name)

    def get(self, key: str) -> State | None:
        with self._sessions() as s:
            row = s.get(BuildCacheRow, key)
        if row is None:
            return None
        state = State.from_json(row.state_json)
        if not all(self.store.layer_size(c) is not None for c in state.chains) or \
                not all(self.store.content.exists(b) for b in state.blobs):
            return None
        return state

    def put(self, key: str, state: State) -> None:
        with self.store.lock:
            with self._sessions() as s, s.begin():
                s.execute(delete(BuildCacheRow).where(BuildCacheRow.key == key))
                s.add(BuildCacheRow(key=key, state_json=state.to_json(), created_unix=int(time.time())))
            self._lease(key, state)

    # ---- use by running builds ------------------------------------------------

    def use(self, key: str) -> None:
        with self.store.lock:
            self._in_use[key] += 1

    def unuse(self, keys: list[str]) -> None:
        with self.store.lock:
            self._in_use.subtract(keys)
            self._in_use += Counter()  # drop zero counts

    # ---- housekeeping -----------------------------------------------------------
    # A first layer's chain id equals its diff id, which is also its (uncompressed) blob's
    # digest: layers and blobs are therefore sized and checked as two separate sets.

    def _image_names(self) -> tuple[set[str], set[str]]:
        chains: set[str] = set()
        blobs: set[str] = set()
        for rec in self.store.list():
            chains.update(chain_ids(rec.row.diff_ids))
            blobs.update(rec.row.blobs)
        return chains, blobs

    def _split(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """(chains, blobs) the rows `keys` hold."""
        chains: set[str] = set()
        blobs: set[str] = set()
        for key in keys:
            state = self._states.get(key)
            if state is not None:
                chains.update(state.chains)
                blobs.update(state.blobs)
        return chains, blobs

    def _layer_bytes(self, chains: set[str]) -> dict[str, int]:
        return {c: self.store.layer_size(c) or 0 for c in chains}

    def _blob_bytes(self, blobs: set[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for digest in blobs:
            try:
                out[digest] = self.store.content.path(digest).stat().st_size
            except (FileNotFoundError, ValueError):
                out[digest] = 0
        return out

    def usage(self) -> Usage:
        with self.store.lock:
            image_chains, image_blobs = self._image_names()
            chains, blobs = self._split(self._held)
            layer_sizes = self._layer_bytes(chains - image_chains)
            blob_sizes = self._blob_bytes(blobs - image_blobs)
            active_keys = {k for k in self._in_use if k in self._held}
            active_chains, active_blobs = self._split(active_keys)
        size = sum(layer_sizes.values()) + sum(blob_sizes.values())
        busy = sum(v for c, v in layer_sizes.items() if c in active_chains) + \
            sum(v for b, v in blob_sizes.items() if b in active_blobs)
        return Usage(len(self._held), len(active_keys), size, size - busy)

    def prune(self, all_: bool = False, until_unix: int = 0) -> PruneResult:
        """Delete cache rows no running build uses: every one with `all_`, otherwise those that
        keep a layer or blob no image has (Docker's dangling build cache); then collect garbage."""
        out = PruneResult()
        with self.store.lock:
            with self._sessions() as s:
                rows = [(r.key, r.created_unix) for r in s.query(BuildCacheRow).all()]
            image_chains, image_blobs = self._image_names()
            doomed = []
            for key, created in rows:
                if self._in_use[key] or (until_unix and created >= until_unix):
                    continue
                chains, blobs = self._split([key])
                if not all_ and chains <= image_chains and blobs <= image_blobs:
                    continue
                doomed.append(key)
            if not doomed:
                return out
            chains, blobs = self._split(doomed)
            layer_sizes = self._layer_bytes(chains)
            blob_sizes = self._blob_bytes(blobs)
            with self._sessions() as s, s.begin():
                for start in range(0, len(doomed), 500):
                    s.execute(delete(BuildCacheRow).where(BuildCacheRow.key.in_(doomed[start:start + 500])))
            for key in doomed:
                self._unlease(key)
            self.store.reconcile()
            out.space_reclaimed = sum(v for c, v in layer_sizes.items() if not self.store.layers.exists(c)) + \
                sum(v for b, v in blob_sizes.items() if not self.store.content.exists(b))
        out.deleted = [record_id(k) for k in doomed]
        return out
