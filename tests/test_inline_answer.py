"""Inline handlers answered as their requests are decoded (``proto.inline``
passed to ``C.Reader.events``, ``Settler.answer``), and every case that
leaves that path for the Python one. Sans-IO: a ClientProtocol fed frames,
its urgent records decoded."""

import logging
import time

from ringcast import _codec as C
from ringcast import errors
from ringcast.protocol import ClientProtocol


def _frame(*records):
    w = C.Writer()
    for rec in records:
        w.record(*rec)
    return w.take()


def _serving(handler=None):
    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_frame((C.WELCOME, C.PROTOCOL_VERSION, 500, 1 << 20, 1 << 20, 1024,
                                 1 << 20, "broker")), time.monotonic())
    h = proto.serve("svc", 16)
    if handler is not None:
        proto.inline[h.id] = handler
    proto.urgent.take()
    return proto, h


def _rqst(h, tag, payload=b"q"):
    return (C.RQST, h.id, tag, 10_000, "svc", None, payload)


def _answers(proto):
    """(cmd, tag, payload or (code, text)) of the REP/REPERR records written."""
    out = []
    for frame in proto.urgent.take():
        rd = C.Reader(frame)
        while (rec := rd.next()) is not None:
            if rec[0] == C.REP:
                out.append((C.REP, rec[2], rec[-1]))
            elif rec[0] == C.REPERR:
                out.append((C.REPERR, rec[2], (rec[3], rec[4])))
    return out


def test_a_request_for_an_inline_handler_is_answered_as_it_is_decoded():
    delivered = []
    proto, h = _serving(lambda m: b"re:" + m.payload)
    proto.on_deliver = delivered.append
    frame = _frame(_rqst(h, 7, b"a"), _rqst(h, 8, b"b"))
    assert proto.frame_received(frame, time.monotonic()) is None
    assert _answers(proto) == [(C.REP, 7, b"re:a"), (C.REP, 8, b"re:b")]
    assert delivered == [] and h.pending == 0   # no event, no inbox


def test_events_with_inline_leaves_only_the_other_records_as_events():
    """The handler runs where its RQST is in the frame; the records after it
    are events as before (applied after it, as if from the next frame)."""
    seen = []
    proto, h = _serving()

    def handler(msg):
        seen.append(msg.payload)
        return None   # no reply: it may respond later, or never

    w_frame = _frame(_rqst(h, 1), (C.PCREDIT, 10), _rqst(h, 2, b"r"))
    events = C.Reader(w_frame).events(proto.owners, {}, [], {h.id: handler})
    assert seen == [b"q", b"r"]
    assert events == [(C.PCREDIT, 10)]
    assert _answers(proto) == []


def test_a_handler_that_raises_fails_its_request_and_is_logged(caplog):
    proto, h = _serving()

    def handler(msg):
        raise ValueError("boom")

    proto.inline[h.id] = handler
    with caplog.at_level(logging.ERROR, logger="ringcast.client"):
        proto.frame_received(_frame(_rqst(h, 3), _rqst(h, 4)), time.monotonic())
    code = errors.ServiceError.code
    assert _answers(proto) == [(C.REPERR, 3, (code, "ValueError: boom")),
                               (C.REPERR, 4, (code, "ValueError: boom"))]
    raised = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(raised) == 2 and raised[0].exc_info[0] is ValueError


def test_a_result_that_cannot_be_a_reply_fails_its_request(caplog):
    proto, h = _serving(lambda m: 12345)
    with caplog.at_level(logging.ERROR, logger="ringcast.client"):
        proto.frame_received(_frame(_rqst(h, 5)), time.monotonic())
    [(cmd, tag, (code, text))] = _answers(proto)
    assert (cmd, tag, code) == (C.REPERR, 5, errors.WrongType.code)
    assert any("cannot be a reply" in r.getMessage() for r in caplog.records)


