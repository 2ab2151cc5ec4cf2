"""The broker over time: clients come, use it and go (BYE, HELLO again,
garbage, silence), and every per-session structure of the broker returns to
its baseline; hostile values and floods cost the sender, not the broker."""

import gc

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

