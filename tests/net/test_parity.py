"""Parity: one scenario, run against the embedded router and the remote
clients, must be observed alike (docs: README "Over the network")."""

import asyncio
import inspect

import pytest

import ringcast
from ringcast import aio, errors
from ringcast.broker import Broker
from ringcast.router import Router

from .conftest import barrier

pytestmark = pytest.mark.timeout(60)


class _Sync:
    """An asyncio object seen through synchronous calls run on ``loop``:
    coroutines are awaited, receivers wrapped, so a scenario is written once."""

    def __init__(self, obj, loop):
        self._obj = obj
        self._loop = loop

    def __getattr__(self, name):
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        loop = self._loop

        def call(*args, **kw):
            async def run():
                result = attr(*args, **kw)
                if inspect.isawaitable(result):
                    result = await result
                return result
            return _wrap(loop.run_until_complete(run()), loop)
        return call


def _wrap(result, loop):
    recv = getattr(result, "recv", None)
    if recv is not None and inspect.iscoroutinefunction(recv):
        return _Sync(result, loop)
    return result


class Impl:
    """One way to use ringcast: ``api`` has the Router's methods; ``settle()``
    returns once everything called so far is applied where messages are
    routed; ``router`` is that router (the broker's, for remote ones)."""

    def __init__(self, name, api, router, settle, remote):
        self.name = name
        self.api = api
        self.router = router
        self.settle = settle
        self.remote = remote

    def __getattr__(self, name):
        return getattr(self.api, name)


IMPLS = ["embedded", "aio-embedded", "remote", "aio-remote"]


@pytest.fixture(params=IMPLS)
def impl(request):
    kind = request.param
    router = Router()
    cleanup = [router.close]
    loop = None
    if kind.startswith("aio"):
        loop = asyncio.new_event_loop()
    if kind == "embedded":
        it = Impl(kind, router, router, lambda: None, False)
    elif kind == "aio-embedded":
        it = Impl(kind, _Sync(aio.Router(router), loop), router, lambda: None, False)
    else:
        broker = Broker("tcp://127.0.0.1:0", router=router).start()
        cleanup.insert(0, broker.stop)
        url = broker.endpoints[0]
        if kind == "remote":
            client = ringcast.connect(url, heartbeat=5.0, timeout=10)
            cleanup.insert(0, client.close)
            it = Impl(kind, client, router, lambda: barrier(client), True)
        else:
            conn = loop.run_until_complete(aio.connect(url, heartbeat=5.0, timeout=10))
            api = _Sync(conn, loop)

            def settle():
                api.flush(10)
                api.stats(10)
            cleanup.insert(0, api.close)
            it = Impl(kind, api, router, settle, True)
    it.aio = loop is not None
    yield it
    for fn in cleanup:
        fn()
    if loop is not None:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def outcome(fn):
    """What a call gave: ("ok", value) or ("raise", exception type)."""
    try:
        return ("ok", fn())
    except errors.RingcastError as exc:
        return ("raise", type(exc))


def fields(msg):
    return (msg.subject, bytes(msg.payload), msg.headers, msg.redelivered, msg.delivery_count)


# -- pub/sub ---------------------------------------------------------------------------------

def test_publish_to_nobody_is_accepted_and_counted(impl):
    sub = impl.subscribe("elsewhere")
    impl.settle()
    before = impl.router.stats()["published"]
    assert impl.publish("nobody.listens", b"x") in (0, None)   # remote: buffered, no count
    impl.publish("elsewhere", b"marker")
    impl.settle()
    assert impl.router.stats()["published"] == before + 2
    assert sub.recv(timeout=5).payload == b"marker"


def test_messages_keep_their_fields_and_order(impl):
    sub = impl.subscribe("orders.>")
    impl.settle()
    for i in range(5):
        impl.publish("orders.eu.placed", b"%d" % i, {"n": str(i)} if i % 2 else None)
    impl.settle()
    got = [sub.recv(timeout=5) for _ in range(5)]
    assert [fields(m) for m in got] == [
        ("orders.eu.placed", b"%d" % i, {"n": str(i)} if i % 2 else None, False, 1)
        for i in range(5)]
    assert [m.seq for m in got] == [1, 2, 3, 4, 5]
    assert sub.dropped == 0


