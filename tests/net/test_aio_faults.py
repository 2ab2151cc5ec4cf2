"""The asyncio client under cancellation, close and broker restarts: the
cases test_aio_client.py does not reach."""

import asyncio
import contextlib

import pytest

from ringcast import aio, errors

from .conftest import HEARTBEAT, BrokerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tcp_broker():
    b = BrokerProcess("tcp://127.0.0.1:0").start()
    yield b
    b.stop()


@pytest.fixture
async def conn(tcp_broker):
    c = await aio.connect(tcp_broker.url, heartbeat=HEARTBEAT)
    yield c
    await c.close()


@contextlib.contextmanager
def reading_by_hand(conn):
    """The test reads ``conn``'s socket itself (``conn._pump()``): neither the
    event loop's reader nor the client's timer does meanwhile, so what a
    frame wakes is woken in the test's own loop tick."""
    loop = asyncio.get_running_loop()
    loop.remove_reader(conn._fd)
    conn._timer.cancel()
    try:
        yield
    finally:
        loop.add_reader(conn._fd, conn._pump)
        conn._tick()


def pump_until(conn, done):
    while not done():
        assert conn._sock.poll(5000), "nothing arrived"
        conn._pump()


async def test_an_abandoned_request_is_forgotten_at_once(conn):
    """A cancelled request (task.cancel, wait_for) is forgotten there and then,
    not kept until its deadline: it used to stay in ``proto.requests``
    (the future was already cancelled when the cleanup asked whether it was
    done), so callers that give up early piled up entries for up to their
    timeout, and the 10 ms sweep kept running meanwhile."""
    conn.serve("silent")   # takes requests and never answers
    await conn.flush()
    task = asyncio.ensure_future(conn.request("silent", b"1", timeout=60))
    await asyncio.sleep(0)   # the task has sent it and waits
    assert len(conn.proto.requests) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.proto.requests == {}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.request("silent", b"2", timeout=60), 0.05)
    assert conn.proto.requests == {}


@pytest.mark.parametrize("call", ["recv", "recv_timeout", "recv_many"])
async def test_a_recv_cancelled_as_its_message_arrives_is_cancelled(tcp_broker, conn, call):
    """task.cancel() in the loop tick in which a delivery woke the waiting
    recv: the task ends cancelled and the message stays for the next recv.
    On Python < 3.12 asyncio.wait_for (which recv waited in) returns when
    its future is done even though it was cancelled: the recv swallowed the
    cancellation and returned the message, so a consumer task being shut
    down carried on."""
    other = await aio.connect(tcp_broker.url, heartbeat=HEARTBEAT)
    sub = conn.subscribe("t")
    await conn.flush()
    wait = {"recv": lambda: sub.recv(),
            "recv_timeout": lambda: sub.recv(timeout=30),
            "recv_many": lambda: sub.recv_many(10, timeout=30)}[call]
    try:
        for i in range(3):
            task = asyncio.ensure_future(wait())
            await asyncio.sleep(0)   # it waits
            with reading_by_hand(conn):
                await other.publish("t", b"%d" % i)
                await other.flush()
                pump_until(conn, lambda: sub.pending)   # it wakes the recv ...
                task.cancel()                           # ... cancelled in the same tick
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await sub.recv(timeout=5)).payload == b"%d" % i
    finally:
        await other.close()


async def test_stats_cancelled_as_its_answer_arrives_is_cancelled(conn):
    task = asyncio.ensure_future(conn.stats(timeout=30))
    await asyncio.sleep(0)   # STATS buffered
    with reading_by_hand(conn):
        conn._pump()   # sent; once its answer is read, the future has its result
        pump_until(conn, lambda: not conn.proto.waiters)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await conn.stats())["clients"] == 1


async def test_a_flush_that_close_cuts_short_does_not_confirm(endpoint):
    """A publish buffered while no broker answers, a flush waiting for its
    confirm, then close() from another task: the flush returned as if the
    broker had confirmed (its wait ends on close, and nothing was counted
    lost since nothing had been sent), yet the message went nowhere."""
    nowhere = endpoint.replace(":0", ":1")
    conn = await aio.connect(nowhere, heartbeat=HEARTBEAT, timeout=None)
    await conn.publish("t", b"x")
    flush = asyncio.ensure_future(conn.flush(timeout=30))
    await asyncio.sleep(0)   # it waits for the broker
    await conn.close()
    with pytest.raises(errors.ConnectionLost, match="unconfirmed"):
        await flush


def test_a_sync_flush_that_close_cuts_short_does_not_confirm(endpoint):
    """The same with the sync client (the flush in a thread of its own)."""
    import threading

    from ringcast import connect

    from .conftest import wait_for

    c = connect(endpoint.replace(":0", ":1"), heartbeat=HEARTBEAT, timeout=0)
    c.publish("t", b"x")
    outcome = []

    def flush():
        try:
            c.flush(30)
            outcome.append("confirmed")
        except errors.RingcastError as exc:
            outcome.append(exc)

    t = threading.Thread(target=flush)
    t.start()
    assert wait_for(lambda: c._cond._waiters, 10)   # the flush waits for the broker
    c.close()
    t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.ConnectionLost), outcome


