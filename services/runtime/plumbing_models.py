"""Tables for volumes and networks in the runtime's database (its own declarative base,
so the container table's module stays untouched; same database, same engine URL)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class PlumbingBase(DeclarativeBase):
    pass


class VolumeRecord(PlumbingBase):
    __tablename__ = "volumes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    anonymous: Mapped[int] = mapped_column(Integer, default=0)


class NetworkRecord(PlumbingBase):
    __tablename__ = "networks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    driver: Mapped[str] = mapped_column(String(16), default="bridge")
    subnet: Mapped[str] = mapped_column(String(64), default="")
    gateway: Mapped[str] = mapped_column(String(64), default="")
    bridge: Mapped[str] = mapped_column(String(16), default="")
    internal: Mapped[int] = mapped_column(Integer, default=0)
    labels_json: Mapped[str] = mapped_column(Text, default="{}")
    created_ns: Mapped[int] = mapped_column(BigInteger, default=0)


class EndpointRecord(PlumbingBase):
    """A container's membership of a network (from create or connect); ``ip`` is set
    while it runs (the IPAM lease: unique per network, so no duplicate after restarts)."""

    __tablename__ = "endpoints"
    __table_args__ = (UniqueConstraint("network_id", "ip", name="uq_endpoint_ip"),
                      UniqueConstraint("network_id", "container_id", name="uq_endpoint_member"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network_id: Mapped[str] = mapped_column(String(64), index=True)
    container_id: Mapped[str] = mapped_column(String(64), index=True)
    aliases_json: Mapped[str] = mapped_column(Text, default="[]")
    requested_ip: Mapped[str] = mapped_column(String(64), default="")
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ifname: Mapped[str] = mapped_column(String(16), default="")
    host_ifname: Mapped[str] = mapped_column(String(16), default="")
    mac: Mapped[str] = mapped_column(String(32), default="")


class PortRecord(PlumbingBase):
    """A published port while its container runs: (proto, host_ip, host_port) is unique,
    so a conflict is refused by the database even across runtime restarts."""

    __tablename__ = "ports"
    __table_args__ = (UniqueConstraint("protocol", "host_port", name="uq_port"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    container_id: Mapped[str] = mapped_column(String(64), index=True)
    protocol: Mapped[str] = mapped_column(String(8))
    host_ip: Mapped[str] = mapped_column(String(64), default="")
    host_port: Mapped[int] = mapped_column(Integer)
    container_port: Mapped[int] = mapped_column(Integer)
    container_ip: Mapped[str] = mapped_column(String(64), default="")
