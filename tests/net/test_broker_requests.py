"""Requests between embedded and remote parties of one broker: remote
responders sit beside embedded ones in the router's services, and answers
cross threads (embedded handlers, the broker loop, client I/O) safely."""

import threading

import pytest

from ringcast import errors
from ringcast._impl import USE_EXTENSIONS
from ringcast.broker import Broker
from ringcast.client import connect
from ringcast.router import Router


@pytest.fixture(params=[0.0, 0.002], ids=["sleeping", "spinning"])
def shared(request):
    """An embedded router served by a broker thread (which sleeps in poll, or
    spins after input), and a remote client."""
    router = Router()
    broker = Broker("tcp://127.0.0.1:0", router=router, spin=request.param).start()
    client = connect(broker.endpoints[0], timeout=10)
    yield router, broker, client
    client.close()
    broker.stop()
    router.close()


def _serving(router, name, timeout=10.0):
    """Wait until ``name`` has a responder (a remote SERVE is asynchronous)."""
    deadline = threading.Event()
    for _ in range(int(timeout / 0.01)):
        try:
            return router.service(name)
        except errors.NoResponders:
            deadline.wait(0.01)
    raise AssertionError(f"nobody serves {name!r}")


def _raw_responder(zsocket, router, broker, service):
    """A raw session serving ``service`` (handle 1, concurrency 8), once
    the router has it."""
    from ringcast import _codec as C

    from .conftest import raw_session

    rsock, _ = raw_session(zsocket, broker.endpoints[0], "responder")
    w = C.Writer()
    w.record(C.SERVE, 1, service, 8)
    rsock.send(w.take())
    _serving(router, service)
    return rsock


def test_embedded_requester_reaches_a_remote_responder(shared):
    router, _, client = shared
    client.serve("remote.upper", lambda m: m.payload.upper())
    client.flush()
    _serving(router, "remote.upper")
    # from threads other than the broker loop: the offer is re-dispatched on the loop
    replies = {}

    def ask(i):
        replies[i] = router.request("remote.upper", b"sku-%d" % i, timeout=10).payload

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert replies == {i: b"SKU-%d" % i for i in range(8)}


def test_remote_requester_reaches_an_embedded_responder(shared):
    router, _, client = shared
    router.serve("embedded.echo", lambda m: b"echo:" + m.payload)
    got = [client.request("embedded.echo", b"%d" % i, timeout=10).payload for i in range(50)]
    assert got == [b"echo:%d" % i for i in range(50)]


def test_embedded_and_remote_responders_share_requests(shared):
    router, _, client = shared
    seen = []
    router.serve("both", lambda m: (seen.append("embedded"), b"e")[1])
    client.serve("both", lambda m: b"r")
    client.flush()
    assert wait_responders(router, "both", 2)
    with connect(shared[1].endpoints[0], timeout=10) as other:
        answers = [other.request("both", b"", timeout=10).payload for _ in range(40)]
    assert answers.count(b"e") == 20 and answers.count(b"r") == 20   # round-robin
    assert len(seen) == 20


def wait_responders(router, name, n, timeout=10.0):
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if len(_serving(router, name).responders) >= n:
            return True
        pause.wait(0.01)
    return False


def test_backlog_beyond_concurrency_is_answered_in_order(shared):
    """A remote responder with concurrency 1: requests wait in the service's
    backlog and each reply frees the slot for the next."""
    router, broker, client = shared
    client.serve("one.at.a.time", lambda m: m.payload, concurrency=1)
    client.flush()
    _serving(router, "one.at.a.time")
    import asyncio

    from ringcast.aio_client import connect as aconnect

    async def many():
        async with await aconnect(broker.endpoints[0]) as conn:
            return await asyncio.gather(
                *(conn.request("one.at.a.time", b"%d" % i, timeout=10) for i in range(200)))

    replies = asyncio.run(many())
    assert [r.payload for r in replies] == [b"%d" % i for i in range(200)]
    assert router.stats()["services"]["one.at.a.time"]["backlog"] == 0


