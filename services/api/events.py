"""The api's own state: an append-only log of container and image events.

It is the api's database (each service owns one); `berth events` will read it.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.common.db import open_db


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time_unix_nano: Mapped[int] = mapped_column(BigInteger, index=True)
    type: Mapped[str] = mapped_column(String(32))      # container, image
    action: Mapped[str] = mapped_column(String(32))    # create, start, die, destroy, ...
    actor: Mapped[str] = mapped_column(String(255))    # id of the container or image
    attributes: Mapped[str] = mapped_column(Text, default="{}")


class EventLog:
    def __init__(self, url: str) -> None:
        self._session: sessionmaker = open_db(url, Base)

    def record(self, type_: str, action: str, actor: str, **attributes: str) -> None:
        with self._session.begin() as s:
            s.add(Event(time_unix_nano=time.time_ns(), type=type_, action=action, actor=actor,
                        attributes=json.dumps(attributes)))

    def since(self, since_unix_nano: int = 0) -> list[Event]:
        with self._session() as s:
            return list(s.query(Event).filter(Event.time_unix_nano >= since_unix_nano).order_by(Event.seq))
