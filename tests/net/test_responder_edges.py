"""Edges of answering requests remotely: handlers that close their responder
or their client mid-batch, refused handles, replies that add up past the
broker's frame limit, timeouts the wire cannot carry, requests in flight at
close. Real broker (in-process thread, loopback, port 0) and real clients;
no sleeps as synchronisation."""

import threading

import pytest

from ringcast import _codec as C
from ringcast import aio, errors
from ringcast.broker import Broker
from ringcast.client import connect
from ringcast.router import Router

from .conftest import raw_session, serving, wait_for

pytestmark = pytest.mark.timeout(60)


def _raw_requests(sock, service, n, timeout_ms=10_000):
    """``n`` REQ records in ONE frame (rids 1..n): the broker routes them in
    one pass, so the responder gets their RQSTs in one frame too."""
    w = C.Writer()
    for i in range(n):
        w.record(C.REQ, i + 1, service, timeout_ms, None, b"%d" % i)
    sock.send(w.take())


def _raw_answers(sock, n, timeout=10.0):
    """rid -> REPLY payload or (code, text) of REPLYERR, until ``n`` answers."""
    got = {}
    while len(got) < n:
        assert sock.poll(int(timeout * 1000)), f"only {len(got)} of {n} answers: {got}"
        for ev in C.Reader(sock.recv()).events():
            if ev[0] == C.REPLY:
                got[ev[1]] = ev[3]
            elif ev[0] == C.REPLYERR:
                got[ev[1]] = (ev[2], ev[3])
    return got


# -- 1. asyncio client: ERR for a handle that has a handler ---------------------------------

async def test_aio_refused_responder_with_handler_does_not_lose_the_rest_of_the_frame(embedded):
    """The broker refuses a SERVE (here: over max_handles) with ERR <hid>;
    the same frame carries the publish credit for the client's frame (and
    any other answers). ``Connection._delivered`` runs the handler, whose
    ``h.take()`` on the empty inbox of an ended handle raises the refusal
    out of ``frame_received``: the rest of the frame (PCREDIT, REPLYERR...)
    is never applied. Credit leaks for good, so every flush times out."""
    router, broker = embedded(max_handles=1)
    conn = await aio.connect(broker.endpoints[0])
    try:
        conn.subscribe("a")                                # the one handle allowed
        resp = conn.serve("svc", lambda m: m.payload)      # refused: ERR <hid>
        await conn.flush(timeout=5)                        # Timeout if PCREDIT was lost
        assert resp.closed
        with pytest.raises(errors.LimitExceeded):
            await resp.recv(timeout=1)
    finally:
        await conn.close(timeout=0.5)


# -- 2. on_deliver once per frame: a handler that closes its own responder ------------------

def test_inline_handler_is_not_called_again_after_it_closed_its_responder(embedded, zsocket):
    """Several RQSTs in one frame to an inline responder whose handler closes
    the responder on the first request. All of them are in the inbox when
    ``Client._delivered`` runs the handler over the batch: it must stop once
    ``Responder.close()`` returned (the broker fails the rest when the CLOSE
    arrives)."""
    router, broker = embedded()
    calls = []
    with connect(broker.endpoints[0], timeout=10) as client:
        holder = {}

        def handler(msg):
            calls.append(msg.payload)
            holder["resp"].close()
            return b"ok"

        holder["resp"] = client.serve("svc", handler, concurrency=16)
        client.flush()
        serving(router, "svc")
        sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
        _raw_requests(sock, "svc", 5)
        answers = _raw_answers(sock, 5)
    assert calls == [b"0"], f"handler ran {len(calls)} times, after its close(): {answers}"


# -- 3. an inline handler closing its client ----------------------------------------------

