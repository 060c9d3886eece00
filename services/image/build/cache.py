"""The build cache: what each step produced, keyed by everything that could change it.

A key covers the state before the step (the whole image config, env included,
and the layer chain), the instruction after substitution, the build args in
effect and, for COPY and ADD, a hash of the copied files' contents, modes and
owners. The value is the state after the step. Rows live in the image service's
DB (table `build_cache`, on the store's Base and engine); their layers and blobs
are leased for the life of the service so garbage collection spares them. A
row whose layers went missing is simply a miss.
"""

from __future__ import annotations

import hashlib
import json
import time
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


class BuildCache:
    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self._sessions = store._sessions  # noqa: SLF001 - the image service's own DB
        BuildCacheRow.__table__.create(self._sessions.kw["bind"], checkfirst=True)  # type: ignore[attr-defined]
        with self._sessions() as s:
            rows = s.query(BuildCacheRow).all()
        for row in rows:
            self._lease(State.from_json(row.state_json))

    def _lease(self, state: State) -> None:
        for name in (*state.chains, *state.blobs):
            self.store.lease(name)

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
        self._lease(state)
        with self._sessions() as s, s.begin():
            s.execute(delete(BuildCacheRow).where(BuildCacheRow.key == key))
            s.add(BuildCacheRow(key=key, state_json=state.to_json(), created_unix=int(time.time())))
