"""A broker process on the pure-Python core (RINGCAST_NO_EXTENSIONS=1) serves
the same protocol: pub/sub, a queue and a request, from a client on the
native core. The broker's fast paths hand messages to the native router and
rings directly; this checks the fallback it takes without them."""

import pytest

from ringcast._impl import USE_EXTENSIONS as NATIVE
from ringcast.client import connect

from . import conftest
from .conftest import HEARTBEAT, BrokerProcess, take


@pytest.fixture
def pure_broker(monkeypatch):
    monkeypatch.setattr(conftest, "ENV", dict(conftest.ENV, RINGCAST_NO_EXTENSIONS="1"))
    b = BrokerProcess("tcp://127.0.0.1:0").start()
    yield b
    b.stop()


def test_pure_core_broker_serves_all_three_patterns(pure_broker):
    with connect(pure_broker.url, heartbeat=HEARTBEAT, timeout=10) as c:
        sub = c.subscribe("orders.>", capacity=4096)
        c.declare_queue("ship", bind="orders.placed")
        c.serve("stock", lambda m: b"stock:" + m.payload)
        c.flush()
        for i in range(300):
            c.publish("orders.placed", b"%d" % i)
        c.flush()
        got = take(sub, 300, 300)
        assert got == [b"%d" % i for i in range(300)]
        jobs = c.consume("ship", prefetch=64)
        taken = take(jobs, 300, 64, ack=True)
        assert taken == got
        assert c.request("stock", b"lamp", timeout=10).payload == b"stock:lamp"
        stats = c.stats()
        assert stats["queues"]["ship"]["acked"] == 300
        assert stats["core"] == "python"   # the broker really ran the fallback


def test_the_default_broker_routes_with_the_native_core(broker, client):
    assert client.stats()["core"] == ("native" if NATIVE else "python")
