"""The sync client's I/O thread sleeps in a blocking recv on its ROUTER,
which other threads wake through an inproc DEALER (``_kick``), and skips
its timer after answering a frame when nothing is due. A missed input,
kick or due send would stall it until its timer: with a 30 s heartbeat
that is a Timeout here."""

import threading

import zmq
from zmq.utils.monitor import recv_monitor_message

from ringcast import _codec as C
from ringcast.broker import Broker
from ringcast.client import connect

from .conftest import start_again


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


def _records(frame):
    reader, out = C.Reader(frame), []
    while (rec := reader.next()) is not None:
        out.append(rec)
    return out


def _welcome(sock):
    """As a broker: read a HELLO and answer WELCOME; returns the client's id."""
    ident, frame = sock.recv_multipart()
    (hello,) = _records(frame)
    assert hello[0] == C.HELLO
    w = C.Writer(256)
    w.record(C.WELCOME, hello[1], 30_000, 1 << 20, 1 << 20, 1024, 1 << 20, "fake")
    sock.send_multipart([ident, w.take()])
    return ident


def test_a_message_of_more_than_one_part_from_the_broker_ends_the_session():
    """One frame per message (docs/protocol.md): a ROUTER delivers every
    part, and a second one read as the next message's routing id would
    misread all that follows. The client drops such a message whole and
    starts a new session, as the broker does with a client's."""
    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    fake.setsockopt(zmq.RCVTIMEO, 10_000)
    fake.bind("tcp://127.0.0.1:0")
    c = connect(fake.getsockopt_string(zmq.LAST_ENDPOINT), heartbeat=30, timeout=0)
    try:
        first = _welcome(fake)
        c.wait_ready(10)
        w = C.Writer(256)
        w.record(C.HB)
        fake.send_multipart([first, w.take(), b"second part"])
        second = _welcome(fake)   # a new socket's HELLO: a new session
        assert second != first
        c.wait_ready(10)
        assert c.sessions == 2
    finally:
        c.close(timeout=0)
        fake.close()


def test_a_connection_libzmq_gives_up_on_is_opened_again():
    """The I/O thread's ROUTER sends to the broker with ROUTER_MANDATORY. A
    peer that fails the ZeroMQ handshake (here a PUB) makes libzmq drop the
    pipe for good: the next send raises EHOSTUNREACH (a DEALER's would
    block for ever) and the client opens a new socket, which finds the
    broker that took the endpoint meanwhile."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    url = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    monitor = pub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    monitor.setsockopt(zmq.RCVTIMEO, 10_000)
    c = connect(url, heartbeat=0.2, timeout=0)
    broker = None
    try:
        # the handshake failed (libzmq reports it only as a disconnection)
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        pub.disable_monitor()
        monitor.close()
        pub.close()
        broker = start_again(url, heartbeat=0.2)
        c.wait_ready(10)
        c.publish("x", b"1")
        c.flush(timeout=5)
    finally:
        c.close(timeout=0)
        if broker is not None:
            broker.stop()


def test_a_send_the_socket_has_no_room_for_is_waited_on(monkeypatch):
    """The I/O thread sends with ``zsend_parts``, which does not block and
    sends nothing when the socket has no room (EAGAIN; none with SNDHWM 0,
    so faked here): the reply then goes through ``_to_broker``, which sends
    it the blocking way; nothing is lost or sent twice. Any other errno
    raises, as pyzmq's send would."""
    import pytest

    from ringcast import client as client_mod

    real, calls = client_mod.zsend_parts, []

    def full_twice_in_three(sock, ident, frame):
        calls.append(frame)   # the reply's first try fails, and _to_broker's
        return zmq.EAGAIN if len(calls) % 3 else real(sock, ident, frame)

    broker = Broker("tcp://127.0.0.1:0", heartbeat=30.0).start()
    try:
        with connect(broker.endpoints[0], heartbeat=30, timeout=10) as server, \
                connect(broker.endpoints[0], heartbeat=30, timeout=10) as c:
            server.serve("echo", lambda m: m.payload)
            server.flush(timeout=5)
            monkeypatch.setattr(client_mod, "zsend_parts", full_twice_in_three)
            for i in range(20):
                assert c.request("echo", b"%d" % i, timeout=5).payload == b"%d" % i
            assert len(calls) >= 20
            monkeypatch.setattr(client_mod, "zsend_parts",
                                lambda sock, ident, frame: zmq.EHOSTUNREACH)
            with pytest.raises(zmq.ZMQError) as unreachable:
                client_mod._to_broker(None, b"x")
            assert unreachable.value.errno == zmq.EHOSTUNREACH
            monkeypatch.setattr(client_mod, "zsend_parts", real)
    finally:
        broker.stop()