def test_responder_leaving_fails_its_requests_and_hands_on_the_backlog(shared):
    router, broker, client = shared
    release = threading.Event()
    stuck = connect(broker.endpoints[0], timeout=10)
    stuck.serve("svc", lambda m: (release.wait(10), m.payload)[1], threaded=True,
                concurrency=1)
    stuck.flush()
    _serving(router, "svc")
    results = []
    done = threading.Event()

    def settle(result):
        results.append(result)
        if len(results) == 3:
            done.set()

    for i in range(3):   # one in flight at the stuck responder, two in the backlog
        router.request_cb("svc", b"%d" % i, settle, timeout=10)
    survivor = connect(broker.endpoints[0], timeout=10)
    try:
        survivor.serve("svc", lambda m: b"survivor:" + m.payload)
        survivor.flush()
        assert wait_responders(router, "svc", 2)
        # close waits (up to 5 s) for the stuck handler's thread: in a thread of
        # its own, so that the handler is released only after its request failed
        closer = threading.Thread(target=stuck.close, kwargs={"timeout": 0.1})
        closer.start()               # leaves with a request in flight
        assert done.wait(10)         # its BYE failed that request
        release.set()
        closer.join(10)
        failed = [r for r in results if isinstance(r, BaseException)]
        answered = sorted(r.payload for r in results if not isinstance(r, BaseException))
        # the in-flight request fails; the backlog is answered by the survivor
        assert len(failed) == 1 and isinstance(failed[0], errors.ServiceError)
        assert answered == [b"survivor:1", b"survivor:2"]
    finally:
        survivor.close()


def test_spinning_broker_process_serves_and_stops_promptly(procs):
    """``--spin-us``: the loop polls without sleeping after input; requests,
    publishes and SIGTERM all still get through."""
    import time

    from .conftest import HEARTBEAT, BrokerProcess, take

    broker = BrokerProcess("tcp://127.0.0.1:0", "--spin-us", "5000").start()
    try:
        with connect(broker.url, heartbeat=HEARTBEAT, timeout=10) as c:
            c.serve("echo", lambda m: m.payload)
            sub = c.subscribe("spin.>")
            c.flush()
            assert [c.request("echo", b"%d" % i, timeout=10).payload
                    for i in range(100)] == [b"%d" % i for i in range(100)]
            for i in range(1000):
                c.publish("spin.x", b"%d" % i)
            c.flush()
            assert take(sub, 1000) == [b"%d" % i for i in range(1000)]
        t = time.monotonic()
    finally:
        broker.stop()   # SIGTERM, waits for the exit
    assert broker.proc.returncode == 0
    assert time.monotonic() - t < 5


def test_request_backlogged_as_a_remote_responder_makes_room_is_still_sent(shared, monkeypatch):
    """An embedded requester (its own thread) finds the remote responder full
    and backlogs its request just after the broker loop freed the slot and
    found the backlog empty: the request must still go out, not wait for an
    answer that will never come."""
    from ringcast import broker as broker_mod

    router, broker, client = shared
    gate, got_first = threading.Event(), threading.Event()

    def handler(m):
        if m.payload == b"first":
            got_first.set()
            gate.wait(10)
        return m.payload

    client.serve("svc", handler, threaded=True, concurrency=1)
    client.flush()
    _serving(router, "svc")

    full_seen, proceed = threading.Event(), threading.Event()
    original = broker_mod._RemoteResponder._offer

    def offer(self, payload, headers, pending):
        took = original(self, payload, headers, pending)
        if not took and payload == b"second" and not full_seen.is_set():
            full_seen.set()   # found full; the slot frees before we backlog
            proceed.wait(10)
        return took

    monkeypatch.setattr(broker_mod._RemoteResponder, "_offer", offer)
    first: list = []
    t1 = threading.Thread(target=lambda: first.append(router.request("svc", b"first",
                                                                         timeout=10)))
    t1.start()
    assert got_first.wait(10)
    second: list = []

    def ask_second():
        try:
            second.append(router.request("svc", b"second", timeout=3).payload)
        except errors.RingcastError as exc:
            second.append(exc)

    t2 = threading.Thread(target=ask_second)
    t2.start()
    assert full_seen.wait(10)
    gate.set()
    t1.join(10)   # answered: the broker loop freed the slot, backlog still empty
    assert first and first[0].payload == b"first"
    proceed.set()
    t2.join(10)
    assert second == [b"second"]


