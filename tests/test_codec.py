"""The batched wire codec: round trips, ring encoding, and limits checked
before anything is built from untrusted bytes."""

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringcast import _codec as C
from ringcast import errors
from ringcast._ring import Ring

subjects = st.lists(st.text("abcxyz09", min_size=1, max_size=8), min_size=1, max_size=4).map(
    ".".join)
headers = st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(subjects, st.binary(max_size=200), headers), max_size=50))
def test_pub_records_round_trip_in_order(msgs):
    w = C.Writer(64)
    for subject, payload, hdrs in msgs:
        w.pub(subject, payload, hdrs)
    assert w.records == len(msgs)
    r = C.Reader(w.take())
    got = []
    while (rec := r.next()) is not None:
        cmd, subject, hdrs, payload = rec
        assert cmd == C.PUB
        got.append((subject, payload, hdrs or None))
    assert got == [(s, p, h or None) for s, p, h in msgs]


def test_route_publishes_until_a_non_pub_record_and_counts_subjects():
    w = C.Writer()
    w.pub_many("a.b", [b"1", b"2", b"3"])
    w.pub("c", b"4", {"k": "v"})
    w.record(C.CREDIT, 7, 100)
    w.pub("a.b", b"5")
    r = C.Reader(w.take())
    seen, counts = [], {}
    assert r.route(lambda s, p, h: seen.append((s, p, h)) or 1, counts) == 4
    assert seen == [("a.b", b"1", None), ("a.b", b"2", None), ("a.b", b"3", None),
                    ("c", b"4", {"k": "v"})]
    assert counts == {"a.b": 3, "c": 1}
    assert r.next() == (C.CREDIT, 7, 100)
    assert r.route(lambda s, p, h: 1) == 1
    assert r.at_end()


def test_route_stops_at_a_refused_record_and_can_resume():
    w = C.Writer()
    w.pub_many("s", [b"1", b"2", b"3"])
    r = C.Reader(w.take())
    taken = []

    def publish(subject, payload, headers):
        if len(taken) == 2:
            return -1
        taken.append(payload)
        return 1

    assert r.route(publish) == 2
    assert r.peek() == C.PUB
    taken.clear()
    assert r.route(publish) == 1 and taken == [b"3"]


def _drain(ring):
    out = []
    while (m := ring.pop()) is not None:
        out.append((m.subject, m.payload, m.headers))
    return out


def test_route_into_a_native_router_keeps_order_across_runs_and_headers():
    """A native router gets runs of one subject as one publish_many (up to
    512 records): order, subjects, headers and counts as record by record."""
    from ringcast._router import CoreRouter

    core, ring = CoreRouter(), Ring(4096)
    core.add(">", ring)
    w = C.Writer()
    sent = [("a", b"%d" % i, None) for i in range(700)] + [("b", b"h", {"k": "v"})] \
        + [("a", b"x%d" % i, None) for i in range(3)] + [("c", b"c", None)] * 2
    for subject, payload, headers in sent:
        w.pub(subject, payload, headers)
    w.record(C.CREDIT, 1, 1)
    r, counts = C.Reader(w.take()), {}
    assert r.route(core, counts) == len(sent)
    assert _drain(ring) == sent
    assert counts == {"a": 703, "b": 1, "c": 2}
    assert r.next() == (C.CREDIT, 1, 1)


def test_route_into_a_native_router_stops_inside_a_run_at_a_full_block_ring():
    from ringcast._router import CoreRouter

    core, ring = CoreRouter(), Ring(4, "block")
    core.add("s", ring)
    w = C.Writer()
    w.pub_many("s", [b"%d" % i for i in range(7)])
    r = C.Reader(w.take())
    assert r.route(core) == 4 and core.blocked_ring is ring
    assert r.peek() == C.PUB                       # the rest of the run is unread
    assert [p for _, p, _ in _drain(ring)] == [b"0", b"1", b"2", b"3"]
    assert r.route(core) == 3 and r.at_end()
    assert [p for _, p, _ in _drain(ring)] == [b"4", b"5", b"6"]


def test_route_applies_the_records_before_a_bad_one():
    from ringcast._router import CoreRouter

    core, ring = CoreRouter(), Ring(64)
    core.add(">", ring)
    w = C.Writer()
    w.pub_many("s", [b"1", b"2"])
    frame = w.take() + _record(C.PUB, b"\x02\xff\xfe\x00x")   # a subject that is not UTF-8
    with pytest.raises(errors.ProtocolError):
        C.Reader(frame).route(core)
    assert [p for _, p, _ in _drain(ring)] == [b"1", b"2"]


def _pubs_frame(*records):
    """PUBS records (subject, [payloads]) and PUB records (subject, payload, headers)."""
    w = C.Writer()
    for rec in records:
        if isinstance(rec[1], list):
            w.record(C.PUBS, *rec)
        else:
            w.pub(*rec)
    return w.take()


