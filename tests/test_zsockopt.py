"""ringcast._zsockopt: int socket options read from libzmq directly must
answer what pyzmq's own get answers, and fall back to it when unbound."""

import sys

import pytest
import zmq

from ringcast import _zsock, _zsockopt
from ringcast._zsock import EVENTS, POLLIN, RCVMORE, zget


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://zsockopt")
    b.connect("inproc://zsockopt")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)
    ctx.term()


def _options(sock):
    return zget(sock, EVENTS), zget(sock, RCVMORE)


def _pyzmq_options(sock):
    return sock.get(zmq.EVENTS), sock.get(zmq.RCVMORE)


def test_options_match_pyzmq_in_every_state(pair):
    a, b = pair
    assert _options(a) == _pyzmq_options(a) and not _options(a)[0] & POLLIN
    b.send_multipart([b"first", b"second"])
    assert a.poll(5000) == zmq.POLLIN
    assert _options(a) == _pyzmq_options(a) and _options(a)[0] & POLLIN
    a.recv()
    assert zget(a, RCVMORE) == a.get(zmq.RCVMORE) == 1
    a.recv()
    assert zget(a, RCVMORE) == a.get(zmq.RCVMORE) == 0
    assert _options(a) == _pyzmq_options(a) and not _options(a)[0] & POLLIN


def test_a_closed_socket_raises_enotsock_as_pyzmq_does(pair):
    a, _ = pair
    a.close(linger=0)
    with pytest.raises(zmq.ZMQError) as native:
        zget(a, EVENTS)
    with pytest.raises(zmq.ZMQError) as pyzmq:
        zmq.backend.Socket.get(a, EVENTS)
    assert native.value.errno == pyzmq.value.errno == zmq.ENOTSOCK


@pytest.mark.skipif(not sys.platform.startswith("linux") or sys.implementation.name != "cpython",
                    reason="the lookup through pyzmq's extension is only known to work here")
def test_libzmq_getsockopt_is_found_and_used():
    assert _zsock._libzmq_getsockopt() != 0
    assert _zsockopt.bound()


def test_unbound_it_asks_pyzmq(pair, monkeypatch):
    a, b = pair
    asked = []

    def fallback(sock, option):
        asked.append(option)
        return zmq.backend.Socket.get(sock, option)

    _zsockopt.bind(0, fallback, zmq.ZMQError)
    try:
        assert not _zsockopt.bound()
        b.send(b"x")
        assert a.poll(5000) == zmq.POLLIN
        assert zget(a, EVENTS) & POLLIN and asked == [EVENTS]
    finally:
        _zsockopt.bind(_zsock._libzmq_getsockopt(), zmq.backend.Socket.get, zmq.ZMQError)
    assert _zsockopt.bound() == (_zsock._libzmq_getsockopt() != 0)