def test_session_dropped_mid_frame_applies_none_of_the_rest(shared, zsocket, monkeypatch):
    """A request for a responder flushes that responder's output mid-frame;
    when that drops the responder's session (it does not read) and the frame
    is the same session's, the records after it must not be applied to the
    dropped session: a subscription made there would never be closed."""

    from ringcast import _codec as C
    from ringcast import broker as broker_mod

    from .conftest import raw_session, wait_for

    router, broker, client = shared
    sock, _ = raw_session(zsocket, broker.endpoints[0], identity=b"not-reading")
    w = C.Writer()

    send = broker._send
    monkeypatch.setattr(broker_mod, "MAX_BACKLOG", 0)   # the first refused frame drops it
    monkeypatch.setattr(broker, "_send", lambda ident, frame: ident != b"not-reading"
                        and send(ident, frame))
    w.record(C.SERVE, 1, "self.svc", 4)
    w.record(C.REQ, 1, "self.svc", 10000, None, b"x" * (broker_mod.REQUEST_SPLIT + 100))
    w.record(C.SUB, 2, "leak.>", 16, 0, 16)
    sock.send(w.take())
    assert wait_for(lambda: broker.counters["sessions_dropped"] >= 1)
    client.stats()   # the loop is past that frame
    patterns = [s["pattern"] for s in router.stats()["subscriptions"]]
    assert "leak.>" not in patterns


def test_spinning_broker_serves_wake_ups_from_other_threads():
    """While the loop spins after input, a publish from an embedded thread to
    a remote subscriber is delivered at once, not when the spin ends."""
    from .conftest import barrier

    router = Router()
    broker = Broker("tcp://127.0.0.1:0", router=router, spin=30.0).start()
    try:
        with connect(broker.endpoints[0], heartbeat=30, timeout=10) as c:
            sub = c.subscribe("wake.>")
            barrier(c)   # the last input: the broker spins from here
            router.publish("wake.x", b"from another thread")
            assert sub.recv(timeout=3).payload == b"from another thread"
    finally:
        broker.stop()
        router.close()


def test_two_remote_publishers_blocked_on_one_ring_both_resume(shared):
    """A ring has one space callback: two sessions parked on the same full
    block-policy ring must both be retried once it drains, or the first one
    keeps its frame (and its publish credit) forever."""
    from .conftest import wait_for

    router, broker, a = shared
    sub = router.subscribe("bp.>", capacity=4, overflow="block")
    with connect(broker.endpoints[0], timeout=10) as b:
        for i in range(8):
            a.publish("bp.x", b"a%d" % i)
        assert wait_for(lambda: broker.counters["publisher_waits"] >= 1)
        b.publish("bp.x", b"b0")
        assert wait_for(lambda: broker.counters["publisher_waits"] >= 2)
        got = []
        while len(got) < 9:
            try:
                got.append(sub.recv(timeout=3).payload)
            except errors.Timeout:
                break
        assert sorted(got) == sorted([b"a%d" % i for i in range(8)] + [b"b0"])
        a.flush(timeout=5)
        b.flush(timeout=5)


def test_an_answer_racing_the_deadline_is_applied_once(shared):
    """An embedded responder answering a remote request on its own thread
    while the broker expires it: exactly one answer reaches the requester."""
    import time

    from ringcast.broker import _WireRequest
    from ringcast.services import _Service

    _, broker, _ = shared
    service = _Service("race")
    answers = []
    broker._answer = lambda s, cmd, *fields: answers.append(cmd)   # what reaches the wire

    def respond(req, go):
        go.wait()
        req.respond(None, b"r", None)

    for _ in range(50):
        answers.clear()
        req = _WireRequest(broker, service, time.monotonic() + 10, None, 7)
        go = threading.Barrier(2)
        t = threading.Thread(target=respond, args=(req, go))
        t.start()
        go.wait()
        broker._call_soon(req.expire)
        t.join()
        processed = threading.Event()
        broker._call_soon(processed.set)   # after both, in order
        assert processed.wait(10)
        assert len(answers) == 1 and req.settled
    del broker._answer


