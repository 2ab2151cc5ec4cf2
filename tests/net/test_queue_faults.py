"""Remote queue consumers around the ends of things: a session lost and
started again, a consumer closed with deliveries in hand or on their way."""

import asyncio
import threading

import pytest

from ringcast import aio, errors
from ringcast.client import connect

from .conftest import HEARTBEAT, barrier, wait_for


def _forget_sessions(broker):
    """The broker ends every session, as after missed heartbeats: the
    client's next frame is answered "no session" and it starts over."""
    done = threading.Event()

    def drop():
        for s in list(broker._sessions.values()):
            broker._drop(s, "forgotten by the test")
        done.set()

    broker._call_soon(drop)
    assert done.wait(10)


def test_an_ack_while_the_client_reconnects_is_refused(embedded):
    """Between the end of one session and the start of the next (the I/O
    thread opening its new socket) an ack of a delivery of the old session
    used to vanish: no error, nothing sent, and the broker redelivered the
    message anyway. It raises AckError, as it does once the new session
    has started."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10) as c:
        consumer = c.consume("jobs", prefetch=4)
        c.send("jobs", b"0")
        c.flush()
        held = consumer.recv(timeout=10)
        in_window, go_on = threading.Event(), threading.Event()
        new_socket = c._socket

        def slow_socket():   # the reconnect waits here, session over, next not begun
            in_window.set()
            assert go_on.wait(10)
            return new_socket()

        c._socket = slow_socket
        _forget_sessions(broker)
        assert in_window.wait(10)
        try:
            with pytest.raises(errors.AckError):
                held.ack()
        finally:
            go_on.set()
        again = consumer.recv(timeout=10)
        assert (again.payload, again.redelivered, again.delivery_count) == (b"0", True, 2)
        again.ack()
        barrier(c)
        q = router.queue("jobs").stats()
        assert (q["acked"], q["depth"], q["unacked"]) == (1, 0, 0), q
        assert c.sessions == 2


def _closed_consumer_expectations(router, held, after):
    """What closing a consumer with ``held`` taken and two more in its
    inbox leaves: ``after`` are what another consumer then got."""
    assert [(m.payload, m.redelivered, m.delivery_count) for m in after] == \
        [(b"0", True, 2), (b"1", True, 2), (b"2", True, 2)]
    q = router.queue("jobs").stats()
    assert (q["acked"], q["late_acks"], q["depth"], q["unacked"]) == (3, 0, 0, 0), q


def test_a_closed_consumer_hands_out_and_settles_nothing_more(embedded):
    """``close()`` gives back, at the broker, everything the consumer held.
    The client used to go on handing out what was in its inbox, and took
    acks of what it had handed out: each of those messages went to another
    consumer as well (or, the ack overtaking the CLOSE, was acked while its
    copies were handled again). As on an embedded consumer: ``recv`` raises
    Closed, ``ack`` raises AckError."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10) as c:
        consumer = c.consume("jobs", prefetch=4)
        c.send_many("jobs", [b"0", b"1", b"2"])
        c.flush()
        held = consumer.recv(timeout=10)
        assert wait_for(lambda: consumer.pending == 2)
        consumer.close()
        with pytest.raises(errors.Closed):
            consumer.recv(timeout=0)
        with pytest.raises(errors.AckError):
            held.ack()
        with pytest.raises(errors.AckError):
            held.nack()
        barrier(c)
        other = c.consume("jobs", prefetch=4)
        after = [other.recv(timeout=10) for _ in range(3)]
        for m in after:
            m.ack()
        barrier(c)
        _closed_consumer_expectations(router, held, after)


async def test_a_closed_async_consumer_hands_out_and_settles_nothing_more(embedded):
    """The same with the asyncio client."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    c = await aio.connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10)
    try:
        consumer = c.consume("jobs", prefetch=4)
        await c.send_many("jobs", [b"0", b"1", b"2"])
        await c.flush()
        held = await consumer.recv(timeout=10)
        deadline = asyncio.get_running_loop().time() + 10
        while consumer.pending < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        consumer.close()
        with pytest.raises(errors.Closed):
            await consumer.recv(timeout=0)
        with pytest.raises(errors.AckError):
            held.ack()
        await c.flush()
        await c.stats()
        other = c.consume("jobs", prefetch=4)
        after = [await other.recv(timeout=10) for _ in range(3)]
        for m in after:
            m.ack()
        await c.flush()
        await c.stats()
        _closed_consumer_expectations(router, held, after)
    finally:
        await c.close()