@pytest.mark.parametrize("native", [True, False])
def test_route_resumes_inside_a_run_record_after_a_full_block_ring(native):
    """Version 3's PUBS: a block ring that fills in the middle of a run
    leaves the rest of that record unread, and the next route starts at the
    first message not applied, natively or through a callable."""
    from ringcast._router import CoreRouter

    core, ring = CoreRouter(), Ring(4, "block")
    core.add("s", ring)
    frame = _pubs_frame(("s", [b"%d" % i for i in range(3)]), ("s", b"h", {"k": "v"}),
                        ("s", [b"%d" % i for i in range(3, 9)]))
    r = C.Reader(frame)
    publish = core if native else core.try_publish
    got, counts = [], {}
    for expect in (4, 4, 2):
        assert r.route(publish, counts) == expect
        got += _drain(ring)
        assert r.at_end() == (expect == 2)
        if not r.at_end():
            assert r.peek() in (C.PUB, C.PUBS)
    assert got == [("s", b"0", None), ("s", b"1", None), ("s", b"2", None),
                   ("s", b"h", {"k": "v"})] + [("s", b"%d" % i, None) for i in range(3, 9)]
    assert counts == {"s": 10}


def test_runs_from_a_publisher_are_checked_like_records():
    head = bytes([1]) + b"s"   # subject "s"
    with pytest.raises(errors.ProtocolError):            # no payload
        C.Reader(_record(C.PUBS, head)).route(lambda *a: 1)
    with pytest.raises(errors.ProtocolError):            # a length past the end
        C.Reader(_record(C.PUBS, head + b"\x09abc")).route(lambda *a: 1)
    with pytest.raises(errors.LimitExceeded):
        C.Reader(_record(C.PUBS, head + b"\x80\x10" + bytes(2048)),
                 max_message=1000).route(lambda *a: 1)


def test_the_outbox_runs_header_less_publishes_of_one_subject_together():
    outbox = C.Outbox(lambda s: None, lambda: 0.0, 1 << 20, 1 << 30)
    subject = "orders.placed"
    for i in range(3):
        outbox.publish(subject, b"%d" % i)
    outbox.publish("orders." + "placed", b"3")   # an equal str, built anew
    outbox.publish(subject, b"h", {"k": "v"})     # headers: a PUB record
    outbox.publish(subject, bytearray(b"ba"))     # not bytes: a PUB record
    outbox.publish_many(subject, [b"4", b"5"])
    outbox.publish("other", b"6")
    outbox.cut()
    (frame,), _ = outbox.take_frames(1 << 30)
    r = C.Reader(frame)
    recs = []
    while (rec := r.next()) is not None:
        recs.append(rec)
    assert recs == [(C.PUBS, subject, [b"0", b"1", b"2", b"3"]),
                    (C.PUB, subject, {"k": "v"}, b"h"), (C.PUB, subject, None, b"ba"),
                    (C.PUBS, subject, [b"4", b"5"]), (C.PUBS, "other", [b"6"])]


def test_subjects_are_interned_across_frames():
    cache = {}
    w = C.Writer()
    w.pub("orders.placed", b"x")
    f = w.take()
    seen = []
    for _ in range(2):
        C.Reader(f, subjects=cache).route(lambda s, p, h: seen.append(s) or 1)
    assert seen[0] == "orders.placed" and seen[0] is seen[1]


def _filled(ring, items):
    for subject, payload, headers in items:
        ring.put(subject, payload, headers)
    return ring


def test_runs_carry_one_subject_and_consecutive_seqs_and_decode_as_records():
    """Version 3's MSGS: header-less messages of one subject with consecutive
    sequence numbers share a record; a headers message, another subject or
    a gap (a drop) starts another. Taken in any split, as Messages or
    payloads, they decode exactly as the MSG records of an older peer."""
    ring = Ring(64, "drop_oldest")
    items = [("a", b"%d" % i, None) for i in range(5)] + [("a", b"h", {"k": "v"})] \
        + [("b", bytes(300), None)] * 3 + [("a", b"", None)] * 2
    for runs in (False, True):
        w = C.Writer()
        assert w.write_ring(_filled(ring, items), 3, 100, 1 << 20, runs) == len(items)
        frame = w.take()
        if runs:   # records: a x5, a+headers, b x3, a x2
            assert frame.count(bytes([C.MSGS])) >= 3
            assert len(frame) < 300 * 3 + 5 * 5 + 80
        (cmd, handle, run), = C.Reader(frame).events()
        assert (cmd, handle, run.count) == (C.MSG, 3, len(items))
        assert run.last_seq - run.first_seq == len(items) - 1
        nbytes = [run.nbytes]
        got = []
        for k, payloads in ((2, False), (4, True), (1, False), (10, True)):
            got += [(m.subject, m.payload, m.headers) for m in run.take(k)] if not payloads \
                else [(None, p, None) for p in run.take_payloads(k)]
            nbytes.append(run.nbytes)
        assert [p for _, p, _ in got] == [p for _, p, _ in items]
        assert got[:2] == items[:2] and got[6] == items[6]
        assert nbytes == sorted(nbytes, reverse=True) and nbytes[-1] == 0 and run.count == 0


