"""The broker over time: clients come, use it and go (BYE, HELLO again,
garbage, silence), and every per-session structure of the broker returns to
its baseline; hostile values and floods cost the sender, not the broker."""

import gc
import random

import pytest

from ringcast import _codec as C
from ringcast import errors
from ringcast.broker import _Session

from .conftest import raw_session, wait_for


def _sessions_alive():
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is _Session]


def test_publishers_that_leave_while_parked_are_forgotten(embedded, zsocket):
    """A publisher parked on a full block-policy buffer waits through the
    router's space signal. The callback it registered there held its session;
    when the session ended before the buffer had room, the callback (and the
    whole session) stayed in the signal's list for as long as the buffer
    stayed full: one more per publisher that came and went."""
    router, broker = embedded()
    stuck = router.subscribe("blk.>", capacity=2, overflow="block")   # never read
    url = broker.endpoints[0]
    space = router._space
    for i in range(20):
        sock, _ = raw_session(zsocket, url, f"pub{i}")
        w = C.Writer()
        for _ in range(3):
            w.record(C.PUB, "blk.x", None, b"m")
        sock.send(w.take())
        assert wait_for(lambda i=i: broker.counters["publisher_waits"] > i)
        w.record(C.BYE)
        sock.send(w.take())
        assert wait_for(lambda i=i: broker.counters["sessions_dropped"] == i + 1)
    assert wait_for(lambda: not broker._sessions)
    assert len(space._callbacks) == 0
    assert not _sessions_alive()
    stuck.close()
    assert broker.counters["internal_errors"] == 0


def _answers(sock, cmds, timeout=10.0):
    """Records arriving on ``sock`` until one with a command of ``cmds``."""
    got = []
    while not any(ev[0] in cmds for ev in got):
        assert sock.poll(int(timeout * 1000)), f"none of {cmds} among {got}"
        got += C.Reader(sock.recv()).events()
    return got


@pytest.mark.parametrize("option", ["ttl", "ack_deadline", "dedup_window"])
def test_a_queue_option_that_is_not_a_number_is_refused(embedded, zsocket, option):
    """DECLARE's options travel as text and ``float("nan")`` parses: a NaN
    ttl or ack deadline passed the ``<= 0`` check, and the router's reaper,
    which sleeps a tenth of the shortest of them, died of ``time.sleep(nan)``:
    no queue of the broker expired a message or took back a delivery any
    more. A NaN dedup window never let an id go."""
    router, broker = embedded()
    sock, _ = raw_session(zsocket, broker.endpoints[0], "declarer")
    w = C.Writer()
    w.record(C.DECLARE, 1, "bad", 8, 0, [], {option: "nan"})
    sock.send(w.take())
    (answer,) = [ev for ev in _answers(sock, (C.OK, C.ERR)) if ev[0] in (C.OK, C.ERR)]
    assert answer[:3] == (C.ERR, 1, errors.LimitExceeded.code), answer
    # the reaper works for everyone else
    good = router.declare_queue("good", ttl=0.05, on_expire="drop")
    router.send("good", b"x")
    assert wait_for(lambda: good.depth == 0)
    assert broker.counters["internal_errors"] == 0


def test_a_frame_of_stats_records_costs_its_sender_not_the_broker(embedded, zsocket):
    """Each STATS is answered with a JSON snapshot of the whole broker (a
    few hundred bytes when it is empty, far more with many subscriptions).
    A 4 MiB frame of 6-byte STATS records took the loop 15 s (every other
    client waited, and missed its heartbeats) and made 150 MB of answers,
    which grow with what the broker holds. Past a few per frame, STATS is
    answered ERR LimitExceeded."""
    _, broker = embedded()
    sock, _ = raw_session(zsocket, broker.endpoints[0], "stats-flood")
    n = 1000
    w = C.Writer()
    for ref in range(1, n + 1):
        w.record(C.STATS, ref)
    sock.send(w.take())
    got = {}
    while len(got) < n:
        for ev in _answers(sock, (C.STATSREP, C.ERR)):
            if ev[0] in (C.STATSREP, C.ERR):
                got[ev[1]] = ev
    reports = sorted(ref for ref, ev in got.items() if ev[0] == C.STATSREP)
    assert reports == list(range(1, 17))   # 16 per frame (docs/protocol.md, Limits)
    assert {ev[2] for ev in got.values() if ev[0] == C.ERR} == {errors.LimitExceeded.code}
    # the session lives on, and a STATS of its next frame is answered
    w.record(C.STATS, n + 1)
    sock.send(w.take())
    assert [ev for ev in _answers(sock, (C.STATSREP,)) if ev[0] == C.STATSREP][0][1] == n + 1
    assert broker.counters["internal_errors"] == 0


