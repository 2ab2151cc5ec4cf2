"""Pub/sub through the broker at its edges: what a remote subscriber cannot
read, closing a subscription that holds a publisher back, credit across a
new session, and drop counts that clients and STATS agree on."""

import pytest

from ringcast import _codec as C
from ringcast.client import connect

from .conftest import HEARTBEAT, barrier

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