def test_a_run_splits_at_a_gap_in_sequence_numbers():
    ring = Ring(2, "drop_newest")
    for i in range(4):                 # seqs 1, 2 kept; 3, 4 dropped
        ring.put("t", b"%d" % i)
    ring.pop()
    ring.put("t", b"later")            # seq 5, after 2: a gap inside the ring
    w = C.Writer()
    assert w.write_ring(ring, 1, 10, 1 << 20, True) == 2
    frame = w.take()
    assert frame.count(bytes([C.MSGS])) == 2   # two records: seqs must stay implicit
    (_, _, run), = C.Reader(frame).events()
    assert [(m.seq, m.payload) for m in run.take()] == [(2, b"1"), (5, b"later")]


def test_runs_are_checked_like_records():
    def frame(body):
        return _record(C.MSGS, body)
    head = b"\x01\x05\x01s"   # handle 1, seq 5, subject "s"
    with pytest.raises(errors.ProtocolError):          # no payload at all
        C.Reader(frame(head)).events()
    with pytest.raises(errors.ProtocolError):          # a length past the end
        C.Reader(frame(head + b"\x05abc")).events()
    with pytest.raises(errors.LimitExceeded):
        C.Reader(frame(head + b"\x80\x10" + bytes(2048)), max_message=1000).events()
    w = C.Writer()
    w.record(C.MSGS, 1, 5, "s", [b"x", b"yz"])
    raw = w.take()
    assert C.Reader(raw).next() == (C.MSGS, 1, 5, "s", [b"x", b"yz"])
    (_, _, run), = C.Reader(raw).events()
    assert [(m.seq, m.payload) for m in run.take()] == [(5, b"x"), (6, b"yz")]


def test_write_ring_moves_messages_with_their_sequence_numbers():
    ring = Ring(4, "drop_oldest")
    for i in range(6):
        ring.put("t.x", b"%d" % i, {"i": str(i)} if i % 2 else None)
    w = C.Writer()
    assert w.write_ring(ring, 9, 3, 1 << 20) == 3
    assert len(ring) == 1
    frame = w.take()
    (ev,) = C.Reader(frame).events()
    cmd, handle, run = ev
    assert (cmd, handle, run.count, run.first_seq, run.last_seq) == (C.MSG, 9, 3, 3, 5)
    msgs = run.take(2) + run.take(5)
    assert run.count == 0 and run.take() == []
    assert [(m.seq, m.subject, m.payload, m.headers) for m in msgs] == [
        (3, "t.x", b"2", None), (4, "t.x", b"3", {"i": "3"}), (5, "t.x", b"4", None)]
    (ev,) = C.Reader(frame).events()
    assert ev[2].take_payloads() == [b"2", b"3", b"4"]


def test_write_ring_encodes_each_slot_as_the_generic_msg_record():
    """write_ring's one-piece fast path (no headers, bytes payload) and its
    subject memo must give the same bytes as a record written field by field:
    fresh subject objects that alternate, other buffer types, a multi-byte
    handle varint, headers between plain records."""
    ring = Ring(64)
    expected = C.Writer()
    for i in range(40):
        subject = "s.%d" % (i % 3)          # a new str object every time
        payload = [b"p%d" % i, bytearray(b"b%d" % i), memoryview(b"m%d" % i)][i % 3]
        headers = {"n": str(i)} if i % 7 == 0 else None
        ring.put(subject, payload, headers)
        expected.record(C.MSG, 300, i + 1, subject, headers, bytes(payload))
    w = C.Writer()
    assert w.write_ring(ring, 300, 100, 1 << 20) == 40
    assert w.take() == expected.take()


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("runs", [False, True])
def test_write_ring_drops_and_counts_what_a_reader_would_refuse(native, runs):
    """An in-process publisher is not held to the wire's limits: a payload
    over the reader's max_message, or headers over MAX_HEADERS, is taken out
    of the ring and counted as its drop (a gap in seq), never half-written
    into the frame; it costs no credit (the count returned)."""
    from ringcast._ring_py import Ring as PyRing

    ring = (Ring if native else PyRing)(16, "block")
    ring.put("t", b"a")
    ring.put("t", bytes(101))                        # over max_message
    ring.put("t", bytearray(101))                    # so is a buffer
    ring.put("t", b"b")
    ring.put("t", b"h", {"k": "v" * C.MAX_HEADERS})  # headers a reader refuses
    ring.put("t", b"c", {"k": "v"})
    ring.put("t", bytes(100))                        # at the limit: sent
    w = C.Writer()
    assert w.write_ring(ring, 1, 100, 1 << 20, runs, 100) == 4
    assert len(ring) == 0 and ring.dropped == 3
    (_, _, run), = C.Reader(w.take(), max_message=100).events()
    assert [(m.seq, m.payload) for m in run.take()] == [
        (1, b"a"), (4, b"b"), (6, b"c"), (7, bytes(100))]