def test_publishes_to_ever_new_subjects_do_not_grow_the_broker(embedded):
    """STATS counts publishes per subject. Subjects like ``orders.<id>``
    made that table (and every STATS answer) grow by one entry per subject
    for the broker's whole life; it is bounded now, the least published
    subjects counted together, and the total stays exact."""
    from ringcast.client import connect

    from .conftest import barrier

    _, broker = embedded()
    with connect(broker.endpoints[0], timeout=10) as client:
        for i in range(20_000):
            client.publish(f"orders.{i}", b"x")
            if i % 100 == 0:
                client.publish("orders.hot", b"x")
        subjects = barrier(client)["subjects"]
    assert len(subjects) <= 4097, len(subjects)
    assert subjects["orders.hot"] == 200
    assert sum(subjects.values()) == 20_200


def test_a_session_that_ended_is_not_kept_by_the_requests_it_made(embedded, zsocket):
    """Requests stay in the broker's deadline heap until their deadline,
    answered or not (it is pruned only once it holds over 1024 entries).
    Each held its requester's session, with the frames queued to it (up to
    MAX_BACKLOG of 64 KiB for a client dropped for not reading): a request
    that waits "forever" kept an ended session's memory for good."""
    router, broker = embedded()
    router.serve("echo", lambda m: m.payload)
    url = broker.endpoints[0]
    for i in range(5):
        sock, _ = raw_session(zsocket, url, f"asker{i}")
        w = C.Writer()
        w.record(C.REQ, 1, "echo", 1 << 53, None, b"hi")   # "no deadline"
        sock.send(w.take())
        (reply,) = [ev for ev in _answers(sock, (C.REPLY,)) if ev[0] == C.REPLY]
        assert reply[1] == 1
        w.record(C.BYE)
        sock.send(w.take())
        assert wait_for(lambda i=i: broker.counters["sessions_dropped"] == i + 1)
    assert not _sessions_alive()
    assert broker.counters["internal_errors"] == 0



def test_an_urgent_frame_with_ordered_records_is_refused(embedded, zsocket):
    """A frame that starts with an urgent record is applied on arrival, never
    parked, and must not carry ordered records (docs/protocol.md). The broker
    applied them anyway, outside publish credit; a PUB in it that met a full
    block-policy buffer registered a wait for room whose frame was never
    parked: the rest of the frame was lost without a word, and every such
    frame left one more wait behind, past the session's end."""
    router, broker = embedded()
    router.subscribe("blk.>", capacity=2, overflow="block")   # never read
    sock, _ = raw_session(zsocket, broker.endpoints[0], "mixer")
    w = C.Writer()
    w.record(C.HB)
    for _ in range(3):
        w.record(C.PUB, "blk.x", None, b"m")
    sock.send(w.take())
    (err,) = [ev for ev in _answers(sock, (C.ERR,)) if ev[0] == C.ERR]
    assert err[1:3] == (0, errors.ProtocolError.code), err
    assert wait_for(lambda: not broker._sessions)
    assert router.published == 0 and not router._space._callbacks   # none applied
    assert broker.counters["internal_errors"] == 0


# -- a seeded fuzz: records valid in format, absurd in value, from sessions that come and go --

_VALUES = [0, 1, 2, 3, 255, 1 << 16, 1 << 20, (1 << 20) + 1, 1 << 32, 1 << 53, 1 << 63,
           (1 << 64) - 1]


def _any_value(rng):
    return rng.choice(_VALUES) if rng.random() < 0.5 else rng.randrange(6)


