"""The sync client's per-thread request path (``_DirectRequester``) against a
scripted broker: a plain ROUTER that speaks just enough of the protocol, so
each answer (or its absence) and its timing is under the test's control."""

import threading
import time

import pytest
import zmq

from ringcast import _codec as C
from ringcast import errors
from ringcast.client import connect

from .conftest import run_script


class ScriptedBroker:
    """Welcomes every session; ``answer(rid, service, payload)`` decides what
    a REQ gets: ``("reply", payload)``, ``("reply_after", seconds, payload)``,
    ``("no_session",)`` (ERR 0 ConnectionLost, the session forgotten),
    ``("frames", [[record, ...], ...])`` (those frames, as they are: the
    REQ's frame size is ``req_bytes`` meanwhile) or ``None`` (silence)."""

    def __init__(self, answer):
        self.answer = answer
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.url = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.hellos = 0
        self.requests = []
        self.stopping = False
        self.later = []            # (when, ident, frame)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def _send(self, ident, *records):
        w = C.Writer(256)
        for rec in records:
            w.record(*rec)
        self.sock.send_multipart([ident, w.take()])

    def run(self):
        sessions = set()
        while not self.stopping:
            now = time.monotonic()
            for item in [x for x in self.later if x[0] <= now]:
                self.later.remove(item)
                self.sock.send_multipart([item[1], item[2]])
            if not self.sock.poll(5):
                continue
            ident, frame = self.sock.recv_multipart()
            reader = C.Reader(frame)
            while True:
                rec = reader.next()
                if rec is None:
                    break
                if rec[0] == C.HELLO:
                    self.hellos += 1
                    sessions.add(ident)
                    self._send(ident, (C.WELCOME, C.PROTOCOL_VERSION, rec[2], C.DEFAULT_MAX_FRAME,
                                       C.DEFAULT_MAX_MESSAGE, C.DEFAULT_MAX_SUBJECT, 1 << 20,
                                       "scripted"))
                elif rec[0] == C.REQ:
                    _, rid, service, timeout_ms, _headers, payload = rec
                    self.requests.append((ident, rid, service, timeout_ms))
                    self.req_bytes = len(frame)
                    what = self.answer(rid, service, payload)
                    credit = (C.PCREDIT, len(frame))
                    if what is None:
                        self._send(ident, credit)
                    elif what[0] == "reply":
                        self._send(ident, (C.REPLY, rid, None, what[1]), credit)
                    elif what[0] == "reply_after":
                        w = C.Writer(256)
                        w.record(C.REPLY, rid, None, what[2])
                        w.record(*credit)
                        self.later.append((time.monotonic() + what[1], ident, w.take()))
                    elif what[0] == "frames":
                        for records in what[1]:
                            self._send(ident, *records)
                    elif what[0] == "no_session":
                        sessions.discard(ident)
                        self._send(ident, (C.ERR, 0, errors.ConnectionLost.code, "no session"))
                        break   # the rest of the frame is not applied

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close(linger=0)


@pytest.fixture
def scripted():
    made = []

    def make(answer):
        b = ScriptedBroker(answer)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_unanswered_request_times_out_at_its_deadline_and_the_next_one_waits_longer(scripted):
    plan = {1: None, 2: ("reply_after", 0.4, b"late but in time")}
    seen = []

    def answer(rid, service, payload):
        seen.append(payload)
        return plan[len(seen)]

    broker = scripted(answer)
    with connect(broker.url, timeout=10) as c:
        t = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.request("svc", b"first", timeout=0.25)
        took = time.monotonic() - t
        assert 0.25 <= took < 1.5
        # a longer timeout than the last one: the wait is not cut at the old one
        t = time.monotonic()
        assert c.request("svc", b"second", timeout=5).payload == b"late but in time"
        assert 0.35 <= time.monotonic() - t < 4
    assert seen == [b"first", b"second"]


def test_request_refused_with_no_session_is_sent_once_more_on_a_new_session(scripted):
    seen = []

    def answer(rid, service, payload):
        seen.append(payload)
        return ("no_session",) if len(seen) == 1 else ("reply", payload.upper())

    broker = scripted(answer)
    with connect(broker.url, timeout=10) as c:
        hellos = broker.hellos
        assert c.request("svc", b"again", timeout=5).payload == b"AGAIN"
        assert seen == [b"again", b"again"]
        # the requester's first session, then the new one it opened for the retry
        assert broker.hellos == hellos + 2
        idents = [r[0] for r in broker.requests]
        assert idents[0] != idents[1]
        assert c.request("svc", b"next", timeout=5).payload == b"NEXT"
        assert broker.requests[-1][0] == idents[1]   # the new session stays in use


