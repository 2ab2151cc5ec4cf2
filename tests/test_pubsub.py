"""Embedded pub/sub through ringcast.Router: delivery, fan-out, policies, threads."""

import threading
import time

import pytest

import ringcast
from ringcast import errors


@pytest.fixture
def router():
    with ringcast.Router() as r:
        yield r


def test_fan_out_to_every_matching_subscription(router):
    shipping = router.subscribe("orders.placed")
    billing = router.subscribe("orders.*")
    audit = router.subscribe(">")
    other = router.subscribe("users.*")
    assert router.publish("orders.placed", b"o-1") == 3
    for sub in (shipping, billing, audit):
        msg = sub.recv(timeout=1)
        assert (msg.subject, msg.payload, msg.seq) == ("orders.placed", b"o-1", 1)
    assert other.pending == 0
    assert router.stats()["delivered"] == 3


def test_payload_is_delivered_by_reference_and_headers_travel(router):
    sub1, sub2 = router.subscribe("a.b"), router.subscribe("a.>")
    payload = bytearray(b"zero-copy")
    router.publish("a.b", payload, {"trace": "t1"})
    m1, m2 = sub1.recv(timeout=1), sub2.recv(timeout=1)
    assert m1.payload is payload and m2.payload is payload
    assert m1.headers == {"trace": "t1"}


def test_recv_times_out_and_stays_usable(router):
    sub = router.subscribe("x")
    with pytest.raises(errors.Timeout):
        sub.recv(timeout=0.01)
    with pytest.raises(errors.WouldBlock):
        sub.recv_nowait()
    router.publish("x", b"1")
    assert sub.recv(timeout=1).payload == b"1"


def test_recv_wakes_when_another_thread_publishes(router):
    sub = router.subscribe("wake.up")
    started = threading.Event()

    def publisher():
        started.wait()
        router.publish("wake.up", b"hi")

    t = threading.Thread(target=publisher)
    t.start()
    started.set()
    assert sub.recv(timeout=5).payload == b"hi"
    t.join()


def test_recv_many_and_payload_batches(router):
    sub = router.subscribe("b")
    assert router.publish_many("b", [b"%d" % i for i in range(100)]) == 100
    first = sub.recv_many(10)
    assert [m.payload for m in first] == [b"%d" % i for i in range(10)]
    assert [m.seq for m in first] == list(range(1, 11))
    rest = sub.recv_payloads()
    assert rest == [b"%d" % i for i in range(10, 100)]
    assert sub.recv_many(10, timeout=0) == []


def test_iteration_ends_when_subscription_closes(router):
    sub = router.subscribe("it")
    router.publish_many("it", [b"1", b"2"])
    got = []
    for msg in sub:
        got.append(msg.payload)
        if len(got) == 2:
            sub.close()
    assert got == [b"1", b"2"]
    with pytest.raises(errors.Closed):
        sub.recv(timeout=0)
    assert router.publish("it", b"3") == 0


def test_close_wakes_a_blocked_receiver(router):
    sub = router.subscribe("c")
    result = []

    def receiver():
        try:
            sub.recv(timeout=10)
        except errors.Closed as exc:
            result.append(exc)

    t = threading.Thread(target=receiver)
    t.start()
    deadline = time.monotonic() + 5
    while not sub._signal._cond._waiters and time.monotonic() < deadline:
        time.sleep(0.001)  # poll until the receiver is really parked in recv()
    sub.close()
    t.join(5)
    assert not t.is_alive() and isinstance(result[0], errors.Closed)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drop_policies_count_drops_and_show_gaps(router, policy):
    sub = router.subscribe("d", capacity=4, overflow=policy)
    for i in range(10):
        router.publish("d", b"%d" % i)
    assert sub.dropped == 6
    msgs = sub.recv_many(10)
    if policy == "drop_oldest":
        assert [m.payload for m in msgs] == [b"6", b"7", b"8", b"9"]
        assert [m.seq for m in msgs] == [7, 8, 9, 10]
    else:
        assert [m.payload for m in msgs] == [b"0", b"1", b"2", b"3"]
        router.publish("d", b"10")
        assert sub.recv(timeout=1).seq == 11  # the gap shows 6 lost messages
    assert router.stats()["subscriptions"][0]["dropped"] == 6


def test_block_policy_never_drops_and_never_half_delivers(router):
    slow = router.subscribe("e", capacity=2)
    fast = router.subscribe("e", capacity=1024)
    assert router.publish("e", b"1") == 2
    assert router.publish("e", b"2") == 2
    with pytest.raises(errors.WouldBlock):
        router.publish("e", b"3", timeout=0)
    assert fast.pending == 2  # the refused message reached nobody
    assert slow.dropped == 0


def test_blocked_publisher_resumes_when_consumer_frees_room(router):
    sub = router.subscribe("f", capacity=8)
    total = 1000

    def publisher():
        for i in range(total):
            router.publish("f", b"%d" % i, timeout=10)

    t = threading.Thread(target=publisher)
    t.start()
    got = []
    while len(got) < total:
        got.extend(m.payload for m in sub.recv_many(64, timeout=5))
    t.join(5)
    assert got == [b"%d" % i for i in range(total)]
    assert sub.dropped == 0


