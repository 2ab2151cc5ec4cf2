"""Acks and replies, the client's urgent records: cut into frames the broker
takes, never carried from an old session into a new one; and an embedded
request that waits forever reaching a remote responder. Real broker
(in-process thread over an embedded router, loopback, port 0) and real
clients; no sleeps as synchronisation."""

import asyncio
import threading

import pytest

from ringcast import aio, errors
from ringcast.client import connect

from .conftest import serving, wait_for

pytestmark = pytest.mark.timeout(120)


# -- 1. an embedded request that waits forever, answered by a remote responder ------------

def test_an_embedded_request_with_an_infinite_timeout_reaches_a_remote_responder(embedded):
    """An embedded request with ``timeout=float("inf")``, offered to a remote
    responder: the RQST's ms left once came from int(inf), which raised
    OverflowError in the broker loop, and the request was never offered,
    answered or failed."""
    router, broker = embedded()
    with connect(broker.endpoints[0], timeout=10) as client:
        client.serve("echo", lambda m: b"re:" + m.payload)
        client.flush()
        serving(router, "echo")
        done = threading.Event()
        box = []

        def settle(result):
            box.append(result)
            done.set()

        router.request_cb("echo", b"x", settle, timeout=float("inf"))
        assert done.wait(10), "the request was never offered to the remote responder"
    assert box[0].payload == b"re:x", box


# -- 2. a run of acks written in one go must fit the broker's frame limit ----------------------

def test_a_tick_of_acks_is_cut_into_frames_the_broker_takes(embedded):
    """daf0467 cut urgent records into frames at FRAME_TARGET (``_urgent``
    and ``_Settler.respond``), but ``_Settler.ack`` (inlined, and since
    00b4f6c not even kicking past the first ack) appended to the urgent
    writer without ever cutting it (``Urgent`` now cuts after every
    record). An asyncio consumer that acks a large batch in one loop tick
    built one urgent frame of ~9 bytes per ack; past the
    broker's max_frame (ZMQ_MAXMSGSIZE) libzmq drops the connection, every
    ack is lost and all the messages are delivered again."""
    n = 40_000
    router, broker = embedded(max_frame=256 << 10, max_message=64 << 10)
    url = broker.endpoints[0]
    with connect(url, timeout=10) as producer:
        producer.send_many("jobs", [b"j"] * n)
        producer.flush(10)

    async def consume_and_ack():
        conn = await aio.connect(url)
        try:
            consumer = conn.consume("jobs", prefetch=n)
            msgs = []
            while len(msgs) < n:
                msgs += await consumer.recv_many(n, timeout=10)
            for m in msgs:   # one loop tick: every ack lands in proto.urgent
                m.ack()
            stats = await conn.stats(timeout=10)   # after the acks, in order
            return stats["queues"]["jobs"], conn.sessions
        finally:
            await conn.close()

    queue, sessions = asyncio.run(consume_and_ack())
    assert sessions == 1, "the session was dropped (an urgent frame over max_frame)"
    assert queue["acked"] == n, queue


# -- 3. an answer of an old session must not land in the new one -------------------------

