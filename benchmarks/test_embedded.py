"""Embedded publish -> deliver, fan-out and queues against blinker,
``queue.Queue`` and ``collections.deque``, all in the same run.

Publisher and receivers share one thread, as blinker's sender and
receivers do: a round publishes N messages, then the subscriber(s) take
them. The ringcast rows differ only in the API used on each side:

* per call: ``Router.publish`` once per message;
* batched: one ``Router.publish_many`` for the N messages;
* received with ``recv_many`` (Message objects: subject, payload, headers,
  seq; taken in chunks of its default ``max_count``, 1024, as a consumer
  loop does) or ``recv_payloads`` (the payload objects only, no Message
  built, all N in one call).
"""

from __future__ import annotations

import collections
import queue as queue_mod

import pytest
from conftest import RING, SUBJECT, N
from rounds import blinker_round, drain, fifo_round

from ringcast import Router


def _blinker_round(benchmark, record, payload, receivers: int) -> None:
    record(baseline=True, receivers=receivers)
    assert benchmark(blinker_round(receivers, payload)) == N * receivers


@pytest.fixture
def router():
    r = Router()
    yield r
    r.close()


def _subs(router: Router, n: int):
    return [router.subscribe(SUBJECT, capacity=RING) for _ in range(n)]


def _check_clean(router: Router, subs) -> None:
    for sub in subs:
        assert sub.pending == 0 and sub.dropped == 0


# -- 1 subscriber, per-call publish ------------------------------------------------
@pytest.mark.benchmark(group="pubsub-1-percall")
def test_percall_blinker_1(benchmark, record, payload):
    _blinker_round(benchmark, record, payload, 1)


@pytest.mark.benchmark(group="pubsub-1-percall")
def test_percall_ringcast_recv_many(benchmark, record, payload, router):
    record()
    (sub,) = _subs(router, 1)
    publish, recv_many = router.publish, sub.recv_many

    def round_() -> int:
        for _ in range(N):
            publish(SUBJECT, payload)
        return drain(recv_many)

    assert benchmark(round_) == N
    _check_clean(router, [sub])


@pytest.mark.benchmark(group="pubsub-1-percall")
def test_percall_ringcast_recv_payloads(benchmark, record, payload, router):
    record()
    (sub,) = _subs(router, 1)
    publish, recv_payloads = router.publish, sub.recv_payloads

    def round_() -> int:
        for _ in range(N):
            publish(SUBJECT, payload)
        return len(recv_payloads(N))

    assert benchmark(round_) == N
    _check_clean(router, [sub])


# -- 1 subscriber, batched publish ---------------------------------------------------
@pytest.mark.benchmark(group="pubsub-1-batched")
def test_batched_blinker_1(benchmark, record, payload):
    _blinker_round(benchmark, record, payload, 1)


@pytest.mark.benchmark(group="pubsub-1-batched")
def test_batched_deque_extend(benchmark, record, items):
    record(reference="the cost of moving N references through any Python container")
    d: collections.deque = collections.deque()

    def round_() -> int:
        d.extend(items)
        out = list(d)
        d.clear()
        return len(out)

    assert benchmark(round_) == N


@pytest.mark.benchmark(group="pubsub-1-batched")
def test_batched_ringcast_recv_payloads(benchmark, record, items, router):
    record()
    (sub,) = _subs(router, 1)
    publish_many, recv_payloads = router.publish_many, sub.recv_payloads

    def round_() -> int:
        publish_many(SUBJECT, items)
        return len(recv_payloads(N))

    assert benchmark(round_) == N
    _check_clean(router, [sub])


@pytest.mark.benchmark(group="pubsub-1-batched")
def test_batched_ringcast_recv_many(benchmark, record, items, router):
    record()
    (sub,) = _subs(router, 1)
    publish_many, recv_many = router.publish_many, sub.recv_many

    def round_() -> int:
        publish_many(SUBJECT, items)
        return drain(recv_many)

    assert benchmark(round_) == N
    _check_clean(router, [sub])


