"""Embedded point-to-point queues: competing consumers, acks, redelivery."""

import threading
import time

import pytest

import ringcast
from ringcast import errors


@pytest.fixture
def router():
    with ringcast.Router() as r:
        yield r


def test_each_message_goes_to_exactly_one_competing_consumer(router):
    consumers = [router.consume("jobs") for _ in range(3)]
    for i in range(300):
        router.send("jobs", b"%d" % i)
    got = {i: [] for i in range(3)}
    progress = True
    while progress:
        progress = False
        for i, c in enumerate(consumers):
            batch = c.recv_many(7)
            for m in batch:
                got[i].append(int(m.payload))
                m.ack()
            progress |= bool(batch)
    everything = sorted(x for v in got.values() for x in v)
    assert everything == list(range(300))
    assert all(got.values())  # all three competed
    assert router.queue("jobs").stats()["acked"] == 300


def test_competing_consumer_threads_get_each_message_once(router):
    total, seen, lock = 4000, [], threading.Lock()
    stop = threading.Event()

    def worker():
        with router.consume("work") as c:
            while not stop.is_set():
                try:
                    m = c.recv(timeout=0.05)
                except errors.Timeout:
                    continue
                with lock:
                    seen.append(int(m.payload))
                m.ack()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(total):
        router.send("work", b"%d" % i)
    q = router.queue("work")
    while q.stats()["acked"] < total:
        with lock:
            if len(seen) >= total:
                break
        threading.Event().wait(0.001)
    stop.set()
    for t in threads:
        t.join(5)
    assert sorted(seen) == list(range(total))


def test_nack_requeues_flagged_redelivered_with_count(router):
    c = router.consume("q")
    router.send("q", b"job")
    first = c.recv(timeout=1)
    assert not first.redelivered and first.delivery_count == 1
    first.nack()
    again = c.recv(timeout=1)
    assert (again.payload, again.redelivered, again.delivery_count) == (b"job", True, 2)
    again.ack()
    with pytest.raises(errors.Timeout):
        c.recv(timeout=0.01)


def test_closed_consumer_returns_unacked_in_order_as_redelivered(router):
    c1, c2 = router.consume("q"), router.consume("q")
    for i in range(5):
        router.send("q", b"%d" % i)
    taken = [c1.recv(timeout=1) for _ in range(3)]
    taken[1].ack()
    c1.close()
    got = [c2.recv(timeout=1) for _ in range(4)]
    assert [m.payload for m in got] == [b"0", b"2", b"3", b"4"]
    assert [m.redelivered for m in got] == [True, True, False, False]
    with pytest.raises(errors.AckError):
        taken[0].ack()  # taken back when c1 closed: a late ack is an error, not a success


def test_double_ack_and_foreign_message_are_errors(router):
    c = router.consume("q")
    router.send("q", b"x")
    m = c.recv(timeout=1)
    m.ack()
    with pytest.raises(errors.AckError):
        m.ack()
    with pytest.raises(errors.RingcastError):
        ringcast.Message("q", b"y").ack()


def test_reject_goes_to_dead_letter_queue_with_reason(router):
    router.declare_queue("orders", dead_letter="orders.dlq")
    c = router.consume("orders")
    router.send("orders", b"poison", {"id": "7"})
    c.recv(timeout=1).nack(requeue=False)
    dead = router.consume("orders.dlq").recv(timeout=1)
    assert dead.payload == b"poison"
    assert dead.headers["x-dead-letter-from"] == "orders"
    assert dead.headers["id"] == "7"
    assert router.queue("orders").stats()["rejected"] == 1


def test_reject_without_dead_letter_is_counted(router):
    c = router.consume("plain")
    router.send("plain", b"x")
    c.recv(timeout=1).nack(requeue=False)
    assert router.queue("plain").stats()["rejected"] == 1


def test_prefetch_limits_unacked_messages(router):
    c = router.consume("p", prefetch=2)
    for i in range(4):
        router.send("p", b"%d" % i)
    a, b = c.recv(timeout=1), c.recv(timeout=1)
    assert (a.payload, b.payload) == (b"0", b"1")
    with pytest.raises(errors.WouldBlock):
        c.recv(timeout=0)
    assert c.recv_many(10) == []
    a.ack()
    assert c.recv(timeout=1).payload == b"2"
    assert c.credit == 0 and c.unacked == 2