class _Gate:
    """``proto.lock`` for one thread held at the door until ``go`` is set;
    every other thread goes straight through to the client's lock."""

    def __init__(self, lock, thread_name):
        self.lock = lock
        self.thread_name = thread_name
        self.at_door = threading.Event()
        self.go = threading.Event()

    def __enter__(self):
        if threading.current_thread().name == self.thread_name:
            self.at_door.set()
            assert self.go.wait(30)
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def test_a_reply_begun_in_an_old_session_does_not_answer_a_request_of_the_new_one(embedded):
    """``_Settler.respond`` (and ``ack``) test ``stale`` before taking the
    client lock. A reply started in session 1 that reaches the lock after
    the client reconnected and was welcomed again finds ``ready`` True and
    writes its REP -- with session 1's tag -- into session 2's urgent
    buffer. The broker numbers tags per session from 1, so it answers
    whichever session-2 request holds that tag, with the wrong payload."""
    router, broker = embedded()
    url = broker.endpoints[0]
    with connect(url, timeout=10) as server, connect(url, timeout=10) as asker:
        responder = server.serve("svc", concurrency=4)
        server.flush()
        serving(router, "svc")
        answers = {}

        def ask(key, payload):
            try:
                answers[key] = asker.request("svc", payload, timeout=10).payload
            except errors.RingcastError as exc:
                answers[key] = exc

        first = threading.Thread(target=ask, args=("old", b"1"))
        first.start()
        old = responder.recv(timeout=10)   # session 1, tag 1
        gate = _Gate(server.proto.lock, "late-reply")
        server.proto.lock = server.proto.urgent.lock = gate   # the native REP takes the latter
        def answer_late():
            try:
                old.respond(b"answer to the OLD request")
            except errors.AckError:   # what a reply of an ended session should get
                pass

        late = threading.Thread(target=answer_late, name="late-reply")
        late.start()
        assert gate.at_door.wait(10)
        # the broker forgets the server's session; it reconnects and serves again
        s = next(s for s in broker._sessions.values() if s.name == server.proto.name)
        broker._call_soon(broker._drop, s, "test: session reset")
        assert wait_for(lambda: server.sessions == 2 and server.connected)
        first.join(10)
        serving(router, "svc")
        second = threading.Thread(target=ask, args=("new", b"2"))
        second.start()
        assert wait_for(lambda: responder.pending == 1)   # session 2, tag 1
        gate.go.set()
        late.join(10)
        new = responder.recv(timeout=10)
        new.respond(b"answer to the NEW request")
        second.join(15)
        server.proto.lock = server.proto.urgent.lock = gate.lock
    assert answers["new"] == b"answer to the NEW request", answers


# -- 4. frames fit a small max_frame: the client cuts them for the broker's limits ------------

def test_frames_stay_under_a_small_max_frame(embedded):
    """A client cut frames once they reached 64 KiB, so a frame could hold
    64 KiB - 1 and then a whole record. Under a broker whose max_frame is
    just above its largest record, two 60 KB records in one frame went over
    it: libzmq dropped the session and both were lost. Publishes (the
    outbox) and replies (urgent records) now cut at what WELCOME allows."""
    router, broker = embedded(max_frame=70_000, max_message=1024)
    big = {"h": "x" * 60_000}
    with connect(broker.endpoints[0], timeout=10) as client:
        sub = client.subscribe("big")
        client.serve("echo", lambda m: m.respond(b"re:" + m.payload, big))   # inline
        client.flush()
        serving(router, "echo")
        for i in range(3):   # one batch: the outbox holds all three
            client.publish("big", b"%d" % i, headers=big)
        client.flush()
        got = [sub.recv(timeout=10) for _ in range(3)]
        assert [m.payload for m in got] == [b"0", b"1", b"2"]
        assert all(m.headers == big for m in got)
        # three requests in one frame: their replies, written inline, in one tick
        results = []
        done = threading.Event()

        def settle(result):
            results.append(result)
            if len(results) == 3:
                done.set()

        for i in range(3):
            router.request_cb("echo", b"%d" % i, settle, timeout=10)
        assert done.wait(10), results
        assert sorted(r.payload for r in results) == [b"re:0", b"re:1", b"re:2"]
        assert all(r.headers == big for r in results)
        assert client.sessions == 1, "a frame over max_frame dropped the session"


def test_limits_that_cannot_hold_a_record_are_refused():
    """max_frame below the largest record max_message and max_subject allow
    (with 64 KiB of headers) could never carry some accepted message."""
    from ringcast import Broker

    with pytest.raises(errors.LimitExceeded, match="must be at least"):
        Broker("tcp://127.0.0.1:0", max_frame=65536, max_message=1024)


@pytest.mark.parametrize("limits", [{"max_message": -1_000_000}, {"max_subject": 0},
                                    {"max_frame": -1}, {"max_message": 1.5},
                                    {"max_frame": 1 << 41}])
def test_limits_that_are_not_sizes_are_refused_by_name(limits):
    """A negative or fractional limit is named in the error (it used to be
    refused, if at all, with a max_record sum wrapped around in C)."""
    from ringcast import Broker

    (name,) = limits
    with pytest.raises(errors.LimitExceeded, match=name):
        Broker("tcp://127.0.0.1:0", **limits)