async def test_a_flush_cut_short_by_close_confirms_what_the_broker_applied(conn):
    """... while one whose sends were all applied still confirms, even when
    close() (waiting for the same confirm, and woken first) has ended the
    session before the flush looks."""
    await conn.publish("t", b"x")
    close = asyncio.ensure_future(conn.close())
    await asyncio.sleep(0)   # close() waits for the confirm, first in line
    flush = asyncio.ensure_future(conn.flush(timeout=30))
    await asyncio.sleep(0)   # so does the flush
    await close
    await flush


async def test_what_is_published_while_reconnecting_lands_after_the_redeclarations():
    """The broker restarts; while the client has no session yet it publishes
    on a subject bound to its queue and to its subscription, and makes and
    closes a subscription. The flush confirms, the queue and the subscription
    get the message, and the closed subscription is not left at the broker
    (the publish used to go ahead of the re-declared binding and SUB: lost,
    though confirmed; and the SUB went out with no CLOSE)."""
    b = BrokerProcess("tcp://127.0.0.1:0").start()
    b2 = None
    try:
        conn = await aio.connect(b.url, heartbeat=HEARTBEAT)
        await conn.declare_queue("shipping", bind="orders.placed")
        sub = conn.subscribe("orders.>")
        await conn.flush()
        b.kill()
        while conn.connected:   # until it gives the session up for a new one
            await asyncio.sleep(0.01)
        await conn.publish("orders.placed", b"during")
        conn.subscribe("gone").close()
        b2 = BrokerProcess(b.url).start()
        await conn.flush(10)
        assert conn.sessions == 2
        assert (await sub.recv(timeout=5)).payload == b"during"
        job = await conn.consume("shipping").recv(timeout=5)
        assert job.payload == b"during"
        job.ack()
        stats = await conn.stats()
        assert [s["pattern"] for s in stats["subscriptions"]] == ["orders.>"]
        await conn.close()
    finally:
        b.stop()
        if b2 is not None:
            b2.stop()


def test_a_threaded_handler_failing_after_a_reconnect_keeps_serving():
    """A threaded handler that raises for a request of a session that has
    since ended: failing it raised AckError ('delivered in an earlier
    session') in the handler's worker thread, which died; the responder,
    re-declared on the new session, never answered again."""
    import threading

    from ringcast import connect

    from .conftest import wait_for

    b = BrokerProcess("tcp://127.0.0.1:0").start()
    b2 = None
    entered, release = threading.Event(), threading.Event()

    def handler(msg):
        if msg.payload == b"first":
            entered.set()
            release.wait(30)
            raise ValueError("failed after the session ended")
        return b"ok:" + msg.payload

    c = connect(b.url, heartbeat=HEARTBEAT)
    try:
        c.serve("svc", handler, threaded=True)
        c.flush()
        asking = threading.Thread(target=lambda: pytest.raises(
            errors.RingcastError, c.request, "svc", b"first", timeout=1))
        asking.start()
        assert entered.wait(10)
        b.kill()
        b2 = BrokerProcess(b.url).start()
        assert wait_for(lambda: c.sessions == 2 and c.connected)
        release.set()
        asking.join(10)
        c.flush()
        assert c.request("svc", b"second", timeout=5).payload == b"ok:second"
    finally:
        release.set()
        c.close()
        b.stop()
        if b2 is not None:
            b2.stop()


async def test_an_async_handler_failing_after_a_reconnect_is_dropped_quietly():
    """The asyncio twin: failing the request raised AckError out of the
    handler's task (an exception nobody retrieves, reported by the loop)."""
    import gc

    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    b = BrokerProcess("tcp://127.0.0.1:0").start()
    b2 = None
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(msg):
        if msg.payload == b"first":
            entered.set()
            await release.wait()
            raise ValueError("failed after the session ended")
        return b"ok:" + msg.payload

    conn = await aio.connect(b.url, heartbeat=HEARTBEAT)
    try:
        conn.serve("svc", handler)
        await conn.flush()
        asking = asyncio.ensure_future(conn.request("svc", b"first", timeout=30))
        await entered.wait()
        b.kill()
        b2 = BrokerProcess(b.url).start()
        while not (conn.sessions == 2 and conn.connected):
            await asyncio.sleep(0.01)
        with pytest.raises(errors.ConnectionLost):
            await asyncio.wait_for(asking, 10)
        release.set()
        while conn._tasks:   # the handler's task ends
            await asyncio.sleep(0.01)
        gc.collect()
        assert (await conn.request("svc", b"second", timeout=5)).payload == b"ok:second"
        assert reported == []
    finally:
        loop.set_exception_handler(None)
        release.set()
        await conn.close()
        b.stop()
        if b2 is not None:
            b2.stop()
