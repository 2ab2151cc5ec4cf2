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
