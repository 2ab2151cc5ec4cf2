"""Durable queues against the in-memory queue, in the same run (issue 6).

Group ``durable-percall``: ``send`` per message; group ``durable-batched``:
``send_many`` of 100 per call, as a broker frame delivers them. Both take
with ``recv_many`` + ``ack``. The baseline of each group is the in-memory
queue; the target is fsync=interval at >= 30% of it. ``test_disk_fsync_rate``
measures what the disk itself allows (one 64-byte write + fsync per op), the
ceiling for fsync=always without batching.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from conftest import PAYLOAD, N

import ringcast

BATCH = 100


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="ringcast-bench-") as d:
        yield d


def _queue_round(router: ringcast.Router, name: str, batched: bool, n: int):
    consumer = router.consume(name)
    items = [PAYLOAD] * BATCH

    def round_() -> int:
        for _ in range(n // BATCH):
            if batched:
                router.send_many(name, items)
            else:
                for _ in range(BATCH):
                    router.send(name, PAYLOAD)
            for msg in consumer.recv_many(BATCH):
                msg.ack()
        return n

    return round_


CASES = [("memory", {}), ("interval", {"durable": True, "fsync": "interval"}),
         ("never", {"durable": True, "fsync": "never"}),
         ("always", {"durable": True, "fsync": "always"})]


@pytest.mark.parametrize("batched", [False, True], ids=["percall", "batched"])
@pytest.mark.parametrize("case,options", CASES, ids=[c for c, _ in CASES])
def test_durable_queue(benchmark, record, data_dir, batched, case, options):
    benchmark.group = f"durable-{'batched' if batched else 'percall'}"
    # fsync=always per call is disk-bound: fewer messages keep the round short
    n = N // 10 if case == "always" and not batched else N
    record(msgs=n, baseline=case == "memory", fsync=case)
    with ringcast.Router(data_dir=data_dir) as router:
        router.declare_queue("q", capacity=1 << 16, **options)
        assert benchmark.pedantic(_queue_round(router, "q", batched, n), rounds=5,
                                  warmup_rounds=1) == n
        assert router.queue("q").depth == 0


@pytest.mark.benchmark(group="disk")
def test_disk_fsync_rate(benchmark, record, data_dir):
    record(msgs=200, baseline=True, reference="write(64 B) + fsync per operation")
    fd = os.open(os.path.join(data_dir, "probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    block = b"x" * 64

    def round_() -> int:
        for _ in range(200):
            os.write(fd, block)
            os.fsync(fd)
        return 200

    try:
        assert benchmark.pedantic(round_, rounds=3) == 200
    finally:
        os.close(fd)