def test_deliveries_are_grouped_per_handle_run():
    ring_a, ring_b = Ring(8), Ring(8)
    for i in range(3):
        ring_a.put("a", b"a%d" % i)
        ring_b.put("b", b"b%d" % i)
    w = C.Writer()
    w.write_ring(ring_a, 1, 2, 1 << 20)
    w.write_ring(ring_b, 2, 3, 1 << 20)
    w.write_ring(ring_a, 1, 1, 1 << 20)
    evs = C.Reader(w.take()).events()
    assert [(e[1], e[2].count) for e in evs] == [(1, 2), (2, 3), (1, 1)]
    assert [m.payload for e in evs for m in e[2].take()] == [
        b"a0", b"a1", b"b0", b"b1", b"b2", b"a2"]


def test_events_group_deliveries_and_attach_owners():
    owner = object()
    w = C.Writer()
    w.record(C.QMSG, 3, 11, 1, 2, "jobs", None, b"a")
    w.record(C.QMSG, 3, 12, 0, 1, "jobs", None, b"b")
    w.record(C.REPLY, 5, {"h": "1"}, b"r")
    w.record(C.RQST, 4, 77, 1500, "svc", None, b"q")
    evs = C.Reader(w.take()).events({3: owner, 4: owner})
    assert evs[0][0] == C.QMSG and [m._tag for m in evs[0][2]] == [11, 12]
    assert evs[0][2][0].redelivered and evs[0][2][0].delivery_count == 2
    assert evs[0][2][0]._owner is owner
    assert evs[1] == (C.REPLY, 5, {"h": "1"}, b"r")
    assert evs[2][0] == C.RQST and evs[2][2]._tag == 77 and evs[2][3] == 1500


def test_events_settle_replies_of_known_requests_natively():
    def settle_a(_):
        pass

    def settle_b(_):
        pass

    requests = {5: ("svc", settle_a, 1.0), 6: ("other", settle_b, 2.0)}
    settles = []
    w = C.Writer()
    w.record(C.REPLY, 5, {"h": "1"}, b"r")
    w.record(C.PCREDIT, 40)
    w.record(C.REPLY, 9, None, b"late")   # given up on: dropped, no event
    w.record(C.REPLY, 6, None, b"s")
    evs = C.Reader(w.take()).events(None, requests, settles)
    assert evs == [(C.PCREDIT, 40)]
    assert requests == {}
    assert [(fn, m.subject, m.headers, m.payload, m.delivery_count, m._tag)
            for fn, m in settles] == [(settle_a, "svc", {"h": "1"}, b"r", 1, 0),
                                      (settle_b, "other", None, b"s", 1, 0)]
    with pytest.raises(TypeError, match="settles"):
        C.Reader(b"").events(None, {})



def _frame(*records):
    w = C.Writer()
    for rec in records:
        w.record(*rec)
    return w.take()


def test_answer_takes_the_awaited_reply_and_the_credit_beside_it():
    """The sync requester's fast path: the frame holds the answer to the
    request it waits on, and PCREDIT before or after it."""
    settle = object()
    for frame in (_frame((C.REPLY, 5, {"h": "1"}, b"r"), (C.PCREDIT, 40)),
                  _frame((C.PCREDIT, 30), (C.REPLY, 5, {"h": "1"}, b"r"), (C.PCREDIT, 10))):
        requests = {5: ("svc", settle, 1.0), 6: ("other", settle, 2.0)}
        m, credit = C.Reader(frame).answer(requests, 5)
        assert (m.subject, m.headers, m.payload, m.delivery_count, m._tag) == (
            "svc", {"h": "1"}, b"r", 1, 0)
        assert credit == 40 and list(requests) == [6]
    requests = {5: ("svc", settle, 1.0)}
    err, credit = C.Reader(_frame((C.REPLYERR, 5, errors.NoResponders.code, "nobody"))).answer(
        requests, 5)
    assert type(err) is errors.NoResponders and str(err) == "nobody"
    assert credit == 0 and requests == {}


@pytest.mark.parametrize("frame", [
    _frame((C.PCREDIT, 40)),                                          # no answer yet
    _frame((C.REPLY, 9, None, b"late"), (C.REPLY, 5, None, b"r")),    # a late reply too
    _frame((C.REPLY, 5, None, b"r"), (C.HB,)),                        # another record
    _frame((C.REPLY, 5, None, b"r"), (C.REPLY, 5, None, b"again")),   # a second answer
    _frame((C.REPLY, 5, None, b"r")) + b"\xff\x00\x00\x00\x00",        # undecodable
    _frame((C.REPLY, 5, None, b"x" * 9)),                             # over max_message
    _frame((C.ERR, 0, errors.ConnectionLost.code, "no session")),
])
def test_answer_leaves_any_other_frame_to_events_untouched(frame):
    requests = {5: ("svc", object(), 1.0), 9: ("svc", object(), 1.0)}
    assert C.Reader(frame, 8).answer(requests, 5) is None
    assert list(requests) == [5, 9]


