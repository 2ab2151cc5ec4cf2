"""The sans-IO client protocol, without sockets: request deadlines and the
confirm rule across a lost session."""

import time

import pytest

from ringcast import errors
from ringcast.protocol import REQUEST_GRACE, ClientProtocol


def test_unanswered_request_is_failed_by_the_sweep_once_overdue():
    proto = ClientProtocol("t")
    results = []
    proto.request("svc", b"q", None, 0.5, results.append)
    sent_at = time.monotonic()
    proto.expire_requests(sent_at)  # not overdue yet: the broker may still answer
    assert results == []
    proto.expire_requests(sent_at + 0.5 + REQUEST_GRACE + 0.01)
    assert len(results) == 1 and isinstance(results[0], errors.Timeout)
    assert proto.requests == {}
    proto.expire_requests(sent_at + 10)  # settled once, never twice
    assert len(results) == 1


def test_a_lost_session_with_unconfirmed_sends_fails_the_next_confirm():
    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.send("jobs", b"x")  # buffered, unconfirmed
    proto.connection_made(time.monotonic())  # a new socket: the old session is gone
    with pytest.raises(errors.ConnectionLost, match="unconfirmed"):
        proto.take_loss()
    proto.take_loss()  # reported once


def test_a_refused_publish_or_send_fails_the_next_confirm_once():
    """An ERR ref 0 that leaves the session on refuses publishes or sends
    (docs/protocol.md, Limits). The clients only logged it, and the flush
    that waited for their credit reported them confirmed. The next confirm
    raises the first refusal, typed as the broker sent it; a refused ack
    (AckError) is no confirm's business."""
    from ringcast import _codec as C

    proto = ClientProtocol("t")
    now = time.monotonic()
    proto.connection_made(now)
    proto.frame_received(_welcome(), now)
    w = C.Writer()
    w.record(C.ERR, 0, errors.AckError.code, "delivery 1 on handle 2 is unknown")
    w.record(C.ERR, 0, errors.Closed.code, "router is closed")
    w.record(C.ERR, 0, errors.LimitExceeded.code, "over a limit")
    assert proto.frame_received(w.take(), now) is None   # the session goes on
    with pytest.raises(errors.Closed, match=r"2 ERR .*first: router is closed"):
        proto.take_loss()
    proto.take_loss()  # reported once

def test_subscription_window_defaults_to_the_capacity_up_to_the_broker_cap():
    proto = ClientProtocol("t")
    assert proto.subscribe("a.>", 1000, "block").window == 1000
    assert proto.subscribe("b.>", 1 << 20, "drop_oldest").window == 1 << 16
    assert proto.subscribe("c.>", 1 << 20, "block", window=64).window == 64
    sub_records = [h.record for h in proto.handles.values()]
    assert [r[5] for r in sub_records] == [1000, 1 << 16, 64]   # what SUB asks for
    assert [r[6] for r in sub_records] == [0, 0, 0]   # max_bytes: the broker's bound


def _welcome(window=1 << 20):
    from ringcast import _codec as C

    w = C.Writer()
    w.record(C.WELCOME, C.PROTOCOL_VERSION, 500, 1 << 20, 1 << 20, 1024, window, "broker")
    return w.take()


def _pcredit(proto):
    """The broker's PCREDIT for everything sent so far."""
    from ringcast import _codec as C

    w = C.Writer()
    w.record(C.PCREDIT, proto.window - proto.credit)
    return w.take()


def _ordered_records(proto):
    """(cmd, first field) of each record the protocol would send now, HELLO,
    HB and the like left out."""
    from ringcast import _codec as C

    out = []
    for frame in proto.data_to_send(time.monotonic(), eager=True):
        for ev in C.Reader(frame).events():
            if ev[0] not in (C.HELLO, C.HB):
                out.append((ev[0], ev[1]))
    return out


def test_a_new_session_redeclares_before_what_was_buffered_while_reconnecting():
    """Publishes, sends and requests buffered between a lost session and the
    next WELCOME used to go ahead of the re-declared queues, subscriptions
    and responders: a publish on a subject bound to a queue went nowhere
    (and its flush confirmed it), a send declared the queue with default
    options before the DECLARE carrying its own, a SUB made and closed in
    that window went out with no CLOSE (a subscription left at the broker,
    that, 'block' and unread, would stall its publishers)."""
    from ringcast import _codec as C

    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    proto.declare_queue("shipping", ["orders.placed"], 100, "block", {"max_deliver": 3},
                        lambda result: None)
    queue_ref = max(proto.handles)
    sub = proto.subscribe("orders.>", 10, "block")
    _ordered_records(proto)   # sent in the first session, and applied
    proto.frame_received(_pcredit(proto), time.monotonic())
    proto.connection_lost(errors.ConnectionLost("broker gone"))
    proto.connection_made(time.monotonic())
    proto.publish("orders.placed", b"during")
    proto.send("shipping", b"job")
    gone = proto.subscribe("gone", 10, "block")
    proto.close_handle(gone)
    proto.frame_received(_welcome(), time.monotonic())
    assert _ordered_records(proto) == [(C.DECLARE, queue_ref), (C.SUB, sub.id),
                                       (C.PUBS, "orders.placed"), (C.SEND, "shipping"),
                                       (C.SUB, gone.id), (C.CLOSE, gone.id)]
    proto.take_loss()   # nothing sent in the first session was lost


