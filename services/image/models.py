"""The image service's tables: images, tags, layers and snapshots.

Portable SQLAlchemy 2.x only (JSON and plain columns) so the same models run on
SQLite and PostgreSQL. Files on disk are the payload; these rows say which
files are reachable, so anything on disk without a row is garbage.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(71), primary_key=True)  # "sha256:<hex>" of the config
    manifest_digest: Mapped[str] = mapped_column(String(71), default="")
    config_json: Mapped[str] = mapped_column(Text)
    created_unix: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # order of arrival, a tie-breaker
    architecture: Mapped[str] = mapped_column(String(32), default="")
    os: Mapped[str] = mapped_column(String(32), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    diff_ids: Mapped[list] = mapped_column(JSON, default=list)
    blobs: Mapped[list] = mapped_column(JSON, default=list)  # every blob it references (manifest, config, layers)


class TagRow(Base):
    __tablename__ = "tags"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)  # normalised "domain/path:tag"
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)


class LayerRow(Base):
    __tablename__ = "layers"

    chain_id: Mapped[str] = mapped_column(String(71), primary_key=True)
    diff_id: Mapped[str] = mapped_column(String(71))
    size: Mapped[int] = mapped_column(BigInteger, default=0)


class SnapshotRow(Base):
    __tablename__ = "snapshots"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    created_unix: Mapped[int] = mapped_column(BigInteger, default=0)


class RepoDigestRow(Base):
    """`name@sha256:…`: the manifest (or index) digest an image was pulled or pushed as."""

    __tablename__ = "repo_digests"

    name: Mapped[str] = mapped_column(String(400), primary_key=True)  # normalised "domain/path@digest"
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
