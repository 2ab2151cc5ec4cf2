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


def test_subscription_window_defaults_to_the_capacity_up_to_the_broker_cap():
    proto = ClientProtocol("t")
    assert proto.subscribe("a.>", 1000, "block").window == 1000
    assert proto.subscribe("b.>", 1 << 20, "drop_oldest").window == 1 << 16
    assert proto.subscribe("c.>", 1 << 20, "block", window=64).window == 64
    sub_records = [h.record for h in proto.handles.values()]
    assert [r[5] for r in sub_records] == [1000, 1 << 16, 64]   # what SUB asks for
    assert [r[6] for r in sub_records] == [0, 0, 0]   # max_bytes: the broker's bound
