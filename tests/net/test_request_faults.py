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


HOLDER = """
import sys, ringcast
c = ringcast.connect(sys.argv[1], heartbeat=0.2)
r = c.serve("work", concurrency=1)   # takes one request and never answers it
c.flush()
print("ready", flush=True)
print(r.recv(timeout=30).payload.decode(), flush=True)
sys.stdin.read()
"""


def test_a_responder_killed_holding_a_request_fails_it_and_the_backlog_goes_on(
        broker, client, procs):
    """kill -9 of a responder: the request it held fails with ServiceError
    (docs/protocol.md, Session 3) instead of waiting forever, and requests
    still in the backlog go to the responder that is left."""
    import subprocess

    from .conftest import run_script

    holder = run_script(HOLDER, broker.url, stdin=subprocess.PIPE)
    procs.append(holder)
    assert holder.stdout.readline().strip() == "ready"
    mine = client.serve("work", concurrency=1)   # stalls until we answer
    barrier(client)
    results = {}

    def ask(i):
        try:
            results[i] = client.request("work", b"%d" % i, timeout=None).payload
        except errors.RingcastError as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    first = mine.recv(timeout=10)             # one for us, one for the holder,
    held = holder.stdout.readline().strip()   # two wait in the backlog
    assert wait_for(lambda: client.stats()["services"]["work"]["backlog"] == 2), \
        client.stats()["services"]
    holder.kill()
    holder.wait(10)
    holder.stdin.close()
    first.respond(b"ok:" + first.payload)
    for _ in range(2):
        m = mine.recv(timeout=10)
        m.respond(b"ok:" + m.payload)
    for t in threads:
        t.join(10)
    assert isinstance(results.pop(int(held)), errors.ServiceError), results
    assert sorted(results.values()) == sorted(b"ok:%d" % i for i in results)


def test_an_embedded_request_without_deadline_reaches_a_remote_responder_as_one(
        embedded, zsocket):
    """An RQST carries the ms left until the deadline, and 2**53 means none
    (docs/protocol.md, Requests). An embedded request with no deadline used
    to carry 60,000 ms: a responder honouring it would give up after a minute
    on a requester that waits forever."""
    from ringcast import _codec as C
    from ringcast.broker import MAX_TIMEOUT_MS

    from .conftest import raw_session, serving

    router, broker = embedded()
    sock, _ = raw_session(zsocket, broker.endpoints[0], "responder")
    w = C.Writer()
    w.record(C.SERVE, 1, "svc", 4)
    sock.send(w.take())
    serving(router, "svc")
    router.request_cb("svc", b"x", lambda _: None, timeout=None)
    router.request_cb("svc", b"y", lambda _: None, timeout=float("inf"))
    left = []
    while len(left) < 2:
        assert sock.poll(5000), "no request reached the responder"
        left += [ev[3] for ev in C.Reader(sock.recv()).events({}) if ev[0] == C.RQST]
    year_ms = 365 * 86400 * 1000
    assert left[0] == MAX_TIMEOUT_MS and left[1] > 100 * year_ms, left