def test_a_reply_over_the_brokers_limit_fails_its_request():
    proto, h = _serving(lambda m: b"x" * 100)
    proto.max_message = 50
    proto.frame_received(_frame(_rqst(h, 6, b"")), time.monotonic())
    [(cmd, tag, (code, _))] = _answers(proto)
    assert (cmd, tag, code) == (C.REPERR, 6, errors.LimitExceeded.code)


def test_a_reply_for_a_stale_owner_is_dropped(caplog):
    """The session ended under the handler: the broker already failed the
    request, so nothing is written and nothing raises."""
    proto, h = _serving()

    def handler(msg):
        msg._owner.stale = True
        return b"late"

    proto.inline[h.id] = handler
    with caplog.at_level(logging.DEBUG, logger="ringcast.client"):
        assert proto.frame_received(_frame(_rqst(h, 9)), time.monotonic()) is None
    assert _answers(proto) == []
    assert any("ended session dropped" in r.getMessage() for r in caplog.records)


def test_a_handler_closing_its_handle_stops_the_rest_of_the_frame():
    """``Responder.close`` takes the handle out of ``inline`` and ``owners``:
    the frame's later requests are events for a handle that is gone."""
    proto, h = _serving()
    calls = []

    def handler(msg):
        calls.append(msg.payload)
        proto.inline.pop(h.id)
        proto.close_handle(h)
        return b"ok"

    proto.inline[h.id] = handler
    proto.frame_received(_frame(_rqst(h, 1, b"1"), _rqst(h, 2, b"2")), time.monotonic())
    assert calls == [b"1"]
    assert _answers(proto) == [(C.REP, 1, b"ok")]


def test_a_closed_handle_still_in_inline_goes_to_the_python_path():
    """``Client.close`` from a handler marks every handle closed without
    taking it out of ``inline``: its later requests go to ``on_deliver``,
    which runs none of them."""
    proto, h = _serving()
    calls, delivered = [], []

    def handler(msg):
        calls.append(msg.payload)
        h.closed = True
        return b"ok"

    proto.inline[h.id] = handler
    proto.on_deliver = delivered.append
    proto.frame_received(_frame(_rqst(h, 1, b"1"), _rqst(h, 2, b"2")), time.monotonic())
    assert calls == [b"1"] and delivered == [h]
    assert [m.payload for m in h.inbox] == [b"2"]


def test_requests_of_handles_not_inline_are_events_as_before():
    """Threaded handlers and iterated responders: not in ``inline``."""
    proto, h = _serving()
    delivered = []
    proto.on_deliver = delivered.append
    proto.frame_received(_frame(_rqst(h, 1)), time.monotonic())
    assert delivered == [h] and h.pending == 1 and _answers(proto) == []
    # and an owner that is no Settler is never answered natively
    msg = C.Reader(_frame(_rqst(h, 2))).events({h.id: object()}, None, None,
                                                {h.id: lambda m: b"x"})
    assert msg[0][0] == C.RQST


def test_answer_runs_a_threaded_handler_the_same_way():
    proto, h = _serving()
    proto.frame_received(_frame(_rqst(h, 1, b"a"), _rqst(h, 2, b"b")), time.monotonic())
    first, second = h.take(2)
    first._owner.answer(first, lambda m: b"re:" + m.payload)
    second._owner.answer(second, lambda m: 1 / 0)
    [rep, err] = _answers(proto)
    assert rep == (C.REP, 1, b"re:a")
    assert err[:2] == (C.REPERR, 2) and "ZeroDivisionError" in err[2][1]


# -- Urgent.answer_request: the sync client's I/O thread's fast path -------------------

def _idle(handler=None):
    """``_serving`` with its SERVE sent: nothing in the outbox."""
    proto, h = _serving(handler)
    proto.data_to_send(time.monotonic(), eager=True)
    assert not proto.unsent()
    return proto, h


def _decoded(frames):
    out = []
    for frame in frames:
        rd = C.Reader(frame)
        while (rec := rd.next()) is not None:
            out.append(rec)
    return out