def test_reconnecting_again_and_again_loses_nothing_that_was_not_sent():
    """The re-declarations a new session queues are not publishes: a broker
    that stays away for several reconnections does not make the next
    confirm fail."""
    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    proto.subscribe("a", 10, "block")
    proto.consume("q", 4)
    _ordered_records(proto)
    proto.frame_received(_pcredit(proto), time.monotonic())
    for _ in range(3):   # the broker does not answer: a new socket each time
        proto.connection_lost(errors.ConnectionLost("no answer"))
        proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    _ordered_records(proto)
    proto.take_loss()



def test_a_request_made_while_reconnecting_fails_instead_of_waiting_for_ever():
    """A request made between a lost session and the next socket had its REQ
    cleared with the outbox by ``connection_made``, never sent, and stayed
    in ``requests``: with no deadline it waited for good."""
    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    proto.connection_lost(errors.ConnectionLost("broker gone"))
    results = []
    proto.request("svc", b"q", None, None, results.append)   # no deadline
    assert results == []
    proto.connection_made(time.monotonic())
    assert len(results) == 1 and isinstance(results[0], errors.ConnectionLost)
    assert proto.requests == {}


def test_replies_ahead_of_an_undecodable_record_are_settled_not_lost():
    from ringcast import _codec as C

    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    got = []
    rid, _ = proto.request("svc", b"q", None, 5.0, got.append)
    other, _ = proto.request("svc", b"q2", None, 5.0, got.append)
    w = C.Writer()
    w.record(C.REPLY, rid, None, b"answer")
    frame = w.take() + b"\xff\x00\x00\x00\x00"   # then a record of no known command
    err = proto.frame_received(frame, time.monotonic())
    assert isinstance(err, errors.ProtocolError)
    assert [m.payload for m in got] == [b"answer"]
    assert list(proto.requests) == [other]   # the driver's reconnection fails it
    proto.connection_lost(err)
    assert isinstance(got[1], errors.ProtocolError)


def test_a_driver_that_sends_at_once_gets_the_req_frame_and_its_answer():
    """``request`` with ``now`` (the per-thread requester) hands back the
    REQ's frame with its credit taken and the deadline from ``now``;
    ``answer`` reads the reply and gives the credit back. Neither takes the
    lock: that session is its thread's alone."""
    from ringcast import _codec as C

    class Refusing:
        def __enter__(self):
            raise AssertionError("the lock was taken")

        def __exit__(self, *exc):
            return False

    proto = ClientProtocol("t", lock=Refusing())
    proto.urgent.ready = True   # as after WELCOME
    proto.credit = window = 1 << 20
    got = []
    rid, frame = proto.request("svc", b"q", None, 5.0, got.append, 100.0)
    assert frame is not None and proto.credit == window - len(frame)
    assert proto.last_tx == 100.0 and proto.requests[rid][2] == 100.0 + 5.0 + REQUEST_GRACE
    assert C.Reader(frame).next() == (C.REQ, rid, "svc", 5000, None, b"q")
    w = C.Writer()
    w.record(C.REPLY, rid, None, b"a")
    w.record(C.PCREDIT, len(frame))
    msg = proto.answer(w.take(), rid, 101.0)
    assert msg.payload == b"a" and proto.credit == window and proto.last_rx == 101.0
    assert proto.requests == {} and got == []


def test_an_oversized_reply_leaves_its_request_to_the_lost_session():
    from ringcast import _codec as C

    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    proto.max_message = 8
    got = []
    rid, _ = proto.request("svc", b"q", None, 5.0, got.append)
    w = C.Writer()
    w.record(C.REPLY, rid, None, b"x" * 9)
    err = proto.frame_received(w.take(), time.monotonic())
    assert isinstance(err, errors.ProtocolError) and "exceeds" in str(err)
    assert got == [] and list(proto.requests) == [rid]
    proto.connection_lost(errors.ConnectionLost("gone"))
    assert isinstance(got[0], errors.ConnectionLost)


def test_answers_in_one_frame_settle_in_the_order_the_broker_wrote_them():
    """Replies settle natively as the frame is decoded; an error answer
    (REPLYERR) ahead of them in the frame must still settle first, as it
    did when every answer was an event (an asyncio requester sees its
    futures done in the broker's order)."""
    from ringcast import _codec as C

    proto = ClientProtocol("t")
    proto.connection_made(time.monotonic())
    proto.frame_received(_welcome(), time.monotonic())
    got = []
    first, _ = proto.request("svc", b"q1", None, 5.0, lambda v: got.append(("first", v)))
    second, _ = proto.request("svc", b"q2", None, 5.0, lambda v: got.append(("second", v)))
    third, _ = proto.request("svc", b"q3", None, 5.0, lambda v: got.append(("third", v)))
    w = C.Writer()
    w.record(C.REPLYERR, first, errors.Timeout.code, "timed out")
    w.record(C.REPLY, second, None, b"answer")
    w.record(C.REPLYERR, 999, errors.Timeout.code, "given up on")   # dropped
    w.record(C.REPLYERR, third, errors.NoResponders.code, "nobody")
    assert proto.frame_received(w.take(), time.monotonic()) is None
    assert [name for name, _ in got] == ["first", "second", "third"]
    assert isinstance(got[0][1], errors.Timeout) and str(got[0][1]) == "timed out"
    assert got[1][1].payload == b"answer" and got[1][1].subject == "svc"
    assert isinstance(got[2][1], errors.NoResponders)
    assert proto.requests == {}