def test_router_closed_while_the_broker_runs_closes_remote_responders_on_the_loop(shared):
    router, broker, client = shared
    client.serve("closing", lambda m: m.payload, concurrency=4)
    client.flush()
    service = _serving(router, "closing")
    router.close()   # from this thread; the remote responder is closed by the loop
    deadline = threading.Event()
    for _ in range(1000):
        if not service.responders:
            break
        deadline.wait(0.01)
    assert service.responders == []
    assert broker.counters["internal_errors"] == 0


def test_sleeping_broker_wakes_for_other_threads_and_ignores_a_peer_posing_as_its_waker(
        zsocket):
    """The loop sleeps in a recv on its ROUTER and other threads wake it
    through that socket (an inproc peer with a reserved routing id): an
    embedded publish reaches a remote subscriber at once, many times over,
    and a network peer claiming that routing id gets nothing at all."""
    import zmq

    from ringcast import _codec as C
    from ringcast.broker import _WAKE_ID

    from .conftest import barrier

    router = Router()
    # long heartbeats: the loop's own timer would wake it every 250 ms
    broker = Broker("tcp://127.0.0.1:0", router=router, heartbeat=30.0).start()
    try:
        impostor = zsocket(zmq.DEALER)
        impostor.setsockopt(zmq.ROUTING_ID, _WAKE_ID)
        impostor.connect(broker.endpoints[0])
        w = C.Writer(64)
        w.record(C.HELLO, C.PROTOCOL_VERSION, 30000, "impostor")
        impostor.send(w.take())
        with connect(broker.endpoints[0], heartbeat=30, timeout=10) as c:
            sub = c.subscribe("wake.>")
            barrier(c)
            for i in range(50):
                router.publish("wake.x", b"%d" % i)
                assert sub.recv(timeout=3).payload == b"%d" % i   # well before any timer
        assert not impostor.poll(200)   # never welcomed: its frames never reached the loop
        assert broker.stats()["client_names"] == []
        assert "impostor" not in [s.name for s in broker._sessions.values()]
    finally:
        broker.stop()
        router.close()


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_a_reply_that_cannot_be_sent_fails_its_request_not_the_session(shared, threaded):
    """A handler returning a str, or more than the broker's message limit, or
    raising with a huge message: the requester gets a typed error, the
    responder keeps its session (its other handles are not reset)."""
    router, broker, client = shared
    with connect(broker.endpoints[0], timeout=10) as resp:
        def handle(msg):
            if msg.payload == b"str":
                return "not bytes"
            if msg.payload == b"big":
                return b"x" * (broker.max_message + 1)
            if msg.payload == b"raise":
                raise ValueError("v" * (4 << 20))
            return msg.payload.upper()

        resp.serve("svc", handle, threaded=threaded)
        resp.flush()
        _serving(router, "svc")
        with pytest.raises(errors.WrongType):
            client.request("svc", b"str", timeout=10)
        with pytest.raises(errors.LimitExceeded):
            client.request("svc", b"big", timeout=10)
        with pytest.raises(errors.ServiceError, match="ValueError: vvv"):
            client.request("svc", b"raise", timeout=10)
        assert client.request("svc", b"ok", timeout=10).payload == b"OK"
        assert resp.sessions == 1


def test_an_embedded_reply_a_remote_requester_cannot_read_fails_the_request(shared):
    """Not blamed on the requester: its session stays, it gets the error."""
    router, broker, client = shared
    router.serve("bad", lambda m: "a str" if m.payload == b"str"
                 else b"x" * (broker.max_message + 1))
    router.serve("good", lambda m: m.payload)
    with pytest.raises(errors.WrongType):
        client.request("bad", b"str", timeout=10)
    with pytest.raises(errors.LimitExceeded):
        client.request("bad", b"big", timeout=10)
    assert client.request("good", b"ok", timeout=10).payload == b"ok"
    assert broker.counters.get("protocol_errors", 0) == 0