def test_client_close_from_an_inline_handler_does_not_raise(embedded):
    """``Client.close()`` joins the I/O thread; called from an inline handler
    (which runs on that thread) ``Thread.join`` raises RuntimeError("cannot
    join current thread"), the request fails with ServiceError and close()
    never finishes (handles not closed, requester sockets left open)."""
    router, broker = embedded()
    box = []
    client = connect(broker.endpoints[0], timeout=10)

    def handler(msg):
        try:
            client.close()
        except BaseException as exc:   # noqa: B902 - what escapes close() is the bug
            box.append(exc)
        return b"bye"

    try:
        client.serve("svc", handler)
        client.flush()
        serving(router, "svc")
        with connect(broker.endpoints[0], timeout=10) as asker:
            try:
                asker.request("svc", b"x", timeout=5)
            except errors.RingcastError:
                pass   # the reply may or may not make it out before the BYE
    finally:
        client.close()
    assert box == [], f"close() from an inline handler raised {box!r}"


def test_client_close_from_an_inline_handler_runs_no_more_of_its_frame(embedded, zsocket):
    """A batch of requests in one frame; the handler closes its client on
    the first: it runs once (the rest leave the native path, see ``Client
    ._delivered``), and the requester's answers all come."""
    router, broker = embedded()
    calls = []
    client = connect(broker.endpoints[0], timeout=10)

    def handler(msg):
        calls.append(msg.payload)
        client.close()
        return b"bye"

    try:
        client.serve("svc", handler, concurrency=16)
        client.flush()
        serving(router, "svc")
        sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
        _raw_requests(sock, "svc", 5)
        answers = _raw_answers(sock, 5)
    finally:
        client.close()
    assert calls == [b"0"], f"handler ran {len(calls)} times after close(): {answers}"


# -- 4. an inline responder's replies to one frame of requests leave as one frame ----------

def test_replies_to_one_frame_of_requests_fit_the_brokers_frame_limit(embedded, zsocket):
    """Each reply is within max_message (1 MiB), but an inline handler
    answers a whole frame of RQSTs inside frame_received, and every REP
    went into one urgent writer, which ``data_to_send`` handed out as ONE frame.
    Five 900 KiB replies make a 4.5 MiB frame, over the broker's max_frame
    (4 MiB, its ZMQ_MAXMSGSIZE): libzmq drops the connection, every reply
    is lost and the requests fail (or time out) instead of being answered."""
    router, broker = embedded()
    big = b"r" * (900 << 10)
    with connect(broker.endpoints[0], timeout=10) as client:
        client.serve("big", lambda m: big, concurrency=16)
        client.flush()
        serving(router, "big")
        sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
        _raw_requests(sock, "big", 5, timeout_ms=5000)
        answers = _raw_answers(sock, 5, timeout=10)
    assert all(a == big for a in answers.values()), {
        rid: (a if not isinstance(a, bytes) else len(a)) for rid, a in answers.items()}


# -- 5. a requester's timeout that the RQST record cannot carry -----------------------------

def test_a_huge_request_timeout_does_not_cost_the_responder_its_session(embedded, zsocket):
    """REQ carries timeout_ms as a u64 and the broker accepts any value. For
    2**64-1 ms, ``_RemoteResponder._offer`` computes ``left`` = int((deadline
    - now) * 1000), which float rounding makes 2**64: ``out.record(C.RQST,
    ...)`` raises OverflowError. When the request waited in the backlog, the
    offer runs inside ``_on_rep`` of the RESPONDER's frame, so the
    responder's session is dropped as an "internal error" (and its other
    requests fail) because of what another client sent."""
    router, broker = embedded()
    entered, gate = threading.Event(), threading.Event()

    def handler(msg):
        entered.set()
        gate.wait(10)
        return b"re:" + msg.payload

    with connect(broker.endpoints[0], timeout=10) as client:
        client.serve("svc", handler, concurrency=1, threaded=True)
        client.flush()
        serving(router, "svc")
        sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
        w = C.Writer()
        w.record(C.REQ, 1, "svc", 10_000, None, b"1")
        sock.send(w.take())
        assert entered.wait(10)
        w.record(C.REQ, 2, "svc", (1 << 64) - 1, None, b"2")   # backlogged
        w.record(C.REQ, 3, "svc", 10_000, None, b"3")          # backlogged
        sock.send(w.take())
        assert wait_for(lambda: router.stats()["services"]["svc"]["backlog"] == 2)
        gate.set()
        answers = _raw_answers(sock, 3, timeout=5)   # rid 1's reply was lost with the session
        assert broker.counters.get("internal_errors", 0) == 0
        assert answers == {1: b"re:1", 2: b"re:2", 3: b"re:3"}, answers
        assert client.sessions == 1


