"""Pub/sub through the broker at its edges: what a remote subscriber cannot
read, closing a subscription that holds a publisher back, credit across a
new session, and drop counts that clients and STATS agree on."""

import pytest

from ringcast import _codec as C
from ringcast import aio, errors
from ringcast.client import connect
from ringcast.router import Router

from .conftest import HEARTBEAT, barrier, start_again, take, wait_for

pytestmark = pytest.mark.timeout(60)


def _sub_stats(client, pattern):
    (stats,) = [s for s in client.stats()["subscriptions"] if s["pattern"] == pattern]
    return stats


def test_a_message_a_remote_subscriber_cannot_read_is_a_counted_drop(embedded):
    """An in-process publisher on a served router is not held to the wire's
    limits: a payload over max_message, or headers over the record limit,
    reaches the rings of remote subscribers too. The broker used to write it
    anyway: the oversize payload made the client's reader refuse the whole
    frame, the oversize headers left half a record in it (an internal error,
    and the subscription was never armed again); either way the session was
    reset and the messages around it vanished with no gap to show for it.
    Such a message is a drop: counted, and a gap in seq."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10) as c:
        sub = c.subscribe("x", overflow="block")
        barrier(c)
        router.publish("x", b"before")
        router.publish("x", bytes(broker.max_message + 1))
        router.publish("x", b"mid")
        router.publish("x", b"headers", {"k": "v" * C.MAX_HEADERS})
        router.publish("x", b"after")
        got = [sub.recv(timeout=10) for _ in range(3)]
        assert [(m.seq, m.payload) for m in got] == [(1, b"before"), (3, b"mid"), (5, b"after")]
        assert sub.dropped == 2
        assert _sub_stats(c, "x")["dropped"] == 2
        assert c.sessions == 1
        assert broker.counters.get("internal_errors", 0) == 0


def test_closing_its_own_full_subscription_frees_a_parked_publisher(embedded):
    """A client publishing into its own full block subscription: its frames
    wait at the broker for room, and its CLOSE, an ordered record, waits
    behind them. Closing the very subscription that holds the publisher back
    used to free nothing (the client dropped the MSGs already sent for the
    closed handle and granted no more credit), so the publisher waited for
    good; embedded, closing a subscription frees its publishers at once."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    url = broker.endpoints[0]
    with connect(url, heartbeat=HEARTBEAT, timeout=10) as c, \
            connect(url, heartbeat=HEARTBEAT, timeout=10) as watcher:
        seen = watcher.subscribe("loop", capacity=1000)
        barrier(watcher)
        sub = c.subscribe("loop", capacity=8, overflow="block", window=4)
        barrier(c)
        for i in range(100):
            c.publish("loop", b"%d" % i)
        with pytest.raises(errors.Timeout):
            c.flush(0)   # cut the frame: it leaves now, and cannot be applied whole
        assert wait_for(lambda: broker.counters["publisher_waits"] >= 1)
        assert wait_for(lambda: sub.pending == 4)   # its window, all held here
        sub.close()
        c.flush(10)   # every publish applied, the CLOSE too
        assert not c.proto.draining   # and the client knows it: nothing more comes
        assert [s["pattern"] for s in router.stats()["subscriptions"]] == ["loop"]
        assert take(seen, 100) == [b"%d" % i for i in range(100)]


