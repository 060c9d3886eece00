"""Numbers worth tracking: Start-to-exit latency and the supervisor's memory per container.

Run with ``-s`` to see them; the assertions are loose bounds only.
"""

from __future__ import annotations

import statistics
import time

from berth.runtime.v1 import runtime_pb2


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_start_to_exit_latency_of_true(rt):
    times = []
    for _ in range(20):
        c = rt.create("true")
        t = time.perf_counter()
        rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
        assert rt.stub.Wait(runtime_pb2.ContainerRef(id=c.id)).exit_code == 0
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(f"\nStart RPC -> exit of `true`: median {median * 1000:.1f} ms, "
          f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms (n=20)")
    assert median < 1.0


def test_supervisor_memory_per_container(rt):
    sup = rt.svc.supervisor_pid()
    before = _rss_kib(sup)
    ids = []
    for _ in range(20):
        c = rt.create("sleep", "300")
        rt.stub.Start(runtime_pb2.ContainerRef(id=c.id))
        ids.append(c.id)
    time.sleep(0.5)
    after = _rss_kib(sup)
    per = (after - before) / 20
    print(f"\nsupervisor RSS: {before} KiB -> {after} KiB with 20 sleeping containers: {per:.1f} KiB per container")
    assert len([c for c in rt.stub.List(runtime_pb2.ListRequest()).containers if c.id in ids]) == 20
    assert per < 1024
