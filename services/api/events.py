"""The api's own state: an append-only log of container and image events.

It is the api's database (each service owns one); `berth events` reads it: history
from the DB, then live events from an in-memory fan-out to subscribers.
"""

from __future__ import annotations

import json
import queue
import threading
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
    """Events are written by one background thread: a request never waits for the api's
    own bookkeeping (a run records four events)."""

    def __init__(self, url: str) -> None:
        self._session: sessionmaker = open_db(url, Base)
        self._queue: queue.Queue[Event | threading.Event | None] = queue.Queue()
        self._subscribers: set[queue.Queue] = set()
        self._subs_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write, name="events", daemon=True)
        self._writer.start()

    def record(self, type_: str, action: str, actor: str, **attributes: str) -> None:
        event = Event(time_unix_nano=time.time_ns(), type=type_, action=action, actor=actor,
                      attributes=json.dumps(attributes))
        live = Event(seq=0, time_unix_nano=event.time_unix_nano, type=type_, action=action, actor=actor,
                     attributes=event.attributes)  # a detached copy for readers in other threads
        self._queue.put(event)
        with self._subs_lock:
            for q in self._subscribers:
                q.put(live)

    def subscribe(self) -> queue.Queue:
        """A queue that receives every event recorded from now on (until unsubscribed)."""
        q: queue.Queue = queue.Queue()
        with self._subs_lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._subs_lock:
            self._subscribers.discard(q)

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until everything recorded so far is in the DB (so history reads see it)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _write(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            stopping = None in batch
            events = [e for e in batch if isinstance(e, Event)]
            if events:
                with self._session.begin() as s:
                    s.add_all(events)
            for marker in batch:
                if isinstance(marker, threading.Event):
                    marker.set()

    def flush(self) -> None:
        """Write what is queued and stop the writer (at shutdown)."""
        self._queue.put(None)
        self._writer.join(timeout=5)

    def since(self, since_unix_nano: int = 0, until_unix_nano: int = 0) -> list[Event]:
        self.sync()
        with self._session() as s:
            q = s.query(Event).filter(Event.time_unix_nano >= since_unix_nano)
            if until_unix_nano:
                q = q.filter(Event.time_unix_nano < until_unix_nano)
            return list(q.order_by(Event.seq))
