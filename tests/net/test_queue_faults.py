"""Remote queue consumers around the ends of things: a session lost and
started again, a consumer closed with deliveries in hand or on their way."""

import threading

import pytest

from ringcast import errors
from ringcast.client import connect

from .conftest import HEARTBEAT, barrier


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
