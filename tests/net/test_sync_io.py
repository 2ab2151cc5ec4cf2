"""The sync client's I/O thread sleeps in one zmq_poll on its DEALER and a
socket pair for kicks, and skips its timer after answering a frame when
nothing is due. A missed input, kick or due send would stall it until its
timer: with a 30 s heartbeat that is a Timeout here."""

import threading

from ringcast.broker import Broker
from ringcast.client import connect


def test_io_thread_misses_no_input_and_no_kick_with_a_long_heartbeat():
    broker = Broker("tcp://127.0.0.1:0", heartbeat=30.0).start()
    try:
        with connect(broker.endpoints[0], heartbeat=30, timeout=10) as server, \
                connect(broker.endpoints[0], heartbeat=30, timeout=10) as c:
            server.serve("echo", lambda m: m.payload)          # inline, on the I/O thread
            server.flush(timeout=5)
            sub = server.subscribe("io.>")
            server.flush(timeout=5)
            for i in range(300):
                # a request answered by the responder's I/O thread, a publish
                # kicked from this thread and a delivery to a waiting reader
                assert c.request("echo", b"%d" % i, timeout=5).payload == b"%d" % i
                c.publish("io.x", b"%d" % i)
                c.flush(timeout=5)
                assert sub.recv(timeout=5).payload == b"%d" % i

            # kicks from many threads at once (only one wake-up is pending at a time)
            errors = []

            def publisher(k):
                try:
                    for j in range(50):
                        c.publish("io.t", b"%d-%d" % (k, j))
                        c.flush(timeout=5)
                except Exception as exc:   # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=publisher, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            got = [sub.recv(timeout=5).payload for _ in range(200)]
            for t in threads:
                t.join(10)
            assert not errors
            assert sorted(got) == sorted(b"%d-%d" % (k, j) for k in range(4) for j in range(50))
    finally:
        broker.stop()


def test_an_endpoint_zeromq_refuses_fails_at_connect_like_the_asyncio_client():
    """A URL libzmq cannot connect to raised in the I/O thread (a stray
    thread traceback), and ``connect`` then waited its whole timeout to
    report ConnectionLost, "no broker answered", as if the URL were fine."""
    import time

    import pytest
    import zmq

    for url in ("foo://x", "tcp://127.0.0.1"):
        t0 = time.monotonic()
        with pytest.raises(zmq.ZMQError):
            connect(url, timeout=30)
        assert time.monotonic() - t0 < 10, url
    assert not [t for t in threading.enumerate() if t.name == "ringcast-client-io"]


def test_a_publish_from_an_inline_handler_leaves_after_its_linger():
    """After answering a frame the I/O thread skips its timer when nothing
    is due before the timer's time; a publish an inline handler buffered
    (a partial frame, no kick: it runs on the I/O thread) is due after
    ``linger``: with a 30 s heartbeat a skipped one is a Timeout here."""
    broker = Broker("tcp://127.0.0.1:0", heartbeat=30.0).start()
    try:
        with connect(broker.endpoints[0], heartbeat=30, timeout=10) as server, \
                connect(broker.endpoints[0], heartbeat=30, timeout=10) as c:
            def handler(msg):
                server.publish("done.x", msg.payload)
                return b"ok"

            server.serve("work", handler)
            server.flush(timeout=5)
            sub = c.subscribe("done.>")
            c.flush(timeout=5)
            for i in range(20):
                assert c.request("work", b"%d" % i, timeout=5).payload == b"ok"
                assert sub.recv(timeout=5).payload == b"%d" % i
    finally:
        broker.stop()