def test_requests_of_a_requester_that_left_are_withdrawn(shared, zsocket):
    """A requester's session ends with requests still waiting for a busy
    responder: nobody can read their answers, so none is handed out any more
    (they are counted as withdrawn) instead of being worked on until their
    deadline."""

    from ringcast import _codec as C

    from .conftest import raw_session, wait_for

    router, broker, _ = shared
    responder = router.serve("slow", capacity=1)   # read by nobody until the end
    sock, _ = raw_session(zsocket, broker.endpoints[0], "leaver", heartbeat_ms=1000)
    w = C.Writer()
    for i in range(20):
        w.record(C.REQ, i + 1, "slow", 10_000, None, b"%d" % i)
    sock.send(w.take())
    assert wait_for(lambda: router.stats()["services"]["slow"]["backlog"] == 19)
    w.record(C.BYE)
    sock.send(w.take())
    assert wait_for(lambda: broker.counters.get("requests_withdrawn", 0) == 20)
    with pytest.raises(errors.Timeout):
        responder.recv(timeout=0.5)   # the one in its buffer is not handed out either
    svc = router.stats()["services"]["slow"]
    assert (svc["backlog"], svc["expired"]) == (0, 20)   # skipped as it drained
    assert not broker._live


def test_a_blocking_embedded_handler_does_not_stall_the_broker(shared):
    """Remote requests made an embedded handler ready on the broker's loop;
    it ran there, so a handler that blocked stopped every remote client.
    Handlers now run on the router's callback thread."""
    router, broker, client = shared
    gate, entered = threading.Event(), threading.Event()

    def slow(msg):
        entered.set()
        gate.wait(10)
        return b"late"

    router.serve("slow", slow)
    box = []
    asker = threading.Thread(target=lambda: box.append(
        client.request("slow", b"x", timeout=10).payload))
    asker.start()
    try:
        assert entered.wait(10)
        with connect(broker.endpoints[0], timeout=10) as other:
            sub = other.subscribe("live.>")
            other.flush()
            other.publish("live.check", b"still serving")
            assert sub.recv(timeout=5).payload == b"still serving"
    finally:
        gate.set()
        asker.join(10)
    assert box == [b"late"]


def test_remote_per_instance_service_names_leave_no_trace(shared):
    """Remote clients serving names of their own (``worker.<id>``): the
    router forgets each service once nobody serves it, whether its responder
    was closed (CLOSE) or went with its session, or the table grows for good."""
    from .conftest import barrier, wait_for

    router, broker, client = shared
    before = len(router._services)
    for start in range(0, 10_000, 2_000):   # a session holds at most 10,000 handles
        names = [f"worker.{i}" for i in range(start, start + 2_000)]
        responders = [client.serve(name, lambda m: b"re:" + m.payload) for name in names]
        barrier(client)
        assert len(router._services) == before + len(names)
        assert router.request(names[-1], b"x", timeout=5).payload == b"re:x"
        for responder in responders:
            responder.close()
        barrier(client)
        assert len(router._services) == before
    with connect(broker.endpoints[0], timeout=10) as leaving:
        for i in range(100):
            leaving.serve(f"leaving.{i}", lambda m: b"")
        barrier(leaving)
        assert len(router._services) == before + 100
    assert wait_for(lambda: len(router._services) == before)   # its session ended
    assert client.stats()["service_totals"]["requests"] == 5   # forgotten, still counted
    with pytest.raises(errors.NoResponders):
        client.request("worker.0", b"x", timeout=5)