def test_answer_leaves_a_reply_to_a_request_given_up_on():
    requests = {}
    assert C.Reader(_frame((C.REPLY, 5, None, b"r"))).answer(requests, 5) is None


def test_answer_looks_up_the_rid_it_is_given_any_u64():
    big = (1 << 64) - 1
    requests = {big: ("svc", object(), 1.0)}
    m, credit = C.Reader(_frame((C.REPLY, big, None, b"r"))).answer(requests, big)
    assert (m.payload, credit, requests) == (b"r", 0, {})
    with pytest.raises(OverflowError):
        C.Reader(_frame((C.REPLY, 5, None, b"r"))).answer({}, -1)
    with pytest.raises(TypeError):
        C.Reader(_frame((C.REPLY, 5, None, b"r"))).answer({}, "5")


def test_outbox_request_hands_back_the_req_frame_only_when_it_may_leave_first():
    def fresh(frame_target=4096):
        return C.Outbox(lambda s: None, time.monotonic, frame_target, 1 << 30)

    outbox = fresh()
    deadline, frame = outbox.request(1, "svc", b"q", None, 5.0, 0.05)
    assert frame is None and outbox.unsent > 0   # no credit given: buffered
    outbox = fresh()
    deadline, frame = outbox.request(1, "svc", b"q", None, 5.0, 0.05, 1000)
    assert deadline > time.monotonic() + 5 and outbox.unsent == 0
    assert C.Reader(frame).next() == (C.REQ, 1, "svc", 5000, None, b"q")
    # over the credit, or behind a record buffered before it: it waits its turn
    outbox = fresh()
    assert outbox.request(1, "svc", b"q", None, 5.0, 0.05, 5)[1] is None
    outbox = fresh()
    outbox.publish("t", b"p")
    assert outbox.request(1, "svc", b"q", None, 5.0, 0.05, 1000)[1] is None
    outbox.cut()
    (frame,), _ = outbox.take_frames(1000)
    reader = C.Reader(frame)
    assert [reader.next()[0], reader.next()[0], reader.next()] == [C.PUBS, C.REQ, None]
    # a frame_target so small that the REQ is cut as it is written
    outbox = fresh(1)
    _, frame = outbox.request(1, "svc", b"q", None, 5.0, 0.05, 1000)
    assert frame is not None and outbox.unsent == 0 and not outbox.frames


def test_outbox_request_reads_the_clock_once_or_takes_the_callers_reading():
    reads = []

    def clock():
        reads.append(1)
        return 100.0

    outbox = C.Outbox(lambda s: None, clock, 4096, 1 << 30)
    deadline, frame = outbox.request(1, "svc", b"q", None, 5.0, 0.25)
    assert (deadline, frame, len(reads)) == (105.25, None, 1)   # buffered: first is 100
    outbox.clear()
    deadline, frame = outbox.request(2, "svc", b"q", None, 5.0, 0.25, 1000, 7.0)
    assert deadline == 12.25 and frame is not None and len(reads) == 1
    # buffered with the caller's reading: its partial frame is that old
    deadline, frame = outbox.request(3, "svc", b"q", None, 2.0, 0.25, -1, 50.0)
    assert deadline == 52.25 and frame is None and len(reads) == 1
    outbox.cut(now=50.5, linger=1.0, force=False)
    assert outbox.buffered > 0
    outbox.cut(now=51.0, linger=1.0, force=False)
    assert outbox.buffered == 0 and len(outbox.frames) == 1

def test_a_reply_settled_natively_between_deliveries_of_one_handle_splits_their_run():
    """A run of MSG records is decoded later, from its bytes: a REPLY between
    two deliveries of one subscription (settled natively, no event) must not
    join them into one run, whose decoding would take the REPLY for a MSG."""
    requests = {5: ("svc", lambda _: None, 1.0)}
    settles = []
    w = C.Writer()
    w.record(C.MSG, 1, 1, "t", None, b"first")
    w.record(C.REPLY, 5, None, b"reply")
    w.record(C.MSG, 1, 2, "t", None, b"second")
    evs = C.Reader(w.take()).events(None, requests, settles)
    assert [m.payload for _, m in settles] == [b"reply"]
    got = [(m.seq, m.subject, m.payload) for ev in evs for m in ev[2].take()]
    assert got == [(1, "t", b"first"), (2, "t", b"second")]


