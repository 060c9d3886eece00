"""The runtime's database: one row per container (SQLAlchemy 2.x, portable to PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Engine, Integer, String, Text, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


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
    restart_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set by `stop` (and cleared by `start`): an unless-stopped/always container that was
    # stopped on purpose stays stopped until started again.
    manually_stopped: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # --userns=auto: the first host uid/gid of the container's private 65536-id range
    # (services/runtime/security/userns.py); 0: the host's user namespace.
    userns_base: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # runtime_pb2.Health via json_format (services/runtime/health.py); None: no health check.
    health_json: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)


def add_missing_columns(sessions: sessionmaker) -> None:
    """Additive migration: columns added since a database was created (ALTER TABLE ADD
    COLUMN with the server default), so an existing runtime DB keeps working."""
    engine: Engine = sessions.kw["bind"]
    existing = {c["name"] for c in inspect(engine).get_columns(ContainerRecord.__tablename__)}
    with engine.begin() as conn:
        for column in ContainerRecord.__table__.columns:
            if column.name in existing:
                continue
            ddl = column.type.compile(dialect=engine.dialect)
            default = f" DEFAULT {column.server_default.arg}" if column.server_default is not None else ""
            if isinstance(column.type, Boolean) and default and engine.dialect.name == "postgresql":
                default = " DEFAULT false"
            conn.execute(text(f"ALTER TABLE {ContainerRecord.__tablename__} ADD COLUMN {column.name} {ddl}{default}"))