# -- 6. asyncio: requests in flight when the connection closes -----------------------------

async def test_aio_close_settles_requests_in_flight(embedded):
    """``Connection.close()`` wakes recv and credit waiters but never settles
    ``proto.requests``: the timer that sweeps overdue requests stops with the
    connection and no frame is read any more, so a request awaiting its
    answer (from another task) hangs forever, whatever its timeout."""
    import asyncio

    router, broker = embedded()
    router.serve("slow", capacity=4)   # holds requests, answers none
    conn = await aio.connect(broker.endpoints[0])
    task = asyncio.ensure_future(conn.request("slow", b"x", timeout=1))
    for _ in range(1000):   # the event loop must run for the request to leave
        if router.stats()["services"].get("slow", {}).get("requests") == 1:
            break
        await asyncio.sleep(0.01)
    assert not task.done()
    await conn.close()
    done, _ = await asyncio.wait({task}, timeout=5)   # 5x its own timeout
    assert done, "request still pending 5 s after close()"
    with pytest.raises(errors.RingcastError):
        task.result()


async def test_aio_handler_is_not_called_again_after_it_closed_its_responder(embedded, zsocket):
    """As test_inline_handler_is_not_called_again_after_it_closed_its_responder,
    for the asyncio client: ``Connection._run_handler`` takes the whole batch
    and keeps calling the handler after ``Responder.close()``."""
    import asyncio

    router, broker = embedded()
    calls = []
    conn = await aio.connect(broker.endpoints[0])
    try:
        holder = {}

        def handler(msg):
            calls.append(msg.payload)
            holder["resp"].close()
            return b"ok"

        holder["resp"] = conn.serve("svc", handler, concurrency=16)
        await conn.flush()
        for _ in range(1000):
            if router.stats()["services"].get("svc", {}).get("responders"):
                break
            await asyncio.sleep(0.01)
        sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
        _raw_requests(sock, "svc", 5)
        got = {}
        for _ in range(1000):   # the event loop must run to answer
            while sock.poll(0):
                for ev in C.Reader(sock.recv()).events():
                    if ev[0] in (C.REPLY, C.REPLYERR):
                        got[ev[1]] = ev[2:]
            if len(got) == 5:
                break
            await asyncio.sleep(0.01)
        assert len(got) == 5, got
    finally:
        await conn.close(timeout=0.5)
    assert calls == [b"0"], f"handler ran {len(calls)} times, after its close()"


# -- 7. timeouts of "forever" ------------------------------------------------------------

def test_a_request_may_wait_forever_on_both_clients(embedded):
    """``timeout=float("inf")`` (or one past what the wire carries) is a
    request that waits as long as it takes, as on the embedded router; the
    clients used to raise OverflowError computing its milliseconds."""
    import asyncio

    router, broker = embedded()
    router.serve("echo", lambda m: b"re:" + m.payload)
    with connect(broker.endpoints[0], timeout=10) as client:
        for timeout in (float("inf"), 1e300):
            assert client.request("echo", b"s", timeout=timeout).payload == b"re:s"

    async def over_asyncio():
        conn = await aio.connect(broker.endpoints[0])
        try:
            return (await conn.request("echo", b"a", timeout=float("inf"))).payload
        finally:
            await conn.close()

    assert asyncio.run(over_asyncio()) == b"re:a"