def test_write_deliveries_round_trips_queue_deliveries():
    msgs = [C.message("jobs", b"a", None, tag=11), C.message("jobs", b"b", {"k": "v"}, tag=12,
                                                               redelivered=True, delivery_count=3)]
    w = C.Writer()
    w.write_deliveries(4, msgs)
    ((cmd, handle, got),) = C.Reader(w.take()).events({4: "owner"})
    assert (cmd, handle) == (C.QMSG, 4)
    assert [(m._tag, m.redelivered, m.delivery_count, m.subject, m.headers, m.payload, m._owner)
            for m in got] == [(11, False, 1, "jobs", None, b"a", "owner"),
                              (12, True, 3, "jobs", {"k": "v"}, b"b", "owner")]


def test_write_deliveries_encodes_pure_python_messages_the_same():
    """The broker on the pure-Python core hands its own Message objects."""
    from ringcast._ring_py import Message as PyMessage

    native = C.message("jobs", b"b", {"k": "v"}, tag=12, redelivered=True, delivery_count=3)
    pure = PyMessage("jobs", b"b", {"k": "v"}, redelivered=True, delivery_count=3)
    pure._tag = 12
    frames = []
    for m in (native, pure):
        w = C.Writer()
        w.write_deliveries(4, [m])
        frames.append(w.take())
    assert frames[0] == frames[1]


def test_write_deliveries_leaves_no_partial_record():
    w = C.Writer()
    w.write_deliveries(1, [C.message("ok", b"1", tag=1)])
    size = len(w)
    with pytest.raises(errors.WrongType):
        w.write_deliveries(1, [C.message("bad", "not bytes", tag=2)])
    assert len(w) == size and w.records == 1


def test_write_deliveries_returns_what_a_reader_would_refuse():
    """An in-process send is not held to the wire's limits: a delivery over
    max_message or with headers over MAX_HEADERS is handed back, unwritten,
    and the others are written (native and pure-Python messages alike)."""
    from ringcast._ring_py import Message as PyMessage

    big = PyMessage("jobs", bytes(101))
    big._tag = 3
    msgs = [C.message("jobs", b"a", tag=1), C.message("jobs", bytes(101), tag=2), big,
            C.message("jobs", b"h", {"k": "v" * C.MAX_HEADERS}, tag=4),
            C.message("jobs", b"b", tag=5)]
    w = C.Writer()
    refused = w.write_deliveries(1, msgs, 100)
    assert [m._tag for m in refused] == [2, 3, 4]
    ((_, _, got),) = C.Reader(w.take()).events({1: None})
    assert [(m._tag, m.payload) for m in got] == [(1, b"a"), (5, b"b")]


def test_acks_decodes_a_run_of_acks_per_handle_and_stops_at_another_record():
    w = C.Writer()
    for hid, tag in [(1, 5), (2, 6), (1, 7), (1, 300)]:
        w.record(C.ACK, hid, tag)
    w.record(C.CREDIT, 1, 10)
    w.record(C.ACK, 3, 1)
    r = C.Reader(w.take())
    assert r.acks() == {1: [5, 7, 300], 2: [6]}
    assert r.next() == (C.CREDIT, 1, 10)
    assert r.acks() == {3: [1]} and r.at_end()
    assert r.acks() == {}


def test_sends_decodes_a_run_of_header_less_sends_to_one_queue():
    w = C.Writer()
    for i in range(3):
        w.record(C.SEND, "jobs", None, b"%d" % i)
    w.record(C.SEND, "other", None, b"o")          # another queue ends the run
    w.record(C.SEND, "other", {"msg-id": "1"}, b"h")  # headers: the one-by-one path
    w.record(C.SEND, "other", None, b"p")
    r = C.Reader(w.take())
    assert r.sends() == ("jobs", [b"0", b"1", b"2"])
    assert r.sends() == ("other", [b"o"])
    at = r.offset
    assert r.sends() == (None, []) and r.offset == at
    assert r.next() == (C.SEND, "other", {"msg-id": "1"}, b"h")
    assert r.sends() == ("other", [b"p"]) and r.at_end()


def test_run_decodes_records_of_one_command_until_another_or_a_bad_one():
    w = C.Writer()
    for rid in (1, 2, 300):
        w.record(C.REQ, rid, "svc", 1000, None, b"q%d" % rid)
    w.record(C.REP, 1, 7, {"k": "v"}, b"r")
    frame = w.take()
    r = C.Reader(frame)
    assert r.run(C.REP) == []   # not the next record's command: nothing read
    assert r.run(C.REQ) == [(C.REQ, rid, "svc", 1000, None, b"q%d" % rid)
                            for rid in (1, 2, 300)]
    assert r.run(C.REP) == [(C.REP, 1, 7, {"k": "v"}, b"r")] and r.at_end()
    # a record that does not decode: the good ones before it come first (to
    # be applied, as one by one), then the error, with nothing skipped
    one = C.Writer()
    one.record(C.REQ, 1, "svc", 1000, None, b"q1")
    r = C.Reader(one.take() + _record(C.REQ, b"\x05\xff"))   # rid 5, then a bad varint
    assert [rec[1] for rec in r.run(C.REQ)] == [1]
    at = r.offset
    with pytest.raises(errors.ProtocolError):
        r.run(C.REQ)
    assert r.offset == at


