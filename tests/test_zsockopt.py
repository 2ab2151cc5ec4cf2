"""ringcast._zsockopt: libzmq's own calls, bound in ringcast._zsock, must
answer what pyzmq's calls answer; the same tests run against both (the
pyzmq ones are what _zsock uses where libzmq's functions cannot be found)."""

import sys

import pytest
import zmq

from ringcast import _zsock, _zsockopt
from ringcast._zsock import EVENTS, POLLIN, RCVMORE

NATIVE = {"get": _zsockopt.get_int, "send_parts": _zsockopt.send_parts,
          "recv_message": _zsockopt.recv_message}
PYZMQ = {"get": _zsock._pyzmq_get_int, "send_parts": _zsock._pyzmq_send_parts,
         "recv_message": _zsock._pyzmq_recv_message}


@pytest.fixture(params=["native", "pyzmq"])
def impl(request):
    return NATIVE if request.param == "native" else PYZMQ


@pytest.fixture
def socket():
    """Makes sockets of one context, closed after the test."""
    ctx, made = zmq.Context(), []

    def make(kind):
        made.append(ctx.socket(kind))
        return made[-1]
    yield make
    for sock in made:
        sock.close(linger=0)
    ctx.term()


@pytest.fixture
def pair(socket):
    a, b = socket(zmq.PAIR), socket(zmq.PAIR)
    a.bind("inproc://zsockopt")
    b.connect("inproc://zsockopt")
    return a, b


@pytest.fixture
def router(socket):
    """A ROUTER (mandatory routing) and a DEALER named b"peer" connected to it."""
    r, d = socket(zmq.ROUTER), socket(zmq.DEALER)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)
    d.setsockopt(zmq.ROUTING_ID, b"peer")
    r.bind("inproc://zsock-router")
    d.connect("inproc://zsock-router")
    return r, d


def _options(impl, sock):
    return impl["get"](sock, EVENTS), impl["get"](sock, RCVMORE)


def _pyzmq_options(sock):
    return sock.get(zmq.EVENTS), sock.get(zmq.RCVMORE)


def test_options_match_pyzmq_in_every_state(impl, pair):
    a, b = pair
    get = impl["get"]
    assert _options(impl, a) == _pyzmq_options(a) and not _options(impl, a)[0] & POLLIN
    b.send_multipart([b"first", b"second"])
    assert a.poll(5000) == zmq.POLLIN
    assert _options(impl, a) == _pyzmq_options(a) and _options(impl, a)[0] & POLLIN
    a.recv()
    assert get(a, RCVMORE) == a.get(zmq.RCVMORE) == 1
    a.recv()
    assert get(a, RCVMORE) == a.get(zmq.RCVMORE) == 0
    assert _options(impl, a) == _pyzmq_options(a) and not _options(impl, a)[0] & POLLIN


def test_a_message_is_received_whole(impl, router):
    r, d = router
    recv_message = impl["recv_message"]
    assert recv_message(r) is None   # nothing waiting: no blocking
    d.send(b"frame")
    assert r.poll(5000)
    assert recv_message(r) == (b"peer", b"frame", 2)
    assert recv_message(r) is None


def test_extra_parts_are_read_and_counted(impl, router):
    r, d = router
    recv_message = impl["recv_message"]
    d.send_multipart([b"frame", b"two", b"three"])
    d.send(b"next")
    assert r.poll(5000)
    assert recv_message(r) == (b"peer", b"frame", 4)
    assert r.poll(5000)
    assert recv_message(r) == (b"peer", b"next", 2)   # the next message is intact


def test_the_identity_may_be_received_already(impl, router):
    r, d = router
    recv_message = impl["recv_message"]
    d.send_multipart([b"frame", b"extra"])
    d.send(b"next")
    assert r.poll(5000)
    first = r.recv()   # as the broker's blocking recv takes it
    assert recv_message(r, first) == (b"peer", b"frame", 3)
    assert r.poll(5000)
    assert recv_message(r, r.recv()) == (b"peer", b"next", 2)


def test_send_parts_reaches_the_peer_or_says_why_not(impl, router):
    r, d = router
    send_parts = impl["send_parts"]
    d.send(b"hello")   # the ROUTER learns the peer
    assert r.poll(5000)
    r.recv_multipart()
    assert send_parts(r, b"peer", b"payload") == 0
    assert d.poll(5000) and d.recv_multipart() == [b"payload"]
    assert send_parts(r, b"nobody", b"payload") == zmq.EHOSTUNREACH
    assert not d.poll(50)   # nothing of the refused message went anywhere