def test_publish_many_waits_for_room_under_block(router):
    sub = router.subscribe("g", capacity=16)
    payloads = [b"%d" % i for i in range(200)]
    done = []
    t = threading.Thread(target=lambda: done.append(router.publish_many("g", payloads, timeout=10)))
    t.start()
    got = []
    while len(got) < 200:
        got.extend(sub.recv_payloads())
        if len(got) < 200:
            got.append(sub.recv(timeout=5).payload)
    t.join(5)
    assert done == [200] and got == payloads


def test_byte_bound_blocks_the_publisher_until_bytes_are_read(router):
    sub = router.subscribe("big", capacity=1024, max_bytes=64 << 10)
    chunk = 16 << 10
    for i in range(4):
        assert router.publish("big", bytes([i]) * chunk, timeout=0) == 1
    with pytest.raises(errors.WouldBlock):
        router.publish("big", b"more", timeout=0)           # 64 KiB held: full
    stats = router.stats()["subscriptions"][0]
    assert (stats["bytes"], stats["max_bytes"], stats["pending"]) == (64 << 10, 64 << 10, 4)
    total = 40
    t = threading.Thread(target=lambda: [router.publish("big", bytes([i]) * chunk, timeout=10)
                                         for i in range(4, total)])
    t.start()
    got = []
    while len(got) < total:
        got.extend(sub.recv_payloads())
        if len(got) < total:
            got.append(sub.recv(timeout=5).payload)
        assert sub.ring.nbytes <= (64 << 10) + chunk
    t.join(5)
    assert got == [bytes([i]) * chunk for i in range(total)] and sub.dropped == 0


def test_byte_bound_with_drop_oldest_keeps_the_newest_bytes(router):
    sub = router.subscribe("big", capacity=1024, overflow="drop_oldest", max_bytes=1 << 20)
    for i in range(100):
        router.publish("big", b"%03d" % i + bytes(64 << 10))
    msgs = sub.recv_many(1000)
    assert len(msgs) == 16 and sub.dropped == 84              # 16 x 64 KiB = 1 MiB
    assert [m.payload[:3] for m in msgs] == [b"%03d" % i for i in range(84, 100)]
    assert msgs[0].seq == 85


def test_concurrent_publishers_lose_nothing(router):
    sub = router.subscribe("t.*", capacity=1 << 16)
    threads, per_thread = 4, 5000

    def publisher(n):
        for i in range(per_thread):
            router.publish(f"t.{n}", b"%d" % i)

    workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    by_thread = {}
    for msg in sub.recv_many(threads * per_thread + 1):
        by_thread.setdefault(msg.subject, []).append(int(msg.payload))
    assert by_thread == {
        f"t.{n}": list(range(per_thread)) for n in range(threads)
    }
    assert sub.dropped == 0


def test_callback_runs_in_order_and_survives_errors(router):
    seen = []

    def callback(msg):
        seen.append(msg.payload)
        if msg.payload == b"2":
            raise RuntimeError("boom")

    sub = router.subscribe("cb", callback=callback)
    for i in range(5):
        router.publish("cb", b"%d" % i)
    assert seen == [b"0", b"1", b"2", b"3", b"4"]
    assert sub.callback_errors == 1


def test_subscribe_unsubscribe_and_publish_from_inside_a_callback(router):
    log = []
    late = []

    def callback(msg):
        log.append(("a", msg.payload))
        if msg.payload == b"first":
            late.append(router.subscribe("cb.x"))
            router.publish("cb.x", b"second")  # delivered after this callback returns
            log.append(("a", "after-publish"))
            sub_a.close()

    sub_a = router.subscribe("cb.*", callback=callback)
    router.publish("cb.x", b"first")
    assert log == [("a", b"first"), ("a", "after-publish")]
    assert late[0].recv(timeout=1).payload == b"second"
    assert router.publish("cb.x", b"third") == 1  # only the new subscription


def test_invalid_input_raises_typed_errors(router):
    with pytest.raises(errors.InvalidSubject):
        router.publish("orders.*", b"x")
    with pytest.raises(errors.InvalidSubject):
        router.subscribe("a..b")
    with pytest.raises(errors.WrongType):
        router.publish("a", "not bytes")
    with pytest.raises(errors.WrongType):
        router.publish("a", b"x", headers={"k": 1})
    with pytest.raises(errors.LimitExceeded):
        router.subscribe("a", overflow="sometimes")
    with pytest.raises(errors.LimitExceeded):
        router.subscribe("a", capacity=0)
    assert isinstance(errors.InvalidSubject("x"), ValueError)


def test_closed_router_refuses_new_work():
    router = ringcast.Router()
    sub = router.subscribe("z")
    router.close()
    assert sub.closed
    with pytest.raises(errors.Closed):
        router.subscribe("z")
