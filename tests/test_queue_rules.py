"""Queue delivery rules: max_deliver, TTL, ack deadlines, de-duplication."""

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
    with pytest.raises(TypeError):
        router.declare_queue("q", colour="blue")
