"""Remote queue consumers around the ends of things: a session lost and
started again, a consumer closed with deliveries in hand or on their way."""

import asyncio
import os
import threading

import pytest
import zmq

from ringcast import aio, errors, storage
from ringcast.client import connect

from .conftest import HEARTBEAT, BrokerProcess, barrier, wait_for


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


def _unsettled_on_disk(directory):
    """Message ids a broker restarted now would deliver again (None while
    a record is half written)."""
    ids = set()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".seg"):
            with open(os.path.join(directory, name), "rb") as f:
                data = f.read()
            try:
                for kind, ident, _, _ in storage.decode_records(data):
                    if kind == storage.MSGS:
                        ids.add(ident)
                    elif kind == storage.ACKS:
                        ids.discard(ident)
            except storage.CorruptRecord:
                return None
    return ids


def test_a_durable_consumer_across_a_broker_kill(tmp_path):
    """A consumer holds deliveries of a durable queue when the broker is
    SIGKILLed and restarted on the same endpoint and data directory: the
    client starts a new session, an ack of an old delivery raises AckError,
    what it held comes back flagged with its count, and max_deliver counts
    the deliveries before the kill."""
    if not zmq.has("ipc"):
        pytest.skip("this libzmq has no ipc:// transport (the restart reuses one endpoint)")
    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = str(tmp_path / "data")
    broker = BrokerProcess(endpoint, "--data-dir", data).start()
    try:
        with connect(broker.url, heartbeat=HEARTBEAT, timeout=10) as c:
            c.declare_queue("jobs", durable=True, fsync="always", max_deliver=2,
                            dead_letter="jobs.dlq")
            consumer = c.consume("jobs", prefetch=4)
            c.send_many("jobs", [b"a", b"b", b"c"])
            c.flush()
            a, b, _ = [consumer.recv(timeout=10) for _ in range(3)]
            a.ack()
            barrier(c)
            # the ack (and the delivery marks before it) are in the log
            assert wait_for(lambda: _unsettled_on_disk(os.path.join(data, "jobs")) == {2, 3})
            broker.kill()
            broker = BrokerProcess(endpoint, "--data-dir", data).start()
            assert wait_for(lambda: c.sessions == 2 and c.connected)
            with pytest.raises(errors.AckError):
                b.ack()
            again = [consumer.recv(timeout=10) for _ in range(2)]
            assert [(m.payload, m.redelivered, m.delivery_count) for m in again] == \
                [(b"b", True, 2), (b"c", True, 2)]
            for m in again:
                m.nack()   # a third delivery would be over max_deliver
            dead = c.consume("jobs.dlq", prefetch=4)
            gone = [dead.recv(timeout=10) for _ in range(2)]
            assert sorted((m.payload, m.headers["x-dead-letter-reason"],
                           m.headers["x-delivery-count"]) for m in gone) == \
                [(b"b", "max_deliver", "2"), (b"c", "max_deliver", "2")]
            for m in gone:
                m.ack()
            barrier(c)
            q = c.stats()["queues"]["jobs"]
            assert (q["acked"], q["max_delivered"], q["dead_lettered"], q["depth"],
                    q["unacked"]) == (0, 2, 2, 0, 0), q
    finally:
        broker.stop()
