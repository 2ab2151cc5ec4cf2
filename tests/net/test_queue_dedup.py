"""De-duplication over the wire: a remote publish on a subject a queue is
bound to is de-duplicated by its ``msg-id`` header, as a remote send is."""

import pytest

from ringcast import errors
from ringcast.client import connect

from .conftest import HEARTBEAT, BrokerProcess, barrier


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_remote_publishes_to_a_bound_subject_are_deduplicated(endpoint, tmp_path, durable):
    broker = BrokerProcess(endpoint, "--data-dir", str(tmp_path / "data")).start()
    try:
        with connect(broker.url, heartbeat=HEARTBEAT, timeout=10) as client:
            client.declare_queue("orders", bind="orders.>", durable=durable)
            client.publish("orders.placed", b"o1", {"msg-id": "A"})
            client.publish("orders.placed", b"o1", {"msg-id": "A"})  # a retried publish
            client.publish_many("orders.placed", [b"o2", b"o2"], {"msg-id": "B"})
            client.send("orders", b"o1", {"msg-id": "A"})  # a send sees the same window
            client.publish("orders.placed", b"plain")
            stats = barrier(client)["queues"]["orders"]
            assert (stats["depth"], stats["duplicates"]) == (3, 3)
            consumer = client.consume("orders")
            got = [consumer.recv(timeout=5) for _ in range(3)]
            assert [m.payload for m in got] == [b"o1", b"o2", b"plain"]
            with pytest.raises(errors.Timeout):
                consumer.recv(timeout=0.2)
            for m in got:
                m.ack()
    finally:
        broker.stop()