def test_request_refused_twice_fails_with_a_timeout(scripted):
    broker = scripted(lambda rid, service, payload: ("no_session",))
    with connect(broker.url, timeout=10) as c:
        t = time.monotonic()
        with pytest.raises(errors.Timeout):
            c.request("svc", b"x", timeout=0.3)
        assert time.monotonic() - t < 2
    assert len(broker.requests) == 2


def _count_generic_frames(client, monkeypatch):
    """How many frames the requester applied the generic way (not the
    native fast path for a frame holding just the answer and credit)."""
    proto = client._direct.requester.proto
    generic = []
    applied = proto.frame_received

    def frame_received(frame, now):
        generic.append(frame)
        return applied(frame, now)

    monkeypatch.setattr(proto, "frame_received", frame_received)
    return proto, generic


def test_the_fast_path_and_its_fallbacks_answer_alike(scripted, monkeypatch):
    """A frame holding the answer and PCREDIT (either order) is read by the
    fast path; a reply frame carrying other records, a late reply to a
    request given up on, credit in a frame of its own and an error answer
    all come out as they did the generic way, credit counted once."""
    cases = []

    def answer(rid, service, payload):
        credit = (C.PCREDIT, broker.req_bytes)
        kind = payload.decode()
        cases.append(kind)
        if kind == "fast":
            return ("frames", [[(C.REPLY, rid, None, b"FAST"), credit]])
        if kind == "credit_first":
            return ("frames", [[credit, (C.REPLY, rid, {"k": "v"}, b"CF")]])
        if kind == "error":
            return ("frames", [[(C.REPLYERR, rid, errors.NoResponders.code, "nobody"), credit]])
        if kind == "with_other":
            return ("frames", [[(C.HB,), (C.REPLY, rid, None, b"OTHER"), credit]])
        if kind == "late":
            stale = (C.REPLY, rid - 1, None, b"stale")   # the silent request's
            return ("frames", [[stale, (C.REPLY, rid, None, b"ON TIME"), credit]])
        if kind == "split":
            return ("frames", [[credit], [(C.REPLY, rid, None, b"SPLIT")]])
        return None   # "silent": times out

    broker = scripted(answer)
    with connect(broker.url, timeout=10) as c:
        assert c.request("svc", b"fast", timeout=5).payload == b"FAST"   # the session's first
        proto, generic = _count_generic_frames(c, monkeypatch)
        window = proto.window
        assert proto.credit == window
        assert c.request("svc", b"fast", timeout=5).payload == b"FAST"
        m = c.request("svc", b"credit_first", timeout=5)
        assert (m.payload, m.headers, m.subject) == (b"CF", {"k": "v"}, "svc")
        with pytest.raises(errors.NoResponders, match="nobody"):
            c.request("svc", b"error", timeout=5)
        assert generic == [] and proto.credit == window and proto.requests == {}
        assert c.request("svc", b"with_other", timeout=5).payload == b"OTHER"
        assert len(generic) == 1
        with pytest.raises(errors.Timeout):
            c.request("svc", b"silent", timeout=0.2)
        assert proto.requests == {}   # forgotten: its late reply is dropped
        assert c.request("svc", b"late", timeout=5).payload == b"ON TIME"
        assert c.request("svc", b"split", timeout=5).payload == b"SPLIT"
        # the silent request's credit, the late reply's frame, the credit
        # alone and the reply after it (only the first frame is tried fast)
        assert len(generic) == 5
        assert c.request("svc", b"fast", timeout=5).payload == b"FAST"
        assert len(generic) == 5 and proto.requests == {}
        assert proto.credit == window   # all of it back, each counted once


def test_closing_the_client_ends_requests_other_threads_wait_on(procs):
    """Client.close() while other threads wait in request(): each request ends
    with Closed within a slice, and close() closes their sockets only once
    they let go. It used to close them under the waiting threads, and libzmq
    aborted the process (``Assertion failed ... signaler.cpp``): run in a
    child, whose exit status says so."""
    p = run_script("""
        import sys, threading
        import ringcast
        from ringcast.broker import Broker
        router = ringcast.Router()
        router.serve("silent", capacity=16)   # holds requests, answers none
        broker = Broker("tcp://127.0.0.1:0", router=router).start()
        client = ringcast.connect(broker.endpoints[0])
        outcomes = []
        def ask():
            try:
                client.request("silent", b"x", timeout=30)
                outcomes.append("answered")
            except ringcast.errors.RingcastError as exc:
                outcomes.append(type(exc).__name__)
        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        stats = router.stats
        while stats()["services"]["silent"]["requests"] < 3:   # all three waiting
            threading.Event().wait(0.001)
        client.close()
        for t in threads:
            t.join(10)
        print(sorted(outcomes), any(t.is_alive() for t in threads))
        broker.stop()
    """)
    procs.append(p)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == "['Closed', 'Closed', 'Closed'] False", (out, err)
