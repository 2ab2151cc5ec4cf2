"""Native ring push/pop, one message per call and in batches, against
``collections.deque`` (the fastest container CPython has) as the baseline."""

from __future__ import annotations

import collections

import pytest
from conftest import RING, SUBJECT, N
from rounds import fifo_round

from ringcast._impl import Ring


@pytest.mark.benchmark(group="ring-single")
def test_deque_append_popleft(benchmark, record, payload):
    record(baseline=True)
    d: collections.deque = collections.deque()
    assert benchmark(fifo_round(d.append, d.popleft, payload)) == N


@pytest.mark.benchmark(group="ring-single")
def test_ring_put_pop(benchmark, record, payload):
    record()
    ring = Ring(RING, "block")
    put, pop = ring.put, ring.pop

    def round_() -> int:
        for _ in range(N):
            put(SUBJECT, payload)
        for _ in range(N):
            pop()
        return N

    assert benchmark(round_) == N
    assert len(ring) == 0 and ring.dropped == 0


@pytest.mark.benchmark(group="ring-batch")
def test_deque_extend_list(benchmark, record, items):
    record(baseline=True)
    d: collections.deque = collections.deque()

    def round_() -> int:
        d.extend(items)
        out = list(d)
        d.clear()
        return len(out)

    assert benchmark(round_) == N


@pytest.mark.benchmark(group="ring-batch")
def test_ring_put_many_pop_payloads(benchmark, record, items):
    record()
    ring = Ring(RING, "block")

    def round_() -> int:
        ring.put_many(SUBJECT, items)
        return len(ring.pop_payloads(N))

    assert benchmark(round_) == N


@pytest.mark.benchmark(group="ring-batch")
def test_ring_put_many_pop_many(benchmark, record, items):
    record()
    ring = Ring(RING, "block")

    def round_() -> int:
        ring.put_many(SUBJECT, items)
        return len(ring.pop_many(N))

    assert benchmark(round_) == N