def test_queue_bound_to_subjects_receives_published_messages(router):
    router.declare_queue("shipping", bind=["orders.placed", "orders.*"])
    billing = router.subscribe("orders.>")
    assert router.publish("orders.placed", b"o1") == 2
    msg = router.consume("shipping").recv(timeout=1)
    assert (msg.subject, msg.payload) == ("orders.placed", b"o1")
    assert billing.recv(timeout=1).payload == b"o1"
    assert router.queue("shipping").depth == 0  # one copy despite two matching binds


def test_full_queue_blocks_sender_until_consumed(router):
    router.declare_queue("small", capacity=2)
    router.send("small", b"1")
    router.send("small", b"2")
    with pytest.raises(errors.WouldBlock):
        router.send("small", b"3", timeout=0)
    c = router.consume("small")
    done = threading.Event()
    t = threading.Thread(target=lambda: (router.send("small", b"3", timeout=5), done.set()))
    t.start()
    got = [c.recv(timeout=5).payload for _ in range(3)]
    t.join(5)
    assert done.is_set() and got == [b"1", b"2", b"3"]


def test_queue_byte_bound_blocks_senders_and_shows_in_stats(router):
    router.declare_queue("blobs", max_bytes=100)
    assert router.try_send_many("blobs", [b"x" * 40] * 5) == 3   # 0, 40, 80 < 100
    with pytest.raises(errors.WouldBlock):
        router.send("blobs", b"y", timeout=0)
    stats = router.stats()["queues"]["blobs"]
    assert (stats["bytes"], stats["max_bytes"], stats["depth"]) == (120, 100, 3)
    c = router.consume("blobs", prefetch=1)
    m = c.recv(timeout=5)
    m.ack()
    router.send("blobs", b"y", timeout=5)                         # room again
    got = []
    for _ in range(3):
        m = c.recv(timeout=5)
        got.append(m.payload)
        m.ack()
    assert got == [b"x" * 40, b"x" * 40, b"y"]


def test_a_queue_stages_a_bounded_number_of_bytes_for_delivery(router):
    # messages leave the intake ring for delivery in runs of at most about 1 MiB,
    # so a consumer does not drain a byte-bounded ring into unbounded memory
    q = router.declare_queue("blobs", max_bytes=64 << 20)
    router.send_many("blobs", [bytes(256 << 10)] * 16)       # 4 MiB
    c = router.consume("blobs", prefetch=1)
    c.recv(timeout=5).ack()
    assert q.ring.nbytes == 12 * (256 << 10)                  # 4 left the ring, not 16
    assert q.stats()["depth"] == 15
    held = c.recv(timeout=5)                                  # unacked: still in memory
    assert held.size == 256 << 10
    stats = q.stats()
    assert (stats["bytes"], stats["unacked_bytes"]) == (14 * (256 << 10), 256 << 10)
    held.nack()                                               # back to the queue, first
    stats = q.stats()
    assert (stats["bytes"], stats["unacked_bytes"]) == (15 * (256 << 10), 0)


def test_unknown_queue_lookup(router):
    with pytest.raises(errors.NotFound):
        router.queue("missing")


