"""The snapshot mount spec (berth.types.v1.Mount) as a plain object.

It is the one shared-filesystem contract: the image service produces it, the
runtime's container init mounts it. A plain dataclass keeps the protobuf
runtime out of the forked container init and out of unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Mount:
    type: str                      # "overlay" or "bind"
    lowerdirs: list[str] = field(default_factory=list)
    upperdir: str = ""
    workdir: str = ""
    source: str = ""
    options: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> Mount:
        return cls(type=d.get("type", ""), lowerdirs=list(d.get("lowerdirs", [])), upperdir=d.get("upperdir", ""),
                   workdir=d.get("workdir", ""), source=d.get("source", ""), options=list(d.get("options", [])))
