"""The api's event log: recorded off the request path, all written by shutdown."""

from services.api.events import EventLog


def test_events_are_written_in_order_and_flushed(tmp_path):
    log = EventLog(f"sqlite:///{tmp_path / 'api.db'}")
    for i in range(50):
        log.record("container", "start", f"c{i}", name=f"n{i}")
    log.flush()
    events = log.since(0)
    assert [e.actor for e in events] == [f"c{i}" for i in range(50)]
    assert events[0].type == "container" and '"name": "n0"' in events[0].attributes
