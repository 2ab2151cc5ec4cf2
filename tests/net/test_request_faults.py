"""Requests through a broker under failure: a broker killed under requests in
flight, responders killed or stalled while they hold requests."""

import threading

import pytest

from ringcast import errors
from ringcast.client import connect

from .conftest import HEARTBEAT, BrokerProcess, barrier, wait_for


@pytest.mark.parametrize("timeout, restart", [(None, True), (60.0, True), (None, False)])
def test_a_sync_request_in_flight_when_the_broker_dies_fails_with_connection_lost(
        endpoint, timeout, restart):
    """The request waits on its thread's own session, which idles with a long
    heartbeat: it used to wait for its deadline (forever with None) after the
    broker was gone, even once a new broker had taken its place."""
    b = BrokerProcess(endpoint).start()
    url = b.url
    b2 = None
    try:
        with connect(url, heartbeat=HEARTBEAT) as resp_client, \
                connect(url, heartbeat=HEARTBEAT) as asker:
            held = resp_client.serve("hold", concurrency=1)   # never answers
            barrier(resp_client)
            box = []

            def ask():
                try:
                    box.append(asker.request("hold", b"x", timeout=timeout))
                except errors.RingcastError as exc:
                    box.append(exc)

            t = threading.Thread(target=ask, daemon=True)
            t.start()
            assert held.recv(timeout=10).payload == b"x"   # the broker holds it
            b.kill()
            if restart:
                b2 = BrokerProcess(url).start()
            t.join(10 * HEARTBEAT * 3)
            assert not t.is_alive(), "the request still waits on a broker that is gone"
            assert isinstance(box[0], errors.ConnectionLost), box
            if not restart:
                return
            # the clients carry on with the new broker
            assert wait_for(lambda: resp_client.sessions == 2 and resp_client.connected, 15)
            barrier(resp_client)
            t = threading.Thread(target=ask, daemon=True)
            t.start()
            msg = held.recv(timeout=10)
            msg.respond(b"again")
            t.join(10)
            assert box[1].payload == b"again"
    finally:
        b.stop()
        if b2 is not None:
            b2.stop()
