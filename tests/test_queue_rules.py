"""Queue delivery rules: max_deliver, TTL, ack deadlines, de-duplication."""

import threading
import time

import pytest

import ringcast
from ringcast import errors


@pytest.fixture
def router():
    with ringcast.Router() as r:
        yield r


def wait_for(predicate, timeout=5.0):
    """Poll a condition the reaper thread makes true; fail loudly if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def test_max_deliver_dead_letters_a_poison_message(router):
    router.declare_queue("jobs", max_deliver=3, dead_letter="jobs.dlq")
    consumer = router.consume("jobs")
    router.send("jobs", b"poison")
    counts = []
    for _ in range(3):
        msg = consumer.recv(timeout=1)
        counts.append(msg.delivery_count)
        msg.nack()
    assert counts == [1, 2, 3]
    with pytest.raises(errors.Timeout):
        consumer.recv(timeout=0.01)  # not a fourth time
    dead = router.consume("jobs.dlq").recv(timeout=1)
    assert dead.payload == b"poison"
    assert dead.headers["x-dead-letter-reason"] == "max_deliver"
    assert dead.headers["x-dead-letter-from"] == "jobs"
    assert dead.headers["x-delivery-count"] == "3"
    assert router.queue("jobs").stats()["dead_lettered"] == 1


def test_queue_ttl_expires_waiting_messages_into_the_dead_letter_queue(router):
    router.declare_queue("fresh", ttl=0.05, dead_letter="fresh.dlq")
    router.send("fresh", b"old")
    wait_for(lambda: router.queue("fresh").stats()["expired"] == 1)  # the reaper acted
    assert router.queue("fresh").depth == 0
    dead = router.consume("fresh.dlq").recv(timeout=1)
    assert (dead.payload, dead.headers["x-dead-letter-reason"]) == (b"old", "expired")
    router.declare_queue("roomy", ttl=60, dead_letter="fresh.dlq")
    router.send("roomy", b"new")
    assert router.consume("roomy").recv(timeout=1).payload == b"new"  # within its TTL


def test_per_message_ttl_header_and_drop_on_expire(router):
    router.declare_queue("q", on_expire="drop", dead_letter="q.dlq")
    router.send("q", b"short", {"ttl-ms": "1"})
    router.send("q", b"long", {"ttl-ms": "60000"})
    assert len(router.queue("q").ring) == 2  # both wait in the intake ring
    time.sleep(0.01)  # let the 1 ms TTL run out: time itself is under test
    msg = router.consume("q").recv(timeout=1)
    assert msg.payload == b"long"
    stats = router.queue("q").stats()
    assert stats["expired"] == 1 and stats["dead_lettered"] == 0
    assert "q.dlq" not in router.stats()["queues"]  # dropped, not dead-lettered


def test_missed_ack_deadline_moves_the_message_to_another_consumer(router):
    router.declare_queue("work", ack_deadline=0.05)
    slow, fast = router.consume("work"), router.consume("work")
    router.send("work", b"job")
    held = slow.recv(timeout=1)
    again = fast.recv(timeout=5)  # arrives once the reaper takes it back from `slow`
    assert again.payload == b"job" and again.redelivered and again.delivery_count == 2
    with pytest.raises(errors.AckError, match="taken back"):
        held.ack()  # a late ack is an error, never a second success
    again.ack()
    stats = router.queue("work").stats()
    assert stats["ack_timeouts"] == 1 and stats["late_acks"] == 1 and stats["acked"] == 1


def test_duplicate_message_ids_land_once(router):
    assert router.send("orders", b"o1", {"msg-id": "A"}) is True
    assert router.send("orders", b"o1", {"msg-id": "A"}) is False  # a retried publish
    assert router.send("orders", b"o2", {"msg-id": "B"}) is True
    consumer = router.consume("orders")
    got = [consumer.recv(timeout=1).payload for _ in range(2)]
    assert got == [b"o1", b"o2"]
    with pytest.raises(errors.Timeout):
        consumer.recv(timeout=0.01)
    assert router.queue("orders").stats()["duplicates"] == 1


def test_dedup_window_forgets_old_ids(router):
    router.declare_queue("q", dedup_window=0.01)
    assert router.send("q", b"1", {"msg-id": "X"})
    time.sleep(0.02)  # the window itself is under test
    assert router.send("q", b"2", {"msg-id": "X"})


def test_bad_queue_options_are_rejected(router):
    with pytest.raises(errors.LimitExceeded):
        router.declare_queue("q", dead_letter="q")
    with pytest.raises(errors.LimitExceeded):
        router.declare_queue("q", ttl=0)
    with pytest.raises(errors.LimitExceeded):
        router.declare_queue("q", on_expire="shrug")
    with pytest.raises(errors.LimitExceeded):
        router.declare_queue("q", durable=True)  # no data_dir
    with pytest.raises(errors.LimitExceeded):   # as a client refuses it, not a TypeError
        router.declare_queue("q", colour="blue")


# -- dead-lettering happens outside the source queue's lock ---------------------------------

@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_queues_dead_lettering_into_each_other_from_two_threads_do_not_deadlock(
        tmp_path, durable):
    """A's dead-letter queue is B and B's is A; one thread consumes each, and
    both dead-letter at the same moment. Each dead-letter send takes the
    receiving queue's lock (durable: its log hook; msg-id: de-duplication), so
    sending while still holding one's own lock deadlocks the two threads."""
    router = ringcast.Router(data_dir=str(tmp_path))
    b = router.declare_queue("b", durable=durable, max_deliver=1)
    router.declare_queue("a", durable=durable, max_deliver=1, dead_letter="b")
    # declare_queue cannot close the cycle (a durable queue's dead-letter queue
    # is declared along with it, and options are fixed): wire B -> A here
    b.dead_letter = b.options.dead_letter = "a"
    consumers = {}
    for name in ("a", "b"):
        router.send(name, b"from-" + name.encode(), {"msg-id": name + "-1"})
        consumers[name] = router.consume(name)
        consumers[name].recv(timeout=1).nack()  # back, redelivered: over max_deliver next
    # Both threads reach their dead-letter send before either may go on: the
    # interleaving that deadlocks when the sends run under the queues' locks.
    both_dead_lettering = threading.Barrier(2, timeout=5)
    real_send = router.send

    def send(queue, payload, headers=None, **kw):
        both_dead_lettering.wait()
        return real_send(queue, payload, headers, **kw)

    router.send = send
    errors_seen = []

    def consume(name):
        try:
            assert consumers[name].recv_many(10) == []  # its only message was dead-lettered
        except BaseException as exc:  # reported below
            errors_seen.append(exc)

    threads = [threading.Thread(target=consume, args=(n,), daemon=True) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "dead-lettering threads deadlocked"
    assert errors_seen == []
    del router.send
    # every message accounted for: each is now in the other queue, once
    for name, other in (("a", "b"), ("b", "a")):
        q = router.queue(name)
        assert q.counters["dead_lettered"] == 1 and q.counters["dead_letter_failed"] == 0
        got = consumers[name].recv_many(10)
        assert [(m.payload, m.headers["x-dead-letter-from"],
                 m.headers["x-dead-letter-reason"]) for m in got] == [
            (b"from-" + other.encode(), other, "max_deliver")]
        got[0].ack()
        assert q.depth == 0 and q.unacked == 0
    router.close()
    if durable:  # the dead-lettered originals are settled; their copies acked
        with ringcast.Router(data_dir=str(tmp_path)) as again:
            assert again.queue("a").depth == 0 and again.queue("b").depth == 0


# -- capacity and overflow bound durable queues exactly as in-memory ones --------------------

def _offer(router, via, payload, timeout=None):
    """One message into queue "q" by ``via``: what the caller observes."""
    try:
        if via == "send":
            router.send("q", payload, timeout=timeout)
        elif via == "publish":
            router.publish("in.q", payload, timeout=timeout)
        else:
            router.send_many("q", [payload], timeout=timeout)
    except errors.WouldBlock:
        return "WouldBlock"
    return "ok"


@pytest.mark.parametrize("via", ["send", "publish", "send_many"])
@pytest.mark.parametrize("overflow", ["block", "drop_oldest", "drop_newest"])
@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_capacity_and_overflow_bound_durable_and_memory_queues_alike(
        tmp_path, durable, overflow, via):
    expected_kept = {"block": [b"0", b"1", b"2", b"3"], "drop_newest": [b"0", b"1", b"2", b"3"],
                     "drop_oldest": [b"2", b"3", b"4", b"5"]}[overflow]
    with ringcast.Router(data_dir=str(tmp_path)) as router:
        q = router.declare_queue("q", bind="in.q", capacity=4, overflow=overflow,
                                 durable=durable)
        seen = [_offer(router, via, b"%d" % i, timeout=0) for i in range(6)]
        assert seen == (["ok"] * 4 + ["WouldBlock"] * 2 if overflow == "block" else ["ok"] * 6)
        if overflow == "block":
            assert router.try_publish("in.q", b"x") == -1  # all-or-nothing, as in memory
        stats = q.stats()
        assert (stats["depth"], stats["dropped"]) == (4, 0 if overflow == "block" else 2)
    if durable:  # what was dropped is gone for good; what was kept is all there
        with ringcast.Router(data_dir=str(tmp_path)) as router:
            assert router.queue("q").depth == 4
            got = router.consume("q").recv_many(10)
            assert [m.payload for m in got] == expected_kept
        return
    # in memory: a fresh router, to compare the rest of the contract below
    with ringcast.Router(data_dir=str(tmp_path / "m")) as router:
        router.declare_queue("q", bind="in.q", capacity=4, overflow=overflow)
        for i in range(6):
            _offer(router, via, b"%d" % i, timeout=0)
        assert [m.payload for m in router.consume("q").recv_many(10)] == expected_kept


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_a_full_block_queue_takes_more_once_consumed(tmp_path, durable):
    """Room appears as consumers take messages off the ring, the same for both
    kinds; a blocked sender is woken and its message lands after the others."""
    with ringcast.Router(data_dir=str(tmp_path)) as router:
        q = router.declare_queue("q", capacity=2, durable=durable)
        router.send("q", b"1")
        router.send("q", b"2")
        with pytest.raises(errors.WouldBlock):
            router.send("q", b"3", timeout=0)
        landed = threading.Event()
        sender = threading.Thread(
            target=lambda: (router.send("q", b"3", timeout=5), landed.set()), daemon=True)
        sender.start()
        c = router.consume("q")
        got = [c.recv(timeout=5) for _ in range(3)]
        sender.join(5)
        assert landed.is_set() and [m.payload for m in got] == [b"1", b"2", b"3"]
        for m in got:
            m.ack()
        assert q.stats()["dropped"] == 0 and q.depth == 0


# -- de-duplication applies to publishes on bound subjects too --------------------------------

@pytest.mark.parametrize("durable", [False, True], ids=["memory", "durable"])
def test_duplicate_ids_published_through_a_binding_land_once(tmp_path, durable):
    with ringcast.Router(data_dir=str(tmp_path)) as router:
        q = router.declare_queue("orders", bind="orders.>", durable=durable)
        audit = router.subscribe("orders.>")  # pub/sub is not de-duplicated
        assert router.publish("orders.placed", b"o1", {"msg-id": "A"}) == 2
        router.publish("orders.placed", b"o1", {"msg-id": "A"})  # a retried publish
        router.publish_many("orders.placed", [b"o2", b"o2"], {"msg-id": "B"})
        # send and bound publishes share one window, both ways round
        assert router.send("orders", b"o1", {"msg-id": "A"}) is False
        assert router.send("orders", b"o3", {"msg-id": "C"}) is True
        router.publish("orders.placed", b"o3", {"msg-id": "C"})
        router.publish("orders.placed", b"plain")  # no id: never a duplicate
        router.publish("orders.placed", b"plain")
        assert len(audit.recv_many(100)) == 7
        assert q.depth == 5  # duplicates take ring slots until taken, but are not counted
        got = router.consume("orders").recv_many(100)
        assert [m.payload for m in got] == [b"o1", b"o2", b"o3", b"plain", b"plain"]
        assert q.stats()["duplicates"] == 4
        for m in got:
            m.ack()
    if durable:  # duplicates were never logged: nothing comes back
        with ringcast.Router(data_dir=str(tmp_path)) as router:
            assert router.queue("orders").depth == 0


def test_a_send_that_did_not_land_does_not_use_up_its_id(router):
    """A send refused by a full queue, or dropped by drop_newest, was not
    accepted: its retry with the same msg-id must land."""
    router.declare_queue("full", capacity=1)
    router.send("full", b"first")
    with pytest.raises(errors.WouldBlock):
        router.send("full", b"retry-me", {"msg-id": "R"}, timeout=0)
    router.consume("full").recv(timeout=1).ack()
    assert router.send("full", b"retry-me", {"msg-id": "R"}) is True
    router.declare_queue("lossy", capacity=1, overflow="drop_newest")
    router.send("lossy", b"first")
    assert router.send("lossy", b"dropped", {"msg-id": "D"}) is True  # accepted, then dropped
    router.consume("lossy").recv(timeout=1).ack()
    assert router.send("lossy", b"again", {"msg-id": "D"}) is True
    assert router.queue("lossy").stats()["duplicates"] == 0


@pytest.mark.parametrize("dead_letter", [None, "jobs.dlq"])
def test_every_message_leaves_a_queue_counted_max_deliver_too(router, dead_letter):
    """Each message a queue takes ends up acked, rejected, expired or over
    max_deliver, or is still waiting or unacked: the counters add up to what
    was sent. A message over max_deliver used to be dropped uncounted when
    the queue had no dead-letter queue (and was visible only as
    ``dead_lettered`` when it had one)."""
    router.declare_queue("jobs", max_deliver=2, dead_letter=dead_letter)
    consumer = router.consume("jobs")
    router.send_many("jobs", [b"poison", b"fine", b"bad", b"waiting", b"held"])
    for count in (1, 2):
        msg = consumer.recv(timeout=1)
        assert (msg.payload, msg.delivery_count) == (b"poison", count)
        msg.nack()
    fine, bad = consumer.recv_many(2)   # poison is not delivered a third time
    assert (fine.payload, bad.payload) == (b"fine", b"bad")
    fine.ack()
    bad.nack(requeue=False)
    stats = router.queue("jobs").stats()
    assert (stats["acked"], stats["rejected"], stats["expired"], stats["max_delivered"],
            stats["depth"], stats["unacked"]) == (1, 1, 0, 1, 2, 0), stats
    consumer.recv(timeout=1)   # "waiting" is now held
    stats = router.queue("jobs").stats()
    assert 5 == sum(stats[k] for k in ("acked", "rejected", "expired", "max_delivered",
                                        "depth", "unacked")), stats
    # the dead-letter queue takes what was rejected or over max_deliver
    assert stats["dead_lettered"] == (2 if dead_letter else 0)
