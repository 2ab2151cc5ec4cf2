"""The asyncio client against a real broker process, including cancellation."""

import asyncio

import pytest

from ringcast import aio, errors

from .conftest import HEARTBEAT

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def conn(broker):
    c = await aio.connect(broker.url, heartbeat=HEARTBEAT)
    yield c
    await c.close()


async def test_pubsub_queue_and_requests(broker, conn):
    sub = conn.subscribe("orders.>")
    conn.serve("inventory", lambda m: m.payload.upper())
    await conn.flush()
    for i in range(1000):
        await conn.publish("orders.placed", b"%d" % i)
    got = []
    while len(got) < 1000:
        got += await sub.recv_many(1000, timeout=5)
    assert [int(m.payload) for m in got] == list(range(1000))
    replies = await asyncio.gather(*(conn.request("inventory", b"sku-%d" % i) for i in range(500)))
    assert [r.payload for r in replies] == [b"SKU-%d" % i for i in range(500)]
    with pytest.raises(errors.NoResponders):
        await conn.request("nobody", b"")
    q = conn.consume("ship", prefetch=4)
    await conn.send("ship", b"parcel")
    msg = await q.recv(timeout=5)
    assert msg.payload == b"parcel" and not msg.redelivered
    msg.ack()
    await conn.send_many("ship", [b"box", b"crate"], {"via": "road"})
    batch = [await q.recv(timeout=5) for _ in range(2)]
    assert [(m.payload, m.headers) for m in batch] == [(b"box", {"via": "road"}),
                                                       (b"crate", {"via": "road"})]
    for m in batch:
        m.ack()


async def test_cancelled_recv_loses_nothing(broker, conn):
    sub = conn.subscribe("t")
    await conn.flush()
    for round_ in range(20):
        task = asyncio.ensure_future(sub.recv())
        await asyncio.sleep(0)          # the task is now waiting
        await conn.publish("t", b"%d" % round_)
        await conn.flush()
        task.cancel()                   # whether or not the message already arrived
        try:
            msg = await task
        except asyncio.CancelledError:
            msg = await sub.recv(timeout=5)   # then it is still there
        assert msg.payload == b"%d" % round_
    assert sub.pending == 0


