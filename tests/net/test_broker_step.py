"""The broker's pass stepped by hand (``_step``) from the test's thread, with
raw sessions on inproc sockets: what one pass sends, to whom and when, for
the frames the native request path takes whole (and the same tests on the
pure-Python core, where the Python path takes them)."""

import threading
import time

import pytest
import zmq

from ringcast import _codec as C
from ringcast import broker as broker_mod
from ringcast.broker import Broker

_URLS = iter(range(1 << 30))


@pytest.fixture
def stepped():
    """A broker whose loop is this thread: ``step()`` runs one pass once
    every message sent before it has arrived; ``session(name, ident)`` opens
    a raw session (its WELCOME read)."""
    url = f"inproc://broker-step-{next(_URLS)}"
    broker = Broker(url, spin=0)
    broker._open()
    broker._loop_ident = threading.get_ident()
    sock = broker._sock
    opened = []

    def step():
        assert sock.poll(5000), "nothing arrived for the pass"
        broker._step(sock, time.monotonic())

    def session(name, ident):
        s = sock.context.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, ident)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(url)
        opened.append(s)
        w = C.Writer(64)
        w.record(C.HELLO, C.PROTOCOL_VERSION, 30_000, name)
        s.send(w.take())
        step()
        assert s.poll(5000)
        s.recv()   # WELCOME
        return s

    def serve(s, hid, service, concurrency=16):
        w = C.Writer(64)
        w.record(C.SERVE, hid, service, concurrency)
        s.send(w.take())
        step()

    yield broker, step, session, serve
    for s in opened:
        s.close(linger=0)
    broker._stopping = True
    broker._close()


def _records(sock, timeout=0):
    """Every record waiting at ``sock`` (in ``timeout`` ms for the first)."""
    got = []
    while sock.poll(timeout):
        r = C.Reader(sock.recv())
        got.extend(iter(r.next, None))
        timeout = 0
    return got


def _req(rid, service, payload=b"q", size=0):
    w = C.Writer(max(256, size + 256))
    w.record(C.REQ, rid, service, 10_000, None, payload + b"x" * size)
    return w


def test_requests_after_their_session_is_dropped_mid_frame_are_void(stepped, monkeypatch):
    """A frame's first request goes to its own sender's service and its
    flush (a split-size frame) finds the sender gone: the frame's later
    request is void, as the Python path has it, not sent on."""
    broker, step, session, serve = stepped
    x, y = session("x", b"X"), session("y", b"Y")
    serve(x, 1, "to.x")
    serve(y, 2, "to.y")
    _records(y)
    real = broker_mod.zsend_parts

    def x_gone(s, ident, frame):
        return zmq.EHOSTUNREACH if ident == b"X" else real(s, ident, frame)
    monkeypatch.setattr(broker_mod, "zsend_parts", x_gone)
    w = _req(1, "to.x", size=broker_mod.REQUEST_SPLIT)   # flushed at once: X is gone
    w.record(C.REQ, 2, "to.y", 10_000, None, b"after the drop")
    x.send(w.take())
    step()
    assert b"X" not in broker._sessions
    assert not [r for r in _records(y, 200) if r[0] == C.RQST]
    assert broker._live == 0


def test_a_refilled_request_leaves_with_the_reply_that_freed_its_slot(stepped, monkeypatch):
    """A reply that frees a responder's slot refills it from the backlog:
    that request leaves in the pass's first flush, as the reply does, before
    the pass looks for more input (later frames of a busy pass wait)."""
    broker, step, session, serve = stepped
    req, resp = session("req", b"R"), session("resp", b"S")
    serve(resp, 1, "one.at.a.time", concurrency=1)
    w = _req(1, "one.at.a.time", b"a")
    w.record(C.REQ, 2, "one.at.a.time", 10_000, None, b"b")
    req.send(w.take())
    step()
    rqsts = [r for r in _records(resp, 5000) if r[0] == C.RQST]
    assert len(rqsts) == 1   # the second waits in the backlog
    w = C.Writer(256)
    w.record(C.REP, 1, rqsts[0][2], None, b"ra")
    resp.send(w.take())
    zget, seen = broker_mod.zget, []

    def looking_for_more(sock, option):   # the pass's EVENTS checks
        if option == broker_mod.EVENTS and sock is broker._sock:
            seen.append([r[0] for r in _records(resp)] + [r[0] for r in _records(req)])
        return zget(sock, option)
    monkeypatch.setattr(broker_mod, "zget", looking_for_more)
    step()
    # seen[0]: before the frame was read; seen[1]: after its first flush
    assert len(seen) >= 2 and C.RQST in seen[1] and C.REPLY in seen[1], seen


def test_a_failed_send_in_the_first_flush_is_not_the_senders_fault(stepped, monkeypatch):
    """A send error (other than no room or a peer gone) while a request
    leaves for its responder reaches the loop (counted there), and the
    requester's session is not dropped for it."""
    broker, step, session, serve = stepped
    req, resp = session("req", b"R"), session("resp", b"S")
    serve(resp, 1, "svc")
    _records(resp)
    real = broker_mod.zsend_parts
    monkeypatch.setattr(broker_mod, "zsend_parts",
                        lambda s, ident, f: zmq.ENOTSUP if ident == b"S" else real(s, ident, f))
    req.send(_req(1, "svc").take())
    with pytest.raises(zmq.ZMQError):
        step()
    assert b"R" in broker._sessions and b"S" in broker._sessions
    assert not broker.counters.get("protocol_errors") and not broker.counters.get(
        "internal_errors")