def test_answer_request_answers_a_request_alone_in_its_frame_and_takes_the_reply():
    """What ``frame_received`` and ``data_to_send`` would do, in one call:
    last_rx and last_tx are the frame's time, the reply comes back to send
    (after what was urgent before it)."""
    seen = []
    proto, h = _idle(lambda m: seen.append(m) or b"re:" + m.payload)
    proto.urgent.record(C.HB)
    frames = proto.urgent.answer_request(_frame(_rqst(h, 7, b"a")), 123.5)
    assert [rec[0] for rec in _decoded(frames)] == [C.HB, C.REP]
    assert _decoded(frames)[1][2] == 7 and _decoded(frames)[1][-1] == b"re:a"
    assert proto.last_rx == proto.last_tx == 123.5
    assert len(proto.urgent) == 0
    [m] = seen
    assert (m.subject, m.payload, m.delivery_count, m._owner) == ("svc", b"a", 1, h.owner)


def test_answer_request_leaves_the_sending_to_data_to_send_when_the_outbox_holds_records():
    """Publishes buffered (here by the handler): [] -- the reply waits in
    ``urgent`` and ``data_to_send`` sends it ahead of them."""
    proto, h = _idle()

    def handler(msg):
        proto.outbox.publish("a.b", b"p")
        return b"r"

    proto.inline[h.id] = handler
    before = proto.last_tx
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 50.0) == []
    assert proto.last_rx == 50.0 and proto.last_tx == before
    assert _answers(proto) == [(C.REP, 1, b"r")]


def test_answer_request_of_a_handler_that_does_not_reply():
    proto, h = _idle(lambda m: None)
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 50.0) == []
    assert proto.last_rx == 50.0 and _answers(proto) == []


def test_answer_request_of_a_handler_that_raises_sends_the_failure():
    proto, h = _idle(lambda m: 1 / 0)
    [rec] = _decoded(proto.urgent.answer_request(_frame(_rqst(h, 4)), 1.0))
    assert rec[0] == C.REPERR and rec[2] == 4 and "ZeroDivisionError" in rec[4]


def test_answer_request_does_nothing_with_any_other_frame():
    """None, nothing applied, for ``frame_received`` to apply it: two
    requests, another record, a handle not inline, an owner missing or not
    a Settler, a closed handle, a record that does not decode."""
    calls = []
    proto, h = _idle(lambda m: calls.append(m) or b"r")
    frames = [
        _frame(_rqst(h, 1), _rqst(h, 2)),
        _frame(_rqst(h, 1), (C.PCREDIT, 5)),
        _frame((C.PCREDIT, 5)),
        _frame((C.RQST, h.id + 1, 1, 10_000, "svc", None, b"q")),
        _frame(_rqst(h, 1))[:-1],   # its record runs past the frame
        b"",
    ]
    rx = proto.last_rx
    for frame in frames:
        assert proto.urgent.answer_request(frame, 99.0) is None
    owner = proto.owners.pop(h.id)
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 99.0) is None
    proto.owners[h.id] = object()
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 99.0) is None
    # a Settler writing to another Urgent (the lock held would not be its own)
    proto.owners[h.id] = type(owner)(h, h.id, C.Urgent(proto, proto.lock))
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 99.0) is None
    proto.owners[h.id] = owner
    h.closed = True
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 99.0) is None
    assert calls == [] and proto.last_rx == rx and _answers(proto) == []


def test_a_handler_closed_while_the_lock_was_awaited_is_not_run():
    """answer_request looks the handler up under the lock, as frame_received
    does: a close() that ran while the I/O thread waited for the lock takes
    the handler out first, and the request goes the generic way (no call)."""
    import threading

    calls = []
    proto, h = _idle(lambda m: calls.append(m) or b"r")
    lock = threading.RLock()
    proto.lock = lock

    class ClosedWhileAwaited:
        def __enter__(self):
            proto.inline.pop(h.id, None)   # another thread's close(), just before
            proto.close_handle(h)
            return lock.__enter__()

        def __exit__(self, *exc):
            return lock.__exit__(*exc)

    proto.urgent.lock = ClosedWhileAwaited()
    assert proto.urgent.answer_request(_frame(_rqst(h, 1)), 1.0) is None
    assert h.closed and calls == []