async def test_cancelled_request_leaves_the_connection_usable(broker, conn):
    async def slow(msg):
        await asyncio.sleep(0.3)
        return b"late:" + msg.payload

    conn.serve("slow", slow)
    conn.serve("fast", lambda m: b"fast:" + m.payload)
    await conn.flush()
    task = asyncio.ensure_future(conn.request("slow", b"1"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.request("slow", b"2"), 0.05)
    # the late replies of both abandoned requests are dropped, never misdelivered
    assert (await conn.request("fast", b"3")).payload == b"fast:3"
    await asyncio.sleep(0.4)
    assert (await conn.request("slow", b"4", timeout=5)).payload == b"late:4"
    assert conn.proto.requests == {}


async def test_reconnects_after_a_broker_restart(endpoint):
    from .conftest import BrokerProcess

    b = BrokerProcess(endpoint).start()
    b2 = None
    try:
        conn = await aio.connect(b.url, heartbeat=HEARTBEAT)
        sub = conn.subscribe("alerts.>")
        conn.serve("ping", lambda m: b"pong")
        await conn.flush()
        b.kill()
        b2 = BrokerProcess(b.url).start()
        for _ in range(500):
            if conn.sessions == 2 and conn.connected:
                break
            await asyncio.sleep(0.02)
        assert conn.sessions == 2
        await conn.flush()   # the re-declared subscription and service are in place
        other = await aio.connect(b.url, heartbeat=HEARTBEAT)
        await other.publish("alerts.fire", b"!")
        await other.flush()
        assert (await sub.recv(timeout=5)).payload == b"!"
        assert (await other.request("ping", b"", timeout=5)).payload == b"pong"
        await other.close()
        await conn.close()
    finally:
        b.stop()
        if b2 is not None:
            b2.stop()


async def test_connect_without_a_broker_fails_cleanly(endpoint):
    with pytest.raises(errors.ConnectionLost):
        await aio.connect(endpoint.replace(":0", ":1"), timeout=0.3)


async def test_a_reply_that_cannot_be_sent_fails_its_request_not_the_session(broker, conn):
    async def later(msg):
        return "not bytes either"

    conn.serve("bad", lambda m: "not bytes" if m.payload == b"now" else later(m))
    await conn.flush()
    for payload in (b"now", b"later"):
        with pytest.raises(errors.WrongType):
            await conn.request("bad", payload, timeout=10)
    conn.serve("good", lambda m: m.payload)
    await conn.flush()
    assert (await conn.request("good", b"ok", timeout=10)).payload == b"ok"
    assert conn.proto.sessions == 1


async def test_bad_arguments_raise_at_the_call_and_spare_the_session(broker, conn):
    """The checks live in the protocol module both clients share; the asyncio
    client's own paths (request's timeout, subscribe's max_bytes) too."""
    conn.serve("echo", lambda m: m.payload)
    sub = conn.subscribe("t", max_bytes=4096)
    await conn.flush()
    with pytest.raises(errors.WrongType):
        await conn.request("echo", b"x", timeout="soon")
    with pytest.raises(errors.LimitExceeded):
        await conn.send("q", bytes(2 << 20))   # over the broker's 1 MiB message limit
    with pytest.raises(errors.LimitExceeded):
        conn.subscribe("t", max_bytes=-1)
    assert sub.pattern == "t" and not sub.closed
    await conn.publish("t", b"still here")
    assert (await sub.recv(timeout=5)).payload == b"still here"
    assert (await conn.request("echo", b"ok", timeout=10)).payload == b"ok"
    stats = await conn.stats()
    assert [s["max_bytes"] for s in stats["subscriptions"]] == [4096]
    assert conn.proto.sessions == 1
    await conn.close()
    assert sub.closed


async def test_close_says_goodbye(broker):
    """The broker learns of a closed connection from its BYE, at once, not
    after three missed heartbeats (30 s here): the socket lingers for it."""
    from ringcast.client import connect

    with connect(broker.url, heartbeat=HEARTBEAT) as watcher:
        for _ in range(5):
            c = await aio.connect(broker.url, heartbeat=10.0)
            assert watcher.stats()["clients"] == 2
            await c.close()
            for _ in range(100):
                if watcher.stats()["clients"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert watcher.stats()["clients"] == 1


def _after_close(client):
    """Every call that would accept something to send, on a closed client."""
    return {
        "publish": lambda: client.publish("t", b"x"),
        "publish_many": lambda: client.publish_many("t", [b"x"]),
        "send": lambda: client.send("q", b"x"),
        "send_many": lambda: client.send_many("q", [b"x"]),
        "request": lambda: client.request("svc", b"x", timeout=1),
        "flush": lambda: client.flush(timeout=1),
        "stats": lambda: client.stats(timeout=1),
        "subscribe": lambda: client.subscribe("t"),
        "consume": lambda: client.consume("q"),
        "serve": lambda: client.serve("svc", lambda m: m.payload),
    }


async def test_a_closed_client_accepts_nothing(broker):
    """After close() nothing is sent, so nothing may be accepted: every call
    raises Closed at once. publish and send used to buffer into a stream
    nobody would send (lost without a word), and an asyncio request waited
    for good whatever its timeout (no sweep runs after close)."""
    from ringcast.client import connect

    sync = connect(broker.url, heartbeat=HEARTBEAT)
    sync.close()
    conn = await aio.connect(broker.url, heartbeat=HEARTBEAT)
    await conn.close()
    wrong = []
    for client in (sync, conn):
        for name, call in _after_close(client).items():
            try:
                result = call()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 5)
            except errors.Closed:
                continue
            except Exception as exc:   # anything else is the failure
                wrong.append((type(client).__name__, name, repr(exc)))
            else:
                wrong.append((type(client).__name__, name, "accepted"))
    assert wrong == []


@pytest.mark.parametrize("scenario", [test_pubsub_queue_and_requests,
                                      test_cancelled_recv_loses_nothing,
                                      test_cancelled_request_leaves_the_connection_usable])
def test_on_uvloop(broker, scenario):
    """The tests above, on uvloop's event loop: the client relies on
    add_reader and on how futures are cancelled, which uvloop implements anew."""
    uvloop = pytest.importorskip("uvloop")

    async def main():
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        c = await aio.connect(broker.url, heartbeat=HEARTBEAT)
        try:
            await scenario(broker, c)
        finally:
            await c.close()

    uvloop.run(main())