def test_try_send_many_takes_what_fits_and_never_waits(router):
    router.declare_queue("full", capacity=4)                 # block policy
    assert router.try_send_many("full", [b"%d" % i for i in range(6)]) == 4
    assert router.try_send_many("full", [b"x"]) == 0
    router.declare_queue("lossy", capacity=4, overflow="drop_newest")
    assert router.try_send_many("lossy", [b"%d" % i for i in range(6)]) == 6   # 2 dropped
    c = router.consume("full")
    assert [c.recv(timeout=0).payload for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    c = router.consume("lossy")
    assert [c.recv(timeout=0).payload for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    assert router.try_send_many("auto", [b"a"]) == 1          # declared on first use
    assert router.consume("auto").recv(timeout=0).payload == b"a"
    router.close()
    with pytest.raises(errors.Closed):   # as send_many: a closed router takes nothing
        router.try_send_many("full", [b"x"])


def test_a_queue_held_across_its_routers_close_takes_nothing(router):
    """``Router.send`` refused a closed router, but a ``Queue`` declared
    before the close took ``put`` and ``put_many`` silently: the messages
    sat where no consumer can reach them any more (the broker's SENDs to a
    queue that exists go this way). A closed router's queues take nothing."""
    q = router.declare_queue("jobs")
    router.close()
    with pytest.raises(errors.Closed):
        q.put(b"a", None, 0)
    with pytest.raises(errors.Closed):
        q.put_many([b"b"], None, 0)
    with pytest.raises(errors.Closed):
        q.try_put_many([b"c"], None)
    assert q.depth == 0


@pytest.mark.parametrize("many", [False, True], ids=["send", "send_many"])
def test_a_send_waiting_for_room_in_a_queue_gets_closed_with_its_router(router, many):
    """A queue's ring is not closed with its router (its consumers are):
    a send waiting for room waited for good, as nobody drains it any more."""
    router.declare_queue("full", capacity=1)
    router.send("full", b"a")
    result = []

    def sender():
        try:
            if many:
                router.send_many("full", [b"b"], timeout=None)
            else:
                router.send("full", b"b", timeout=None)
        except errors.RingcastError as exc:
            result.append(exc)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not router._space._sleepers and time.monotonic() < deadline:
        time.sleep(0.001)   # until the sender waits for room
    router.close()
    t.join(10)
    assert not t.is_alive() and isinstance(result[0], errors.Closed), result


def test_ack_many_acks_a_run_and_reports_the_ones_it_cannot(router):
    router.declare_queue("jobs")
    for i in range(5):
        router.send("jobs", b"%d" % i)
    c = router.consume("jobs")
    msgs = c.recv_many(5)
    msgs[1].ack()                                    # already settled
    failed = c.ack_many(msgs)
    assert len(failed) == 1 and isinstance(failed[0], errors.AckError)
    stats = router.stats()["queues"]["jobs"]
    assert (stats["acked"], stats["unacked"], stats["depth"]) == (5, 0, 0)


def test_queues_take_what_publish_takes_and_refuse_the_rest(router):
    """A ring carries any object, but a queue's messages may go to disk or
    over the wire: it takes bytes-like payloads, as publish does, and a batch
    with one bad payload is refused whole."""
    c = router.consume("jobs")
    with pytest.raises(errors.WrongType, match="not object"):
        router.send("jobs", object())
    with pytest.raises(errors.WrongType, match="not str"):
        router.send_many("jobs", [b"a", "b", b"c"])
    with pytest.raises(errors.WrongType):
        router.send("jobs", b"x", {"k": 1})
    router.send("jobs", bytearray(b"ok"))
    router.send_many("jobs", [memoryview(b"m1"), b"m2"])
    assert [bytes(m.payload) for m in c.recv_many(10)] == [b"ok", b"m1", b"m2"]


@pytest.mark.parametrize("prefetch", [-1, "4", 1.5, None])
def test_consume_refuses_a_prefetch_that_is_not_a_count(router, prefetch):
    with pytest.raises(errors.LimitExceeded, match="prefetch"):
        router.consume("jobs", prefetch=prefetch)
    assert "jobs" not in router.stats()["queues"]   # a refused call declares nothing


def _between_check_and_take(queue, action):
    """Run ``action(consumer)`` once, where another thread could: after
    ``Consumer`` checked it is open and has room, before the queue hands it
    messages under its lock."""
    real = queue._take

    def take(consumer, limit):
        queue._take = real
        action(consumer)
        return real(consumer, limit)

    queue._take = take


def test_a_consumer_closed_by_another_thread_as_it_takes_gets_nothing(router):
    """``close()`` from another thread, landing after ``recv`` checked the
    consumer was open: the take used to hand messages to the closed
    consumer, after it had given back what it held. They were in no
    consumer's count (``unacked`` 0, ``depth`` 0) and nothing would ever
    redeliver them."""
    q = router.declare_queue("jobs")
    consumer, other = router.consume("jobs"), router.consume("jobs")
    router.send_many("jobs", [b"0", b"1"])
    _between_check_and_take(q, lambda c: c.close())
    with pytest.raises(errors.Closed):
        consumer.recv_many(2)
    assert (q.depth, q.unacked) == (2, 0)
    assert [m.payload for m in other.recv_many(2)] == [b"0", b"1"]


def test_two_threads_taking_from_one_consumer_stay_within_its_prefetch(router):
    """Both threads see room for one; the second must not take a second."""
    q = router.declare_queue("jobs")
    consumer = router.consume("jobs", prefetch=1)
    router.send_many("jobs", [b"0", b"1"])
    _between_check_and_take(q, lambda c: c.recv_nowait())
    assert consumer.recv_many(1) == []
    assert (consumer.unacked, q.depth) == (1, 1)