def test_skip_steps_over_records_to_retry_the_first_refused_one():
    w = C.Writer()
    for i in range(4):
        w.record(C.SEND, "jobs", None, b"%d" % i)
    r = C.Reader(w.take())
    start = r.offset
    assert r.sends()[1] == [b"0", b"1", b"2", b"3"]
    r.seek(start)
    r.skip(3)
    assert r.sends() == ("jobs", [b"3"])
    with pytest.raises(errors.ProtocolError):
        r.skip(1)


def test_writer_ack_writes_the_generic_ack_record():
    fast, generic = C.Writer(), C.Writer()
    for hid, tag in [(1, 5), (300, 1 << 40)]:
        fast.ack(hid, tag)
        generic.record(C.ACK, hid, tag)
    assert fast.records == 2 and fast.take() == generic.take()


@pytest.mark.parametrize("headers", [None, {"k": "v"}])
def test_writer_rqst_and_reply_write_the_generic_records(headers):
    fast, generic = C.Writer(), C.Writer()
    for payload in (b"", b"x" * 300, memoryview(b"abc")):
        assert fast.rqst(7, 1 << 40, 5000, "svc", headers, payload) == len(fast)
        generic.record(C.RQST, 7, 1 << 40, 5000, "svc", headers, payload)
        assert fast.reply(300, headers, payload) == len(fast)
        generic.record(C.REPLY, 300, headers, payload)
    assert fast.records == 6 and fast.take() == generic.take()


@pytest.mark.parametrize("bad", [{"headers": {"k": 1}}, {"payload": "str"}, {"service": b"b"},
                                 {"timeout_ms": 1 << 64}])
def test_writer_rqst_and_reply_write_nothing_of_a_refused_record(bad):
    w = C.Writer()
    w.ack(1, 2)
    before = w.records, len(w)
    fields = {"service": "svc", "headers": None, "payload": b"p", "timeout_ms": 1, **bad}
    with pytest.raises((errors.RingcastError, TypeError, OverflowError)):
        w.rqst(1, 2, fields["timeout_ms"], fields["service"], fields["headers"],
               fields["payload"])
    if "service" not in bad and "timeout_ms" not in bad:
        with pytest.raises((errors.RingcastError, TypeError)):
            w.reply(1, fields["headers"], fields["payload"])
    assert (w.records, len(w)) == before


def test_acks_rejects_a_malformed_ack():
    r = C.Reader(_record(C.ACK, b"\x01\x02\x03"))
    with pytest.raises(errors.ProtocolError):
        r.acks()