def test_wildcards_match_alike(impl):
    patterns = ["a.*", "a.>", "*.b", ">", "a.*.c", "a.b"]
    subs = {p: impl.subscribe(p) for p in patterns}
    impl.settle()
    subjects = ["a", "a.b", "a.x", "a.b.c", "x.b", "a.x.c.d"]
    for s in subjects:
        impl.publish(s, s.encode())
    ends = ["a.b", "a.b.c"]   # between them, the last message every pattern matches
    for s in ends:
        impl.publish(s, b"end")
    impl.settle()
    seen = {}
    for p, sub in subs.items():
        seen[p] = []
        left = 2 if p in ("a.>", ">") else 1
        while left:
            m = sub.recv(timeout=5)
            if m.payload == b"end":
                left -= 1
            else:
                seen[p].append(m.subject)
    assert seen == {
        "a.*": ["a.b", "a.x"],
        "a.>": ["a.b", "a.x", "a.b.c", "a.x.c.d"],
        "*.b": ["a.b", "x.b"],
        ">": subjects,
        "a.*.c": ["a.b.c"],
        "a.b": ["a.b"],
    }


BAD_CALLS = {
    "publish empty token": (lambda i: i.publish("a..b", b"x"), errors.InvalidSubject),
    "publish wildcard": (lambda i: i.publish("a.*", b"x"), errors.InvalidSubject),
    "publish bytes subject": (lambda i: i.publish(b"a", b"x"), errors.WrongType),
    "publish str payload": (lambda i: i.publish("a", "x"), errors.WrongType),
    "publish int header": (lambda i: i.publish("a", b"x", {"k": 1}), errors.WrongType),
    "publish list headers": (lambda i: i.publish("a", b"x", [("k", "v")]), errors.WrongType),
    "subscribe > inside": (lambda i: i.subscribe("a.>.b"), errors.InvalidSubject),
    "subscribe int": (lambda i: i.subscribe(1), errors.WrongType),
    "subscribe policy": (lambda i: i.subscribe("a", overflow="nope"), errors.LimitExceeded),
    "subscribe capacity 0": (lambda i: i.subscribe("a", capacity=0), errors.LimitExceeded),
    "send wildcard": (lambda i: i.send("q.*", b"x"), errors.InvalidSubject),
    "send str payload": (lambda i: i.send("q", "x"), errors.WrongType),
    "declare wildcard": (lambda i: i.declare_queue("q.*"), errors.InvalidSubject),
    "declare bad ttl": (lambda i: i.declare_queue("q", ttl=-1), errors.LimitExceeded),
    "declare unknown option": (lambda i: i.declare_queue("q", nope=1), errors.LimitExceeded),
    "declare dead-letter to itself": (lambda i: i.declare_queue("q", dead_letter="q"),
                                      errors.LimitExceeded),
    "consume prefetch -1": (lambda i: i.consume("q", prefetch=-1), errors.LimitExceeded),
    "request invalid": (lambda i: i.request("a..b", b"x", timeout=1), errors.InvalidSubject),
    "request nobody": (lambda i: i.request("nobody", b"x", timeout=1), errors.NoResponders),
    "request str payload": (lambda i: i.request("svc", "x", timeout=1), errors.WrongType),
    "request int header": (lambda i: i.request("svc", b"x", {"k": 1}, timeout=1),
                           errors.WrongType),
    "request timeout -1": (lambda i: i.request("svc", b"x", timeout=-1), errors.LimitExceeded),
    "request timeout str": (lambda i: i.request("svc", b"x", timeout="1"), errors.WrongType),
    "request timeout nan": (lambda i: i.request("svc", b"x", timeout=float("nan")),
                            errors.LimitExceeded),
    "request timeout bool": (lambda i: i.request("svc", b"x", timeout=True), errors.WrongType),
    "request bytes name": (lambda i: i.request(b"svc", b"x", timeout=1), errors.WrongType),
}


@pytest.mark.parametrize("call", sorted(BAD_CALLS))
@pytest.mark.parametrize("served", [False, True], ids=["unserved", "served"])
def test_bad_calls_raise_the_same_error_at_the_call(impl, call, served):
    if served:   # the checks of a request do not depend on who serves it
        impl.serve("svc", lambda m: b"ok")
        impl.settle()
    fn, expected = BAD_CALLS[call]
    with pytest.raises(expected):
        fn(impl)


def test_receive_timeouts(impl):
    sub = impl.subscribe("t")
    impl.settle()
    for timeout in (0, 0.01):
        with pytest.raises(errors.Timeout):
            sub.recv(timeout=timeout)
    with pytest.raises(errors.WouldBlock):
        sub.recv_nowait()
    for bad, error in ((-1, errors.LimitExceeded), (float("nan"), errors.LimitExceeded),
                       ("1", errors.WrongType)):
        with pytest.raises(error):
            sub.recv(timeout=bad)
    assert sub.recv_many(10, timeout=0) == []   # asyncio's too: 0 means do not wait
    with pytest.raises(errors.Timeout):
        sub.recv_many(10, timeout=0.01)
    impl.publish("t", b"1")
    impl.publish("t", b"2")
    impl.settle()
    assert sub.recv(timeout=float("inf")).payload == b"1"
    assert sub.recv(timeout=None).payload == b"2"