def test_remote_requests_with_mixed_timeouts_expire_in_deadline_order(shared, zsocket):
    """Requests asking different timeouts, interleaved, each fail with
    Timeout at its own deadline (the broker keeps one deque per timeout),
    and one answered meanwhile does not."""
    import time

    from ringcast import _codec as C

    from .conftest import raw_session

    router, broker, _ = shared
    responder = router.serve("mute", capacity=64)   # answers only rid 3
    sock, _ = raw_session(zsocket, broker.endpoints[0], "asker")
    w = C.Writer()
    timeouts = {1: 600, 2: 200, 3: 600, 4: 400, 5: 200}
    for rid, ms in timeouts.items():
        w.record(C.REQ, rid, "mute", ms, None, b"%d" % rid)
    start = time.monotonic()
    sock.send(w.take())
    for _ in range(3):
        msg = responder.recv(timeout=10)
    assert msg.payload == b"3"
    msg.respond(b"r")
    order = []
    while len(order) < len(timeouts):
        assert sock.poll(10_000), f"only {order} answered"
        for ev in C.Reader(sock.recv()).events():
            if ev[0] == C.REPLY:
                order.append(ev[1])
            elif ev[0] == C.REPLYERR:
                assert ev[2] == errors.Timeout.code
                assert time.monotonic() - start >= timeouts[ev[1]] / 1000
                order.append(ev[1])
    assert order == [3, 2, 5, 4, 1]
    assert not broker._live and not broker._queued


@pytest.mark.skipif(not USE_EXTENSIONS, reason="the native request path needs the native core")
def test_the_native_path_takes_requests_to_a_lone_remote_responder(shared, monkeypatch):
    """Requests to a service whose one responder is remote (with room), and
    their replies, skip the broker's Python path (_on_reqs, _on_reps)."""
    router, broker, client = shared
    client.serve("echo", lambda m: m.payload, concurrency=64)
    client.flush()
    _serving(router, "echo")
    seen = []

    def counting(name):
        original = getattr(Broker, name)

        def run(self, s, records):
            seen.extend(name for _ in records)
            return original(self, s, records)
        return run

    for name in ("_on_reqs", "_on_reps"):
        monkeypatch.setattr(Broker, name, counting(name))
    assert [client.request("echo", b"%d" % i, timeout=10).payload for i in range(20)] \
        == [b"%d" % i for i in range(20)]
    assert seen == []
    assert router.stats()["services"]["echo"]["requests"] == 20 and not broker._live


def test_replies_late_unknown_and_in_time_in_one_frame(shared, zsocket):
    """A responder's frame mixes answers the broker's native path takes (a
    request still waiting) with ones it leaves to the Python path (a late
    reply, counted; an unknown tag, ignored): each is applied as alone."""
    from ringcast import _codec as C

    from .conftest import raw_session, wait_for

    router, broker, _ = shared
    rsock = _raw_responder(zsocket, router, broker, "raw.svc")
    qsock, _ = raw_session(zsocket, broker.endpoints[0], "requester")
    w = C.Writer()
    for rid, ms in ((1, 10_000), (2, 100), (3, 10_000), (4, 10_000)):
        w.record(C.REQ, rid, "raw.svc", ms, None, b"q%d" % rid)
    qsock.send(w.take())
    tags = {}
    while len(tags) < 4:
        assert rsock.poll(10_000)
        r = C.Reader(rsock.recv())
        while (rec := r.next()) is not None:
            if rec[0] == C.RQST:
                tags[rec[6]] = rec[2]
    got = {}

    def answers(n):
        while len(got) < n:
            assert qsock.poll(10_000), got
            r = C.Reader(qsock.recv())
            while (rec := r.next()) is not None:
                if rec[0] in (C.REPLY, C.REPLYERR):
                    got[rec[1]] = rec[3] if rec[0] == C.REPLY else rec[2]

    answers(1)   # rid 2 timed out
    for payload in (b"q1", b"q2", b"q3"):
        w.record(C.REP, 1, tags[payload], None, b"r" + payload)
    w.record(C.REP, 1, 999, None, b"unknown")
    w.record(C.REP, 1, tags[b"q4"], None, b"rq4")
    rsock.send(w.take())
    answers(4)
    assert got == {1: b"rq1", 2: errors.Timeout.code, 3: b"rq3", 4: b"rq4"}
    assert wait_for(lambda: router.stats()["services"]["raw.svc"]["late_replies"] == 1)
    assert not broker._live