def test_a_request_refused_at_the_call_leaves_nothing_waiting(embedded):
    """Headers the encoder refuses fail the call and leave no entry that a
    later sweep would settle (or that would hold its callback forever)."""
    router, broker = embedded()
    router.serve("echo", lambda m: m.payload)
    with connect(broker.endpoints[0], timeout=10) as client:
        with pytest.raises(errors.RingcastError):
            client.request("echo", b"x", {"k": 1}, timeout=5)   # a header value must be str
        with pytest.raises(errors.RingcastError):
            client.request("echo", b"x", {"k": "v" * (70 << 10)}, timeout=5)   # over 64 KiB
        assert client._direct.requester.proto.requests == {}
        assert client.request("echo", b"ok", timeout=5).payload == b"ok"


# -- 8. SERVE under a handle id the session holds -------------------------------------------

def _until_stats(sock, ref, timeout=10.0):
    """The events before STATSREP ``ref``: the records sent ahead of that
    STATS have all been applied by then."""
    got = []
    while True:
        assert sock.poll(int(timeout * 1000)), f"no STATSREP {ref}: {got}"
        for ev in C.Reader(sock.recv()).events({}):
            if ev[0] == C.STATSREP and ev[1] == ref:
                return got
            got.append(ev)


def test_a_refused_serve_under_a_handle_in_use_leaves_that_responder_serving(
        embedded, zsocket):
    """As with SUB and CONSUME, a SERVE reusing a handle id replaces that
    handle once the new one is accepted (docs/protocol.md). A refused one
    (ERR <hid>, here an invalid name) must leave the old responder serving:
    the broker used to close it first, so its service had none left."""
    router, broker = embedded()
    sock, _ = raw_session(zsocket, broker.endpoints[0], "responder")
    w = C.Writer()
    w.record(C.SERVE, 1, "svc", 4)
    w.record(C.SERVE, 1, "bad..name", 4)
    w.record(C.STATS, 1)
    sock.send(w.take())
    errs = [ev for ev in _until_stats(sock, 1) if ev[0] == C.ERR]
    assert [ev[:3] for ev in errs] == [(C.ERR, 1, errors.InvalidSubject.code)], errs

    answered = threading.Event()
    results = []
    router.request_cb("svc", b"q", lambda r: (results.append(r), answered.set()), timeout=10)
    while True:
        assert sock.poll(10000), "the request never reached the responder"
        rqsts = [ev for ev in C.Reader(sock.recv()).events({}) if ev[0] == C.RQST]
        if rqsts:
            break
    ((_, hid, msg, _),) = rqsts
    assert (hid, msg.subject, msg.payload) == (1, "svc", b"q")
    w.record(C.REP, 1, msg._tag, None, b"answer")
    sock.send(w.take())
    assert answered.wait(10)
    assert results[0].payload == b"answer"

    w.record(C.SERVE, 1, "other", 4)   # accepted: it replaces the old responder
    w.record(C.STATS, 2)
    sock.send(w.take())
    assert not [ev for ev in _until_stats(sock, 2) if ev[0] == C.ERR]
    with pytest.raises(errors.NoResponders):
        router.service("svc")
    assert len(router.service("other").responders) == 1


# -- 9. work handed to the broker loop as it stops ----------------------------------------------

def test_a_request_handed_to_the_loop_as_the_broker_stops_is_settled(embedded):
    """An embedded thread's request to a remote responder is handed to the
    broker loop (the responder is the loop's). Handed over after the loop's
    last pass, it was never run: the request, without a deadline, waited for
    good. The broker runs what was handed to it as it stops (here the
    responder's session then ends: ServiceError)."""
    router, broker = embedded()
    results = []
    with connect(broker.endpoints[0], timeout=10) as c:
        c.serve("svc", lambda m: b"re:" + m.payload)
        serving(router, "svc")
        real_close = broker._close

        def close_after_a_hand_off():
            asker = threading.Thread(target=router.request_cb, args=("svc", b"x", results.append),
                                     kwargs={"timeout": None})
            asker.start()
            asker.join(10)
            real_close()

        broker._close = close_after_a_hand_off
        broker.stop()
    assert len(results) == 1
    assert isinstance(results[0], (errors.ServiceError, errors.NoResponders)), results