def test_a_closed_subscription(impl):
    sub = impl.subscribe("t")
    impl.settle()
    assert not sub.closed
    sub.close()
    sub.close()   # twice: nothing happens
    assert sub.closed
    for call in (lambda: sub.recv(timeout=0), lambda: sub.recv(timeout=None), sub.recv_nowait,
                 lambda: sub.recv_many(10, timeout=0), lambda: sub.recv_many(10, timeout=None)):
        with pytest.raises(errors.Closed):
            call()


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_overflow_drops_are_counted_and_seen_as_gaps(impl, policy):
    sub = impl.subscribe("t", capacity=4, overflow=policy)
    impl.settle()
    for i in range(40):
        impl.publish("t", b"%d" % i)
    impl.settle()
    dropped = impl.router.stats()["dropped"]   # where the buffer is: exact now
    assert dropped > 0
    got = [sub.recv(timeout=5) for _ in range(40 - dropped)]
    assert [m.seq for m in got] == [int(m.payload) + 1 for m in got]   # gaps where dropped
    assert [m.seq for m in got] == sorted(m.seq for m in got)
    if policy == "drop_oldest":
        assert got[-1].payload == b"39"
    else:
        assert got[0].payload == b"0"
    impl.publish("t", b"end")   # a gap at the tail shows with the next message
    impl.settle()
    end = sub.recv(timeout=5)
    assert (end.payload, end.seq) == (b"end", 41)
    assert sub.dropped == dropped == impl.router.stats()["dropped"]


# -- queues ----------------------------------------------------------------------------------

def test_ack_nack_redelivery_and_dead_letters(impl):
    impl.declare_queue("dlq")
    impl.declare_queue("work", bind="orders.*", dead_letter="dlq")
    consumer = impl.consume("work", prefetch=10)
    dead = impl.consume("dlq", prefetch=10)
    impl.settle()
    impl.send("work", b"s1", {"h": "1"})
    impl.publish("orders.x", b"p2")
    impl.send("work", b"s3")
    impl.settle()
    m1, m2, m3 = (consumer.recv(timeout=5) for _ in range(3))
    assert [fields(m) for m in (m1, m2, m3)] == [
        ("work", b"s1", {"h": "1"}, False, 1), ("orders.x", b"p2", None, False, 1),
        ("work", b"s3", None, False, 1)]
    m1.ack()
    m2.nack()
    for settle_again in (m1.ack, m1.nack, m2.ack, m2.nack):   # a delivery settles once
        with pytest.raises(errors.AckError):
            settle_again()
    with pytest.raises(errors.RingcastError, match="acked, not responded to"):
        m3.respond(b"x")
    again = consumer.recv(timeout=5)
    assert fields(again) == ("orders.x", b"p2", None, True, 2)
    again.ack()
    m3.nack(requeue=False)
    impl.settle()
    dl = dead.recv(timeout=5)
    assert fields(dl) == ("dlq", b"s3", {
        "x-dead-letter-from": "work", "x-dead-letter-reason": "rejected",
        "x-delivery-count": "1", "x-original-subject": "work"}, False, 1)
    dl.ack()
    impl.settle()
    stats = impl.router.stats()["queues"]
    assert {k: stats["work"][k] for k in ("depth", "unacked", "acked", "rejected",
                                           "redelivered", "dead_lettered")} == {
        "depth": 0, "unacked": 0, "acked": 2, "rejected": 1, "redelivered": 1,
        "dead_lettered": 1}
    assert (stats["dlq"]["acked"], stats["dlq"]["depth"]) == (1, 0)


def test_a_rejected_message_without_dead_letter_queue_is_counted_and_gone(impl):
    consumer = impl.consume("work", prefetch=10)
    impl.settle()
    impl.send("work", b"x")
    impl.settle()
    consumer.recv(timeout=5).nack(requeue=False)
    impl.send("work", b"next")
    impl.settle()
    assert impl.router.stats()["queues"]["work"]["rejected"] == 1
    assert fields(consumer.recv(timeout=5)) == ("work", b"next", None, False, 1)


def test_a_consumer_receives_in_batches(impl):
    consumer = impl.consume("work", prefetch=10)
    impl.settle()
    assert consumer.recv_many(10, timeout=0) == []
    with pytest.raises(errors.Timeout):
        consumer.recv_many(10, timeout=0.01)
    impl.send_many("work", [b"1", b"2", b"3"])
    impl.settle()
    got = []
    while len(got) < 3:
        got += consumer.recv_many(10, timeout=5)
    assert [m.payload for m in got] == [b"1", b"2", b"3"]