def _record(cmd, body):
    return bytes([cmd]) + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("frame, exc", [
    (b"\x02\x05\x00", errors.ProtocolError),                         # truncated header
    (_record(C.PUB, b"\x03ab"), errors.ProtocolError),                # string past the end
    (b"\x02" + struct.pack("<I", 1 << 30), errors.LimitExceeded),     # huge record length
    (_record(0x55, b""), errors.UnknownCommand),
    (_record(C.PUB, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"), errors.ProtocolError),
    (_record(C.PUB, b"\x02\xff\xfe\x00x"), errors.ProtocolError),     # bad UTF-8
    (_record(C.CREDIT, b"\x01\x02\x03"), errors.ProtocolError),       # trailing bytes
])
def test_bad_frames_raise_typed_errors(frame, exc):
    with pytest.raises(exc):
        r = C.Reader(frame)
        while r.next() is not None:
            pass


def test_limits_are_checked_before_building_objects():
    w = C.Writer()
    w.pub("s", b"x" * 2000)
    frame = w.take()
    with pytest.raises(errors.LimitExceeded):
        C.Reader(frame, max_message=1000).next()
    w.pub("a" * 300, b"x")
    with pytest.raises(errors.LimitExceeded):
        C.Reader(w.take(), max_subject=256).route(lambda *a: 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_decoder(data):
    try:
        C.Reader(data, max_message=1000).events()
    except errors.RingcastError:
        pass


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_garbage_replies_never_crash_the_decoder_nor_settle_twice(bodies):
    """REPLY records with random bodies, settled natively (events with
    requests): each request is popped once, with a Message, or left."""
    frame = b"".join(bytes([C.REPLY]) + struct.pack("<I", len(b)) + b for b in bodies)
    requests = {rid: ("svc", rid, 0.0) for rid in range(130)}
    settles = []
    try:
        C.Reader(frame, max_message=1000).events(None, requests, settles)
    except errors.RingcastError:
        pass
    settled = [rid for rid, _ in settles]
    assert len(settled) == len(set(settled)) and not set(settled) & set(requests)
    assert len(settled) + len(requests) == 130
    assert all(m.subject == "svc" and isinstance(m.payload, bytes) for _, m in settles)


def test_writer_rejects_bad_types():
    w = C.Writer()
    with pytest.raises(errors.WrongType):
        w.pub("s", "not bytes")
    with pytest.raises(errors.WrongType, match="buffer protocol, not int"):
        w.pub("s", 5)
    with pytest.raises(errors.WrongType):
        w.pub("s", b"x", {"k": 1})
    with pytest.raises(errors.UnknownCommand):
        w.record(0x55)
    assert w.take() == b""   # nothing half-written


def test_writer_refuses_headers_a_reader_would_refuse():
    w = C.Writer()
    w.pub("s", b"x", {"k": "v" * (C.MAX_HEADERS - 10)})
    assert C.Reader(w.take()).next()[2] == {"k": "v" * (C.MAX_HEADERS - 10)}
    with pytest.raises(errors.LimitExceeded, match="headers exceed"):
        w.pub("s", b"x", {"k": "v" * C.MAX_HEADERS})
    assert w.take() == b""


def test_a_trailing_field_added_by_a_later_version_may_be_absent():
    """SUB's max_bytes came with protocol version 3: an older client's SUB
    (five fields) decodes with 0 there, a newer one's with its value."""
    w = C.Writer()
    w.record(C.SUB, 1, "a.>", 64, 0, 32)
    w.record(C.SUB, 2, "b.>", 64, 1, 32, 4096)
    r = C.Reader(w.take())
    assert r.next() == (C.SUB, 1, "a.>", 64, 0, 32, 0)
    assert r.next() == (C.SUB, 2, "b.>", 64, 1, 32, 4096)
    for fields in [(1, "a", 64, 0), (1, "a", 64, 0, 32, 4096, 7)]:
        with pytest.raises(ValueError, match="takes 6 fields"):
            w.record(C.SUB, *fields)
    with pytest.raises(errors.ProtocolError, match="trailing bytes"):   # only one may follow
        C.Reader(_record(C.SUB, b"\x01\x01a\x40\x00\x20\x05\x06")).next()


def test_write_ring_encodes_a_pure_python_ring_the_same_as_a_native_one():
    """The pure-Python core's rings (RINGCAST_NO_EXTENSIONS=1) go through the
    same method, a Message at a time, into the same records."""
    from ringcast._ring_py import Ring as PyRing

    frames = []
    for ring in (Ring(16, "drop_oldest"), PyRing(16, "drop_oldest")):
        for i in range(20):   # four evicted: sequence numbers start at 5
            ring.put("a.b", b"%d" % i, {"k": "v"} if i % 2 else None)
        w = C.Writer()
        assert w.write_ring(ring, 7, 10, 1 << 20) == 10
        assert w.write_ring(ring, 7, 100, 1 << 20) == 6 and len(ring) == 0
        frames.append(w.take())
    assert frames[0] == frames[1]


@pytest.mark.parametrize("native", [True, False])
def test_write_ring_wakes_a_blocked_publisher_when_it_only_drops(native):
    """Messages write_ring drops (over max_message) leave the ring too: a
    publisher waiting for room is woken, as by messages written."""
    from ringcast._ring_py import Ring as PyRing

    ring = (Ring if native else PyRing)(2, "block")
    ring.put("t", bytes(101))
    ring.put("t", b"h", {"k": "v" * C.MAX_HEADERS})
    woken = []
    assert ring.arm_space(lambda: woken.append(1))
    assert C.Writer().write_ring(ring, 1, 10, 1 << 20, False, 100) == 0
    assert len(ring) == 0 and ring.dropped == 2 and woken == [1]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("runs", [False, True])
def test_write_ring_leaves_no_partial_record(native, runs):
    """A slot whose record fails midway (headers its publisher changed after
    the publish, a payload whose buffer was released) raises and leaves the
    frame as it was before that record: whole records, counted, any open run
    closed."""
    from ringcast._ring_py import Ring as PyRing

    for bad in ({"headers": {"k": 1}}, {"payload": memoryview(b"gone")}):
        ring = (Ring if native else PyRing)(8)
        ring.put("t", b"a")
        ring.put("t", b"b")
        headers = {"k": "v"}
        ring.put("t", bad.get("payload", b"c"), headers)
        if "payload" in bad:
            bad["payload"].release()
        else:
            headers.update(bad["headers"])
        w = C.Writer()
        with pytest.raises((errors.WrongType, ValueError)):
            w.write_ring(ring, 1, 10, 1 << 20, runs)
        records = w.records
        frame = w.take()
        evs = C.Reader(frame).events()
        assert [m.payload for _, _, run in evs for m in run.take()] == [b"a", b"b"]
        reader = C.Reader(frame)
        assert records == sum(1 for _ in iter(reader.next, None))


def test_settle_future_sets_a_pending_future_and_skips_a_cancelled_one():
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        pending, cancelled = loop.create_future(), loop.create_future()
        cancelled.cancel()
        C.settle_future(pending, "reply")
        C.settle_future(cancelled, "late reply")   # no InvalidStateError
        C.settle_future(pending, "again")   # settled once
        assert pending.result() == "reply" and cancelled.cancelled()
    finally:
        loop.close()