def test_send_parts_says_eagain_when_the_peer_is_full(impl, socket):
    r, d = socket(zmq.ROUTER), socket(zmq.DEALER)
    r.setsockopt(zmq.SNDHWM, 1)
    r.setsockopt(zmq.ROUTER_MANDATORY, 1)   # full: EAGAIN, not a silent drop
    d.setsockopt(zmq.RCVHWM, 1)
    d.setsockopt(zmq.ROUTING_ID, b"peer")
    r.bind("inproc://zsock-full")
    d.connect("inproc://zsock-full")
    d.send(b"hello")
    assert r.poll(5000)
    r.recv_multipart()
    sent = 0
    while (err := impl["send_parts"](r, b"peer", b"x")) == 0:
        sent += 1
        assert sent < 1000, "the HWM never filled"
    assert err == zmq.EAGAIN
    got = 0
    while d.poll(100):
        d.recv()
        got += 1
    assert got == sent   # every message taken was whole and delivered


def test_a_closed_socket_fails_as_pyzmq_does(impl, pair):
    a, _ = pair
    a.close(linger=0)
    with pytest.raises(zmq.ZMQError) as closed:
        impl["get"](a, EVENTS)
    with pytest.raises(zmq.ZMQError) as pyzmq:
        zmq.backend.Socket.get(a, EVENTS)
    assert closed.value.errno == pyzmq.value.errno == zmq.ENOTSOCK
    with pytest.raises(zmq.ZMQError) as closed:
        impl["recv_message"](a)
    assert closed.value.errno == zmq.ENOTSOCK
    assert impl["send_parts"](a, b"x", b"y") == zmq.ENOTSOCK


@pytest.mark.skipif(not sys.platform.startswith("linux") or sys.implementation.name != "cpython",
                    reason="the lookup through pyzmq's extension is only known to work here")
def test_libzmq_functions_are_found_and_used():
    assert _zsock._libzmq_functions() is not None
    assert _zsock.zget is _zsockopt.get_int
    assert _zsock.zsend_parts is _zsockopt.send_parts
    assert _zsock.zrecv_message is _zsockopt.recv_message


def test_a_non_socket_raises_and_is_never_dereferenced(impl):
    # natively: pyzmq's descriptor checks the type; through pyzmq, the
    # error of its first use as a socket
    with pytest.raises((TypeError, AttributeError, zmq.ZMQError)):
        impl["get"](object(), EVENTS)
    with pytest.raises((TypeError, AttributeError, zmq.ZMQError)):
        impl["recv_message"](object())


def test_a_broker_and_client_work_on_the_pyzmq_calls_alone(monkeypatch):
    """Where libzmq's functions cannot be bound (another pyzmq backend, a
    static libzmq, Windows), the broker and the sync client run on pyzmq's
    calls: publishes, queued messages and requests all arrive, counted."""
    import collections

    from ringcast import aio_client, broker, client

    used = collections.Counter()

    def counted(name, fallback):
        def call(*args):
            used[name] += 1
            return fallback(*args)
        return call

    for module in (broker, client, aio_client):
        for name, fallback in (("zget", PYZMQ["get"]), ("zsend_parts", PYZMQ["send_parts"]),
                               ("zrecv_message", PYZMQ["recv_message"])):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted(name, fallback))
    with broker.Broker("tcp://127.0.0.1:0", spin=0.002) as b, \
            client.connect(b.endpoints[0], timeout=10) as c:
        sub = c.subscribe("fallback.>")
        c.declare_queue("fallback.q")
        consumer = c.consume("fallback.q", prefetch=8)
        c.serve("fallback.svc", lambda m: m.payload[::-1])
        c.flush()
        c.stats()   # everything above is applied at the broker
        for i in range(50):
            c.publish("fallback.x", b"%d" % i)
            c.send("fallback.q", b"q%d" % i)
        c.flush()
        got = [m.payload for m in sub.recv_many(50, timeout=10)]
        while len(got) < 50:
            got += [m.payload for m in sub.recv_many(50 - len(got), timeout=10)]
        assert got == [b"%d" % i for i in range(50)]
        queued = []
        while len(queued) < 50:
            for m in consumer.recv_many(8, timeout=10):
                queued.append(m.payload)
                m.ack()
        assert queued == [b"q%d" % i for i in range(50)]
        assert [c.request("fallback.svc", b"abc%d" % i, timeout=10).payload
                for i in range(20)] == [(b"abc%d" % i)[::-1] for i in range(20)]
    assert set(used) == {"zget", "zsend_parts", "zrecv_message"}   # each one was used