def test_a_request_after_a_reply_in_one_frame_is_a_protocol_error(shared, zsocket):
    """A frame that opens with a reply is urgent: an ordered record (a
    request) after it ends the session with ProtocolError, and the reply
    before it is applied; the native path and the Python one agree."""
    from ringcast import _codec as C


    router, broker, client = shared
    rsock = _raw_responder(zsocket, router, broker, "urgent.svc")
    w = C.Writer()
    answer = []
    thread = threading.Thread(
        target=lambda: answer.append(client.request("urgent.svc", b"q", timeout=10)))
    thread.start()
    rqsts = []
    while not rqsts:   # PCREDIT for the SERVE may come first
        assert rsock.poll(10_000)
        r = C.Reader(rsock.recv())
        rqsts = [rec for rec in iter(r.next, None) if rec[0] == C.RQST]
    rqst = rqsts[0]
    w.record(C.REP, 1, rqst[2], None, b"answered")
    w.record(C.REQ, 7, "urgent.svc", 10_000, None, b"ordered after urgent")
    rsock.send(w.take())
    errs = []
    while not errs:
        assert rsock.poll(10_000)
        errs = [rec for rec in C.Reader(rsock.recv()).events() if rec[0] == C.ERR]
    assert errs[0][2] == errors.ProtocolError.code
    thread.join(10)
    assert [m.payload for m in answer] == [b"answered"]
    assert broker.counters["protocol_errors"] >= 1


def test_a_frame_of_requests_counts_as_ordered_credit(shared, zsocket):
    """Requests are ordered records: the bytes of a frame of them come back
    as PCREDIT (with the answers), taken natively or not."""
    from ringcast import _codec as C

    from .conftest import raw_session

    router, broker, client = shared
    client.serve("credit.svc", lambda m: m.payload, concurrency=16)
    client.flush()
    _serving(router, "credit.svc")
    qsock, _ = raw_session(zsocket, broker.endpoints[0], "requester")
    w = C.Writer()
    for rid in range(1, 4):
        w.record(C.REQ, rid, "credit.svc", 10_000, None, b"q%d" % rid)
    frame = w.take()
    qsock.send(frame)
    replies, credit = set(), 0
    while len(replies) < 3 or credit < len(frame):
        assert qsock.poll(10_000), (replies, credit)
        for rec in C.Reader(qsock.recv()).events():
            if rec[0] == C.REPLY:
                replies.add(rec[1])
            elif rec[0] == C.PCREDIT:
                credit += rec[1]
    assert replies == {1, 2, 3} and credit == len(frame)


def test_one_frame_answering_two_requesters_reaches_both(shared, zsocket):
    """A responder's frame of replies to two requesters: the native path
    sends at once only when it wrote to one session; both answers arrive."""
    from ringcast import _codec as C

    from .conftest import raw_session

    router, broker, _ = shared
    rsock = _raw_responder(zsocket, router, broker, "two.svc")
    w = C.Writer()
    requesters = [raw_session(zsocket, broker.endpoints[0], f"requester-{i}")[0]
                  for i in range(2)]
    for i, qsock in enumerate(requesters):
        w.record(C.REQ, 1, "two.svc", 10_000, None, b"q%d" % i)
        qsock.send(w.take())
    tags = {}
    while len(tags) < 2:
        assert rsock.poll(10_000)
        r = C.Reader(rsock.recv())
        for rec in iter(r.next, None):
            if rec[0] == C.RQST:
                tags[rec[6]] = rec[2]
    for i in range(2):
        w.record(C.REP, 1, tags[b"q%d" % i], None, b"a%d" % i)
    rsock.send(w.take())
    for i, qsock in enumerate(requesters):
        got = []
        while not got:
            assert qsock.poll(10_000)
            got = [rec[3] for rec in C.Reader(qsock.recv()).events() if rec[0] == C.REPLY]
        assert got == [b"a%d" % i]
    assert not broker._live
