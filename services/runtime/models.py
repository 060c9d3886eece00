"""The runtime's database: one row per container (SQLAlchemy 2.x, portable to PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ContainerRecord(Base):
    __tablename__ = "containers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    spec_json: Mapped[str] = mapped_column(Text)             # ContainerSpec via json_format
    status: Mapped[str] = mapped_column(String(16), default="created", index=True)
    pid: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    oom_killed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    started_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    finished_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    log_path: Mapped[str] = mapped_column(Text, default="")