# -- 4 subscribers -------------------------------------------------------------------
@pytest.mark.benchmark(group="fanout-4")
def test_fanout_blinker_4(benchmark, record, payload):
    _blinker_round(benchmark, record, payload, 4)


@pytest.mark.benchmark(group="fanout-4")
def test_fanout_percall_recv_many(benchmark, record, payload, router):
    record(receivers=4)
    subs = _subs(router, 4)
    publish = router.publish
    recvs = [s.recv_many for s in subs]

    def round_() -> int:
        for _ in range(N):
            publish(SUBJECT, payload)
        return sum(drain(recv) for recv in recvs)

    assert benchmark(round_) == 4 * N
    _check_clean(router, subs)


@pytest.mark.benchmark(group="fanout-4")
def test_fanout_percall_recv_payloads(benchmark, record, payload, router):
    record(receivers=4)
    subs = _subs(router, 4)
    publish = router.publish
    recvs = [s.recv_payloads for s in subs]

    def round_() -> int:
        for _ in range(N):
            publish(SUBJECT, payload)
        return sum(len(recv(N)) for recv in recvs)

    assert benchmark(round_) == 4 * N
    _check_clean(router, subs)


@pytest.mark.benchmark(group="fanout-4")
def test_fanout_batched_recv_payloads(benchmark, record, items, router):
    record(receivers=4)
    subs = _subs(router, 4)
    publish_many = router.publish_many
    recvs = [s.recv_payloads for s in subs]

    def round_() -> int:
        publish_many(SUBJECT, items)
        return sum(len(recv(N)) for recv in recvs)

    assert benchmark(round_) == 4 * N
    _check_clean(router, subs)


@pytest.mark.benchmark(group="fanout-4")
def test_fanout_batched_recv_many(benchmark, record, items, router):
    record(receivers=4)
    subs = _subs(router, 4)
    publish_many = router.publish_many
    recvs = [s.recv_many for s in subs]

    def round_() -> int:
        publish_many(SUBJECT, items)
        return sum(drain(recv) for recv in recvs)

    assert benchmark(round_) == 4 * N
    _check_clean(router, subs)


# -- work queue: send, receive, acknowledge ------------------------------------------------
@pytest.mark.benchmark(group="queue")
def test_queue_stdlib_put_get(benchmark, record, payload):
    record(baseline=True)
    q: queue_mod.Queue = queue_mod.Queue()
    assert benchmark(fifo_round(q.put, q.get, payload)) == N


@pytest.mark.benchmark(group="queue")
def test_queue_deque_append_popleft(benchmark, record, payload):
    record(reference="no locking, no acks: a floor, not a queue")
    d: collections.deque = collections.deque()
    assert benchmark(fifo_round(d.append, d.popleft, payload)) == N


@pytest.mark.benchmark(group="queue")
def test_queue_ringcast_send_recv_ack(benchmark, record, payload, router):
    record()
    router.declare_queue("work", capacity=RING)
    consumer = router.consume("work")
    send, recv = router.send, consumer.recv

    def round_() -> int:
        for _ in range(N):
            send("work", payload)
        for _ in range(N):
            recv(0).ack()
        return N

    assert benchmark(round_) == N
    assert router.queue("work").depth == 0 and consumer.unacked == 0


@pytest.mark.benchmark(group="queue")
def test_queue_ringcast_send_recv_many_ack(benchmark, record, payload, router):
    record()
    router.declare_queue("work", capacity=RING)
    consumer = router.consume("work")
    send, recv_many, ack = router.send, consumer.recv_many, consumer.ack

    def round_() -> int:
        for _ in range(N):
            send("work", payload)
        got = 0
        while True:
            msgs = recv_many()  # 1024 at a time, its default
            if not msgs:
                return got
            for msg in msgs:
                ack(msg)
            got += len(msgs)

    assert benchmark(round_) == N
    assert router.queue("work").depth == 0 and consumer.unacked == 0