def test_a_request_handed_over_after_the_brokers_last_calls_goes_elsewhere(embedded):
    """An embedded thread found the remote responder with room, and the
    broker stopped (its last calls run, the responder closed) before the
    hand-over: nothing would ever run it. The request must not wait for
    good: it goes to the others, here NoResponders."""
    router, broker = embedded()
    results = []
    with connect(broker.endpoints[0], timeout=10) as c:
        c.serve("svc", lambda m: b"re:" + m.payload)
        serving(router, "svc")
        real_call_soon = broker._call_soon

        def stopped_then_call_soon(fn, *args):
            # the offer checked the room; the broker stops before it hands over
            if threading.get_ident() != broker._loop_ident and broker._thread.is_alive():
                broker.stop()
            return real_call_soon(fn, *args)

        broker._call_soon = stopped_then_call_soon
        router.request_cb("svc", b"x", results.append, timeout=None)
    assert len(results) == 1 and isinstance(results[0], errors.NoResponders), results


def test_once_the_loop_ended_its_thread_hands_over_like_any_other():
    """``run()`` on an application's thread: once it returned, that thread
    (or a later one given its ident) still passed for the loop's, and work
    handed to the loop ran there at once, on a broker that has stopped (a
    remote responder's offer said yes). It is refused as from any thread."""
    with Router() as router:
        broker = Broker("tcp://127.0.0.1:0", router=router)
        broker.stop()   # before run(): its loop ends at once
        broker.run()
        ran = []
        assert broker._call_soon(ran.append, 1) is False
        assert ran == []


def _answer_in_order(responder, results, n):
    """Requests 0..n-1 reach ``responder`` in order, and their answers
    their askers."""
    for i in range(n):
        msg = responder.recv(timeout=10)
        assert msg.payload == b"%d" % i
        msg.respond(b"re:" + msg.payload)
    assert wait_for(lambda: len(results) == n)
    assert [m.payload for m in results] == [b"re:%d" % i for i in range(n)]


def test_a_refill_from_another_thread_hands_the_loop_only_what_fits(embedded):
    """A remote responder's room did not shrink for requests handed to the
    loop, so a refill from another thread handed over the whole backlog:
    the loop dispatched each again, and those that did not fit went to the
    back of the backlog, behind requests that came meanwhile. What fits is
    handed over; the rest keeps its place, and all go out in order."""
    from ringcast.services import PendingRequest

    router, broker = embedded()
    with connect(broker.endpoints[0], timeout=10) as c:
        responder = c.serve("svc", concurrency=1)
        serving(router, "svc")
        service = router.service("svc")
        (remote,) = service.responders
        gate = threading.Event()
        broker._call_soon(gate.wait)   # the loop runs nothing handed over until the gate opens
        results = []
        try:
            for i in range(3):   # a backlog while the responder has room, as a refill finds it
                service.backlog.append((b"%d" % i, None, PendingRequest(service, results.append,
                                                                        None)))
            service.refill(remote)   # from this thread, not the loop's
            assert [item[0] for item in service.backlog] == [b"1", b"2"]
        finally:
            gate.set()
        _answer_in_order(responder, results, 3)



def test_requests_from_another_thread_hand_the_loop_only_what_fits(embedded):
    """A new request from another thread checks the room that hand-overs
    already took, as a refill does: past it, the request waits in the
    backlog in its place, instead of being handed over and sent to the
    back of the backlog by the loop."""
    router, broker = embedded()
    with connect(broker.endpoints[0], timeout=10) as c:
        responder = c.serve("svc", concurrency=1)
        serving(router, "svc")
        service = router.service("svc")
        gate = threading.Event()
        broker._call_soon(gate.wait)   # the loop runs nothing handed over until the gate opens
        results = []
        try:
            for i in range(3):   # from this thread, not the loop's
                router.request_cb("svc", b"%d" % i, results.append, timeout=None)
            assert [item[0] for item in service.backlog] == [b"1", b"2"]
        finally:
            gate.set()
        _answer_in_order(responder, results, 3)