def _random_record(rng, w):
    v = _any_value
    pattern = rng.choice(["a", "a.b", "blk.x", "a.>", "*", "work"])
    queue = rng.choice(["q", "work"])
    service = rng.choice(["svc", "emb", "nobody"])
    choices = [
        lambda: w.record(C.PUB, rng.choice(["a.b", "blk.x", "work"]), None, b"p"),
        lambda: w.record(C.PUBS, "a.b", [b"x", b"y"]),
        lambda: w.record(C.SUB, v(rng), pattern, v(rng), rng.randrange(4), v(rng), v(rng)),
        lambda: w.record(C.CLOSE, v(rng)),
        lambda: w.record(C.CREDIT, v(rng), v(rng)),
        lambda: w.record(C.DECLARE, v(rng), queue, v(rng), rng.randrange(4),
                         rng.choice([[], ["a.>"]]),
                         rng.choice([None, {"ttl": "0.01"}, {"ack_deadline": "0.01"},
                                     {"ttl": "nan"}, {"max_deliver": "2", "dead_letter": "dlq"}])),
        lambda: w.record(C.SEND, queue, None, b"j"),
        lambda: w.record(C.CONSUME, v(rng), queue, v(rng)),
        lambda: w.record(C.ACK, v(rng), v(rng)),
        lambda: w.record(C.NACK, v(rng), v(rng), rng.randrange(3)),
        lambda: w.record(C.SERVE, v(rng), rng.choice(["svc", "emb"]), v(rng)),
        lambda: w.record(C.REQ, v(rng), service, v(rng), None, b"r"),
        lambda: w.record(C.REP, v(rng), v(rng), None, b"a"),
        lambda: w.record(C.REPERR, v(rng), v(rng), v(rng), "e"),
        lambda: w.record(C.STATS, v(rng)),
        lambda: w.record(C.HB),
        lambda: w.record(C.HELLO, rng.choice([1, 2, 3, 4]), v(rng), "again"),
    ]
    rng.choice(choices)()


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_sessions_come_and_go_and_the_broker_returns_to_its_baseline(
        embedded, zsocket, caplog, seed):
    """Every session ends, and nothing of one is left: not in the broker's
    tables, not in the router's, not held anywhere (gc). Two of the bugs
    above showed here first."""
    import logging

    import zmq

    # a captured warning's record holds its exception, whose traceback
    # holds the session: not what this test looks for
    caplog.set_level(logging.ERROR, logger="ringcast.broker")

    from ringcast.client import connect

    rng = random.Random(seed)
    router, broker = embedded()
    url = broker.endpoints[0]
    stuck = router.subscribe("blk.>", capacity=2, overflow="block")   # never read
    router.serve("emb", lambda m: b"ok")
    ended = 0
    for _ in range(3):
        socks = []
        for i in range(6):
            sock = zsocket(zmq.DEALER)
            sock.connect(url)
            w = C.Writer()
            w.record(C.HELLO, 3, 10_000, f"fuzz{i}")
            sock.send(w.take())
            socks.append(sock)
        for _ in range(30):
            sock = rng.choice(socks)
            w = C.Writer()
            for _ in range(rng.randrange(1, 6)):
                _random_record(rng, w)
            frame = w.take()
            if rng.random() < 0.1:   # cut short, maybe with a little garbage
                frame = frame[:rng.randrange(len(frame))] + rng.randbytes(rng.randrange(4))
            sock.send(frame)
        for sock in socks:
            w = C.Writer()
            w.record(C.BYE)
            sock.send(w.take())
        ended += len(socks)
        # every session ends (BYE, or earlier for bad input; a session that
        # said HELLO again ends twice)
        assert wait_for(lambda e=ended: broker.counters["sessions_dropped"] >= e
                        and not broker._sessions)
    with connect(url, timeout=10) as good:   # the broker still serves
        sub = good.subscribe("z.ok")   # no fuzzed binding matches it
        good.flush()
        good.publish("z.ok", b"still here")
        assert sub.recv(timeout=10).payload == b"still here"
    assert wait_for(lambda: not broker._sessions)
    assert broker.counters["internal_errors"] == 0
    assert not (broker._ready or broker._retry or broker._calls or broker._live)
    assert len(router._subs) == 1   # the stuck one
    assert all(not q.consumers for q in router._queues.values())
    assert [len(s.responders) for s in router._services.values() if s.responders] == [1]
    assert not router._space._callbacks
    assert not _sessions_alive()
    stuck.close()