def test_a_closed_consumer_gives_back_what_it_held(impl):
    first = impl.consume("work", prefetch=10)
    impl.settle()
    impl.send("work", b"x")
    impl.settle()
    held = first.recv(timeout=5)
    assert not first.closed
    first.close()
    assert first.closed
    for call in (lambda: first.recv(timeout=0), lambda: first.recv_many(10, timeout=0)):
        with pytest.raises(errors.Closed):
            call()
    with pytest.raises(errors.AckError):
        held.ack()
    second = impl.consume("work", prefetch=10)
    assert fields(second.recv(timeout=5)) == ("work", b"x", None, True, 2)


# -- request/reply -----------------------------------------------------------------------------

def handler(msg):
    kind = msg.payload
    if kind == b"raise":
        raise ValueError("boom")
    if kind == b"raise-typed":   # a ringcast error of the handler's own (its own request)
        raise errors.NoResponders("nobody serves what the handler asked")
    if kind == b"str":
        return "text"
    if kind == b"int":
        return 5
    if kind == b"none":
        return None
    if kind == b"view":
        return memoryview(b"view")
    if kind in (b"ack", b"nack"):   # a request is answered, never settled
        try:
            getattr(msg, kind.decode())()
        except errors.RingcastError as exc:
            return str(exc).encode()
    return msg.payload.upper() + b"|" + msg.subject.encode() + b"|" + \
        ",".join(sorted((msg.headers or {}))).encode()


def test_request_reply(impl):
    impl.serve("svc", handler)
    impl.settle()
    reply = impl.request("svc", b"ok", {"a": "1", "b": "2"}, timeout=5)
    assert (reply.subject, reply.payload) == ("svc", b"OK|svc|a,b")
    assert bytes(impl.request("svc", b"view", timeout=5).payload) == b"view"
    for kind in (b"ack", b"nack"):
        answer = impl.request("svc", kind, timeout=5).payload
        assert answer == b"requests are responded to, not " + kind + b"ed"
    assert impl.request("svc", b"ok", timeout=float("inf")).payload == b"OK|svc|"
    assert impl.request("svc", b"ok", timeout=None).payload == b"OK|svc|"   # no deadline
    with pytest.raises(errors.ServiceError, match="ValueError: boom"):
        impl.request("svc", b"raise", timeout=5)
    with pytest.raises(errors.ServiceError, match="NoResponders: nobody serves what"):
        impl.request("svc", b"raise-typed", timeout=5)
    for kind in (b"str", b"int"):
        with pytest.raises(errors.WrongType):
            impl.request("svc", kind, timeout=5)
    with pytest.raises(errors.Timeout):
        impl.request("svc", b"none", timeout=0.05)
    assert impl.request("svc", b"ok", timeout=5).payload == b"OK|svc|"   # it lives on


def test_a_closed_responder_serves_no_more(impl):
    responder = impl.serve("svc", handler)
    impl.settle()
    assert impl.request("svc", b"ok", timeout=5).payload == b"OK|svc|"
    assert not responder.closed
    responder.close()
    assert responder.closed
    impl.settle()
    with pytest.raises(errors.NoResponders):
        impl.request("svc", b"ok", timeout=5)
    with pytest.raises(errors.Closed):
        responder.recv(timeout=0)


def test_a_responder_without_handler(impl):
    responder = impl.serve("svc")
    impl.settle()
    with pytest.raises(errors.Timeout):
        responder.recv(timeout=0)
    with pytest.raises(errors.WouldBlock):
        responder.recv_nowait()


# -- closed ------------------------------------------------------------------------------------

CLOSED_CALLS = {
    "publish": lambda i: i.publish("t", b"x"),
    "publish_many": lambda i: i.publish_many("t", [b"x"]),
    "subscribe": lambda i: i.subscribe("t"),
    "send": lambda i: i.send("q", b"x"),
    "send_many": lambda i: i.send_many("q", [b"x"]),
    "consume": lambda i: i.consume("q", prefetch=1),
    "declare_queue": lambda i: i.declare_queue("q"),
    "serve": lambda i: i.serve("other", handler),
    "request": lambda i: i.request("svc", b"x", timeout=1),
}


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_a_closed_router_or_client_accepts_nothing(impl, call):
    impl.declare_queue("q")
    impl.serve("svc", handler)
    impl.settle()
    impl.close()
    with pytest.raises(errors.Closed):
        CLOSED_CALLS[call](impl)
