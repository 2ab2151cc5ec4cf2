"""The client's Outbox (the codec is always native): application threads append while an I/O
thread cuts and takes frames; every record comes out exactly once, in each
thread's order. And received messages stay out of the cyclic GC when they
hold nothing that could lead back to them."""

import gc
import threading
import time
import weakref

import pytest

from ringcast import _codec as C
from ringcast._impl import check_subject

THREADS, EACH = 4, 20_000


def _records(frames):
    for frame in frames:
        r = C.Reader(frame, 1 << 20, 1024, {})
        while (rec := r.next()) is not None:
            yield rec


def test_concurrent_publishers_and_an_io_thread_lose_and_duplicate_nothing():
    outbox = C.Outbox(check_subject, time.monotonic, 4096, 1 << 30)
    taken = []
    done = threading.Event()

    def io_thread():   # what the sync client's I/O thread does, as fast as it can
        while True:
            finished = done.is_set()
            outbox.cut()
            frames, _ = outbox.take_frames(1 << 30)
            taken.extend(frames)
            if finished:
                return

    def publisher(t):
        for i in range(EACH):
            outbox.publish(f"t{t}", b"%d" % i, None if i % 3 else {"i": str(i)})

    io = threading.Thread(target=io_thread)
    io.start()
    pubs = [threading.Thread(target=publisher, args=(t,)) for t in range(THREADS)]
    for p in pubs:
        p.start()
    for p in pubs:
        p.join()
    done.set()
    io.join()
    per = {f"t{t}": [] for t in range(THREADS)}
    runs = 0
    for rec in _records(taken):
        if rec[0] == C.PUBS:   # header-less messages of one subject, run together
            _, subject, payloads = rec
            runs += len(payloads) > 1
            cases = [(None, p) for p in payloads]
        else:
            cmd, subject, headers, payload = rec
            assert cmd == C.PUB
            cases = [(headers, payload)]
        for headers, payload in cases:
            per[subject].append(payload)
            assert headers == (None if int(payload) % 3 else {"i": payload.decode()})
    assert runs   # two header-less messages in a row share a record
    for t in range(THREADS):
        assert per[f"t{t}"] == [b"%d" % i for i in range(EACH)]
    assert outbox.unsent == 0


def test_send_buffers_send_records_as_publish_buffers_pub_records():
    """``Outbox.send`` (what ``Client.send`` is bound to) writes the same
    SEND records as the generic path, and refuses what the broker would."""
    from ringcast import errors

    fast = C.Outbox(check_subject, time.monotonic, 4096, 1 << 30, 100)
    generic = C.Writer()
    for i in range(5):
        fast.send("jobs", b"%d" % i, None if i % 2 else {"i": str(i)})
        generic.record(C.SEND, "jobs", None if i % 2 else {"i": str(i)}, b"%d" % i)
    fast.cut()
    frames, _ = fast.take_frames(1 << 30)
    assert list(_records(frames)) == list(_records([generic.take()]))
    with pytest.raises(errors.LimitExceeded):
        fast.send("jobs", b"x" * 101)
    with pytest.raises(errors.InvalidSubject):
        fast.send("bad subject", b"x")
    with pytest.raises(errors.WrongType):
        fast.send("jobs", "text")
    assert fast.buffered == 0


def test_received_messages_skip_the_cycle_collector_only_when_they_cannot_cycle():
    w = C.Writer()
    w.record(C.MSG, 1, 1, "a.b", None, b"plain")
    w.record(C.MSG, 1, 2, "a.b", {"k": "v"}, b"with-headers")
    (_, _, run), = C.Reader(w.take(), 1 << 20, 1024, {}).events({})
    plain, with_headers = run.take()
    assert not gc.is_tracked(plain)        # str, bytes, no headers, no owner
    assert gc.is_tracked(with_headers)     # a headers dict could lead back to it
    owner = Owner()
    owner.msg = plain
    plain._owner = owner                   # now it is part of a cycle ...
    assert gc.is_tracked(plain)            # ... and the collector sees it again
    ref = weakref.ref(owner)
    del plain, owner
    gc.collect()
    assert ref() is None                   # the cycle was collected


class Owner:
    msg = None


def test_an_ack_written_settles_its_delivery_even_if_the_kick_raises():
    """Settler.ack writes the ACK record, then asks its owner to send: if
    that raises, the ACK is still in the urgent buffer and goes with the
    next send, so the delivery is settled and a second ack is refused, not
    written again."""
    from ringcast.errors import AckError

    class Driver:
        def kick(self):
            raise RuntimeError("the event loop is closed")

    urgent = C.Urgent(Driver(), C.NoLock())
    urgent.ready = True
    settler = C.Settler(None, 5, urgent)
    msg = C.message("jobs", b"a", tag=7)
    with pytest.raises(RuntimeError):
        settler.ack(msg)
    with pytest.raises(AckError):
        settler.ack(msg)
    (frame,) = urgent.take()
    assert C.Reader(frame).acks() == {5: [7]}


class _Kicks:
    def __init__(self):
        self.threads = []

    def kick(self):
        self.threads.append(threading.get_ident())


def test_writes_on_the_sender_thread_ask_no_kick():
    """The sync client's I/O thread sends what it writes before it sleeps:
    its own urgent records (inline handlers' replies) ask no kick; every
    other thread's do."""
    driver = _Kicks()
    urgent = C.Urgent(driver, C.NoLock())
    urgent.ready = True
    urgent.put(C.HB)
    assert driver.threads == [threading.get_ident()]   # no sender yet: every write kicks
    urgent.sender = threading.get_ident()
    urgent.put(C.HB)
    assert len(driver.threads) == 1
    other = threading.Thread(target=urgent.put, args=(C.HB,))
    other.start()
    other.join()
    assert driver.threads[1:] == [other.ident]
    assert len(C.Reader(b"".join(urgent.take())).run(C.HB)) == 3   # all three written


class _Proto:
    max_message = 8


class _Handle:
    proto = _Proto()


@pytest.mark.parametrize("payload,headers,error", [
    (b"x" * 9, None, "LimitExceeded"),           # over the broker's max_message
    (memoryview(b"x" * 9), None, "LimitExceeded"),
    ("text", None, "WrongType"),
    (b"ok", {"k": 1}, "WrongType"),
])
def test_respond_refuses_a_reply_before_writing_anything(payload, headers, error):
    from ringcast import errors

    driver = _Kicks()
    urgent = C.Urgent(driver, C.NoLock())
    urgent.ready = True
    settler = C.Settler(_Handle(), 5, urgent)
    msg = C.message("svc", b"q", tag=7)
    with pytest.raises(getattr(errors, error)):
        settler.respond(msg, payload, headers)
    assert urgent.take() == [] and driver.threads == []
    settler.respond(msg, b"x" * 8, {"k": "v"})   # at the limit: written
    (frame,) = urgent.take()
    assert C.Reader(frame).next() == (C.REP, 5, 7, {"k": "v"}, b"x" * 8)
    settler.stale = True   # its session ended: refused first, whatever the reply
    with pytest.raises(errors.AckError):
        settler.respond(msg, "text")