def test_messages_of_an_earlier_session_grant_the_new_one_no_credit(embedded):
    """Messages received before a broker restart stay readable; taking them
    used to count as taking the new session's, so the client granted credit
    for messages the new broker never sent, and more than the window came."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    url = broker.endpoints[0]
    with connect(url, heartbeat=HEARTBEAT, timeout=10) as c:
        sub = c.subscribe("feed", capacity=64, window=4)
        barrier(c)
        router.publish_many("feed", [b"old-%d" % i for i in range(4)])
        assert wait_for(lambda: sub.pending == 4)
        broker.stop()
        router = Router()
        restarted = start_again(url, router=router, heartbeat=HEARTBEAT)
        try:
            assert wait_for(lambda: c.sessions == 2 and c.connected)
            barrier(c)
            router.publish_many("feed", [b"new-%d" % i for i in range(20)])
            assert wait_for(lambda: sub.pending == 8)   # the new session's window
            assert [sub.recv(timeout=10).payload for _ in range(4)] == [
                b"old-%d" % i for i in range(4)]
            barrier(c)
            barrier(c)   # MSGs the broker wrote for any CREDIT are here before this reply
            assert sub.pending == 4
            new = [sub.recv(timeout=10) for _ in range(20)]
            assert [m.payload for m in new] == [b"new-%d" % i for i in range(20)]
            # the new session's subscription numbers afresh (docs/protocol.md)
            assert [m.seq for m in new] == list(range(1, 21)) and sub.dropped == 0
        finally:
            restarted.stop()


def test_stats_keep_counting_the_drops_of_closed_subscriptions(embedded):
    """STATS ``dropped`` is a count, as ``published`` and ``delivered`` are:
    it used to add up only the subscriptions still open, so the drops a
    subscriber saw vanished from it when that subscriber left."""
    router, broker = embedded(heartbeat=HEARTBEAT)
    url = broker.endpoints[0]
    with connect(url, heartbeat=HEARTBEAT, timeout=10) as c:
        with connect(url, heartbeat=HEARTBEAT, timeout=10) as slow:
            stalled = slow.subscribe("feed", capacity=16, overflow="drop_oldest", window=4)
            barrier(slow)
            router.publish_many("feed", [b"%d" % i for i in range(100)])
            got = []
            while not got or got[-1].payload != b"99":
                got += stalled.recv_many(100, timeout=10)
            assert stalled.dropped == 100 - len(got) > 0
            assert c.stats()["dropped"] == stalled.dropped
            dropped = stalled.dropped
        assert wait_for(lambda: not router.stats()["subscriptions"])
        assert c.stats()["dropped"] == dropped


@pytest.mark.parametrize("batched", [False, True], ids=["pub", "pubs"])
def test_a_publish_to_a_closed_shared_router_is_refused_not_the_session(
        embedded, caplog, batched):
    """The embedded router a broker serves is closed while the broker runs:
    a remote publish used to end the publisher's session (the core raised
    Closed, taken for a bad frame). It is answered ERR Closed instead, and
    the session and the frame's other records go on."""
    router, broker = embedded()
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10) as c:
        barrier(c)
        router.close()
        if batched:
            c.publish_many("feed", [b"a", b"b"])
        else:
            c.publish("feed", b"a", headers={"k": "v"})
        with caplog.at_level("WARNING", logger="ringcast"):
            with pytest.raises(errors.Closed, match="router is closed"):
                c.flush()   # credited, but refused: not confirmed
            stats = barrier(c)   # reported once
        assert stats["counters"].get("protocol_errors", 0) == 0
        assert stats["counters"].get("sessions_dropped", 0) == 0
        assert c.sessions == 1
        assert any("router is closed" in r.getMessage() for r in caplog.records)


def test_a_send_to_a_closed_shared_router_is_refused_not_lost(embedded, caplog):
    """SENDs to a queue that exists used to be taken after the broker's
    router closed: credited as applied, and left where no consumer can
    reach them. Like a run of publishes, a run of SENDs is refused with one
    ERR Closed (batched or one by one), and the session goes on."""
    router, broker = embedded()
    router.declare_queue("jobs")
    # linger: the three SENDs leave in one frame, at the flush
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10, linger=60) as c:
        router.close()
        with caplog.at_level("WARNING", logger="ringcast"):
            c.send("jobs", b"a")                     # the batched path
            c.send("jobs", b"b", headers={"k": "v"})  # one by one
            c.send("jobs", b"c")
            with pytest.raises(errors.Closed, match="1 ERR"):
                c.flush()
            stats = barrier(c)
        assert router.queue("jobs").depth == 0
        assert stats["counters"].get("protocol_errors", 0) == 0
        assert c.sessions == 1
        assert len([r for r in caplog.records if "router is closed" in r.getMessage()]) == 1


async def test_the_asyncio_clients_flush_reports_a_refusal(embedded):
    """As ``Client.flush``: a publish or send the broker refused (its router
    closed) makes the next confirm raise, once, instead of only a log line."""
    router, broker = embedded()
    c = await aio.connect(broker.endpoints[0], heartbeat=HEARTBEAT)
    try:
        await c.flush()
        router.close()
        await c.publish("feed", b"a")
        await c.send("jobs", b"b")
        with pytest.raises(errors.Closed, match="router is closed"):
            await c.flush()
        await c.flush()   # reported once
        assert c.sessions == 1
    finally:
        await c.close()


def test_a_send_parked_on_a_full_queue_is_refused_when_the_router_closes(embedded):
    """A frame of SENDs that met a full block queue waits, parked, for room;
    the broker's router closed under it, and it waited for good (its
    client's flush timed out). It is refused instead: ERR Closed."""
    router, broker = embedded()
    router.declare_queue("jobs", capacity=1)
    with connect(broker.endpoints[0], heartbeat=HEARTBEAT, timeout=10) as c:
        c.send("jobs", b"a")
        c.send("jobs", b"b")
        assert wait_for(lambda: broker.counters["publisher_waits"] >= 1)
        router.close()
        with pytest.raises(errors.Closed, match="router is closed"):
            c.flush(10)
        assert router.queue("jobs").depth == 1
        assert c.sessions == 1
