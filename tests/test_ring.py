"""The ring buffer of the core (``Ring``) and the ``Message`` it delivers.

Every test runs against the compiled ring and its pure-Python twin (the
``impl`` fixture in conftest.py); the reference-count tests are about the
native ring's owned slot references and run on ``c`` only.
"""

import collections
import gc
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringcast.errors import LimitExceeded, RingcastError

MAX_CAPACITY = 1 << 26
POLICIES = ("block", "drop_oldest", "drop_newest")


def subject(text="orders.placed"):
    """A fresh (not interned) str, so reference counts are our own."""
    return "".join(list(text))


def fill(ring, n, start=0):
    """Put payloads start..start+n-1; returns the payload objects."""
    payloads = [b"m%d" % i for i in range(start, start + n)]
    for p in payloads:
        ring.put("s", p)
    return payloads


# -- construction -----------------------------------------------------------

@pytest.mark.parametrize(
    ("requested", "capacity"),
    [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (1000, 1024), (1024, 1024),
     (1025, 2048)],
)
def test_capacity_rounds_up_to_a_power_of_two(impl, requested, capacity):
    ring = impl.Ring(requested, "block")
    assert ring.capacity == capacity
    assert ring.free == capacity and len(ring) == 0
    # the rounded capacity is the real one: exactly that many fit
    for i in range(capacity):
        assert ring.put("s", b"x") == 1, i
    assert ring.put("s", b"x") == -1
    assert len(ring) == capacity and ring.free == 0


def test_default_ring(impl):
    ring = impl.Ring()
    assert ring.capacity == 8192
    assert ring.policy_name == "block"
    assert (ring.dropped, ring.offered, ring.last_seq, ring.closed) == (0, 0, 0, False)


@pytest.mark.parametrize("capacity", [0, -1, -8, MAX_CAPACITY + 1, 1 << 40, 2.0, "4", None,
                                      True])
def test_capacity_out_of_bounds_or_not_int(impl, capacity):
    with pytest.raises(LimitExceeded, match="capacity"):
        impl.Ring(capacity, "block")


@pytest.mark.parametrize("policy", ["", "BLOCK", "drop", "newest", 3, -1, None, 1.5])
def test_unknown_policy(impl, policy):
    with pytest.raises(LimitExceeded, match="policy"):
        impl.Ring(4, policy)


@pytest.mark.parametrize("name", POLICIES)
def test_policy_by_name_and_code(impl, name):
    code = impl.policy_code(name)
    assert code == POLICIES.index(name)
    assert impl.Ring(4, name).policy == code
    assert impl.Ring(4, code).policy_name == name


def test_policy_code_rejects_unknown_names(impl):
    with pytest.raises(LimitExceeded):
        impl.policy_code("lossy")
    with pytest.raises(LimitExceeded):
        impl.policy_code(["block"])  # unhashable: still the documented error


# -- order and sequence numbers --------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_fifo_order_identity_and_sequence_numbers(impl, policy):
    ring = impl.Ring(8, policy)
    payloads = [bytearray(b"p%d" % i) for i in range(5)]
    headers = {"k": "v"}
    for i, p in enumerate(payloads):
        assert ring.put("a.b", p, headers if i == 2 else None) == 1
        assert ring.last_seq == i + 1
    assert len(ring) == 5 and ring.free == 3
    got = [ring.pop() for _ in range(5)]
    assert [m.seq for m in got] == [1, 2, 3, 4, 5]
    assert all(m.payload is p for m, p in zip(got, payloads))
    assert [m.subject for m in got] == ["a.b"] * 5
    assert got[2].headers is headers
    assert [m.headers for i, m in enumerate(got) if i != 2] == [None] * 4
    assert all(m.redelivered is False and m.delivery_count == 1 for m in got)
    assert ring.pop() is None
    assert len(ring) == 0 and ring.free == 8


def test_positions_wrap_around_many_times(impl):
    ring = impl.Ring(4, "block")
    seqs = []
    for i in range(50):
        assert ring.put("s", b"%d" % i) == 1
        if i % 3 == 2:
            seqs += [m.seq for m in ring.pop_many()]
    seqs += [m.seq for m in ring.pop_many()]
    assert seqs == list(range(1, 51))


# -- overflow policies --------------------------------------------------------

def test_block_refuses_when_full_and_drops_nothing(impl):
    ring = impl.Ring(4, "block")
    fill(ring, 4)
    assert ring.put("s", b"late") == -1
    assert ring.put("s", b"later") == -1
    assert ring.dropped == 0
    assert ring.offered == 4          # a refused message was never offered
    assert ring.last_seq == 4         # ... and took no sequence number
    assert len(ring) == 4
    assert ring.pop().payload == b"m0"
    assert ring.put("s", b"now") == 1
    assert [m.seq for m in ring.pop_many()] == [2, 3, 4, 5]  # no gap under block
    assert ring.dropped == 0


def test_drop_oldest_evicts_and_the_consumer_sees_the_gap(impl):
    ring = impl.Ring(4, "drop_oldest")
    fill(ring, 4)
    first = ring.pop()
    assert first.seq == 1
    for i in range(4, 7):             # 3 more on 3 waiting: one fits, two evict
        assert ring.put("s", b"m%d" % i) == 1
    assert ring.dropped == 2
    assert ring.offered == 7
    assert len(ring) == 4
    rest = ring.pop_many()
    assert [m.seq for m in rest] == [4, 5, 6, 7]
    assert [m.payload for m in rest] == [b"m3", b"m4", b"m5", b"m6"]
    # the gap the consumer sees is exactly what the counter says was dropped
    assert rest[0].seq - first.seq - 1 == ring.dropped


def test_drop_newest_consumes_a_sequence_number(impl):
    ring = impl.Ring(4, "drop_newest")
    fill(ring, 4)
    assert ring.put("s", b"lost-1") == 0
    assert ring.put("s", b"lost-2") == 0
    assert ring.dropped == 2
    assert ring.offered == 6
    assert ring.last_seq == 6
    kept = ring.pop_many()
    assert [m.payload for m in kept] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.seq for m in kept] == [1, 2, 3, 4]
    assert ring.put("s", b"after") == 1
    after = ring.pop()
    assert after.seq == 7
    assert after.seq - kept[-1].seq - 1 == ring.dropped


def test_capacity_one_ring(impl):
    ring = impl.Ring(1, "drop_oldest")
    for i in range(5):
        assert ring.put("s", i) == 1
    assert ring.dropped == 4
    m = ring.pop()
    assert (m.seq, m.payload) == (5, 4)


# -- batches -----------------------------------------------------------------

def test_put_many_under_block_stops_at_the_first_refusal(impl):
    ring = impl.Ring(4, "block")
    fill(ring, 1)
    assert ring.put_many("s", [b"a", b"b", b"c", b"d", b"e"]) == 3
    assert ring.dropped == 0 and len(ring) == 4
    assert [m.payload for m in ring.pop_many()] == [b"m0", b"a", b"b", b"c"]
    assert ring.put_many("s", [b"x"] * 9) == 4
    assert ring.put_many("s", [b"y"]) == 0
    assert ring.put_many("s", []) == 0


def test_put_many_under_drop_policies_consumes_everything(impl):
    oldest, newest = impl.Ring(4, "drop_oldest"), impl.Ring(4, "drop_newest")
    batch = [b"p%d" % i for i in range(6)]
    assert oldest.put_many("s", batch) == 6
    assert newest.put_many("s", batch) == 6
    assert oldest.dropped == newest.dropped == 2
    assert oldest.pop_payloads() == batch[2:]
    assert newest.pop_payloads() == batch[:4]
    assert oldest.last_seq == newest.last_seq == 6


def test_put_many_takes_any_iterable_and_shares_headers(impl):
    ring = impl.Ring(8, "block")
    headers = {"h": "1"}
    assert ring.put_many("t", (b"%d" % i for i in range(3)), headers) == 3
    assert ring.put_many("t", (b"3", b"4")) == 2
    got = ring.pop_many()
    assert [(m.seq, m.payload) for m in got] == [(1, b"0"), (2, b"1"), (3, b"2"), (4, b"3"),
                                                 (5, b"4")]
    assert [m.headers is headers for m in got] == [True, True, True, False, False]


def test_pop_many_respects_max_count(impl):
    ring = impl.Ring(8, "block")
    fill(ring, 5)
    assert ring.pop_many(0) == []
    assert [m.seq for m in ring.pop_many(2)] == [1, 2]
    assert [m.seq for m in ring.pop_many(10)] == [3, 4, 5]
    assert ring.pop_many() == []
    assert ring.pop_many(3) == []


def test_pop_payloads_returns_the_objects_without_messages(impl):
    ring = impl.Ring(8, "block")
    payloads = fill(ring, 5)
    first = ring.pop_payloads(3)
    assert len(first) == 3 and all(a is b for a, b in zip(first, payloads))
    assert ring.pop_payloads(0) == []
    # the rest are still there, with their own sequence numbers
    assert [m.seq for m in ring.pop_many()] == [4, 5]
    assert ring.pop_payloads() == []


def test_clear_discards_unread_and_keeps_numbering(impl):
    ring = impl.Ring(8, "block")
    fill(ring, 3)
    assert ring.clear() == 3
    assert len(ring) == 0 and ring.pop() is None
    assert ring.clear() == 0
    ring.put("s", b"x")
    assert ring.pop().seq == 4
    assert ring.dropped == 0  # clearing is the consumer's choice, not a policy drop


# -- wake-up callbacks ------------------------------------------------------

class Calls:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


def test_arm_ready_fires_once_on_the_next_message(impl):
    ring = impl.Ring(4, "block")
    ready = Calls()
    assert ring.arm_ready(ready) is True
    assert ready.n == 0
    ring.put("s", b"1")
    assert ready.n == 1
    ring.put("s", b"2")
    assert ready.n == 1  # one-shot


def test_arm_ready_refuses_when_data_is_waiting(impl):
    ring = impl.Ring(4, "block")
    ring.put("s", b"1")
    ready = Calls()
    assert ring.arm_ready(ready) is False
    ring.pop()
    ring.put("s", b"2")
    assert ready.n == 0  # it was never armed


@pytest.mark.parametrize("batch", [False, True])
def test_arm_ready_fires_on_put_many(impl, batch):
    ring = impl.Ring(8, "block")
    ready = Calls()
    assert ring.arm_ready(ready)
    if batch:
        ring.put_many("s", [b"1", b"2", b"3"])
    else:
        ring.put("s", b"1")
    assert ready.n == 1


@pytest.mark.parametrize("how", ["pop", "pop_many", "pop_payloads", "clear"])
def test_arm_space_fires_once_when_room_appears(impl, how):
    ring = impl.Ring(2, "block")
    fill(ring, 2)
    space = Calls()
    assert ring.arm_space(space) is True
    assert ring.put("s", b"refused") == -1
    assert space.n == 0
    getattr(ring, how)()
    assert space.n == 1
    fill(ring, 2 - len(ring))
    ring.pop()
    assert space.n == 1  # one-shot


def test_arm_space_refuses_when_there_is_room(impl):
    ring = impl.Ring(2, "block")
    fill(ring, 1)
    space = Calls()
    assert ring.arm_space(space) is False
    ring.put("s", b"x")
    ring.pop()
    assert space.n == 0


def test_arm_space_not_fired_by_an_empty_pop(impl):
    ring = impl.Ring(1, "block")
    fill(ring, 1)
    space = Calls()
    assert ring.arm_space(space)
    assert ring.pop_many(0) == [] and ring.pop_payloads(0) == []
    assert space.n == 0


def test_disarm(impl):
    ring = impl.Ring(1, "block")
    ready, space = Calls(), Calls()
    assert ring.arm_ready(ready)
    ring.disarm()
    ring.put("s", b"x")
    assert ring.arm_space(space)
    ring.disarm()
    ring.pop()
    assert (ready.n, space.n) == (0, 0)


def test_close_wakes_armed_waiters_and_keeps_unread_messages(impl):
    empty, full = impl.Ring(2, "block"), impl.Ring(1, "block")
    fill(full, 1)
    ready, space = Calls(), Calls()
    assert empty.arm_ready(ready) and full.arm_space(space)
    empty.close()
    full.close()
    assert empty.closed is True and full.closed is True
    assert (ready.n, space.n) == (1, 1)
    assert full.pop().payload == b"m0"
    full.close()  # idempotent, nothing armed any more
    assert (ready.n, space.n) == (1, 1)


# -- byte bounds ----------------------------------------------------------------
# ``max_bytes`` bounds the payload bytes a ring holds, softly: a message is
# taken while the ring holds less than the bound, so it never holds more than
# the bound plus one message and never refuses a lone message.

def test_byte_bound_refuses_under_block_until_bytes_are_taken(impl):
    ring = impl.Ring(64, "block", max_bytes=100)
    for i in range(10):
        assert ring.put("s", b"%02d" % i * 5) == 1            # 10 bytes each
    assert (ring.nbytes, len(ring), ring.free) == (100, 10, 0)
    assert ring.put("s", b"x") == -1
    space = Calls()
    assert ring.arm_space(space) is True
    assert ring.pop().payload == b"00" * 5
    assert space.n == 1 and ring.nbytes == 90 and ring.free == 64 - 9
    assert ring.put("s", b"y" * 50) == 1                     # below the bound: taken
    assert ring.nbytes == 140 and ring.put("s", b"z") == -1
    assert ring.dropped == 0 and ring.offered == 11


def test_byte_bound_takes_a_lone_message_larger_than_itself(impl):
    ring = impl.Ring(8, "block", max_bytes=10)
    assert ring.put("s", b"x" * 1000) == 1
    assert ring.put("s", b"x") == -1
    assert ring.pop_payloads() == [b"x" * 1000] and ring.nbytes == 0


def test_drop_oldest_evicts_until_below_the_byte_bound(impl):
    ring = impl.Ring(64, "drop_oldest", max_bytes=100)
    for i in range(10):
        ring.put("s", bytes([i]) * 10)
    assert ring.put("s", b"b" * 60) == 1                     # evicts one, then fits
    assert (ring.nbytes, ring.dropped) == (150, 1)
    assert ring.put("s", b"c") == 1                          # evicts down to < 100 first
    assert ring.nbytes == 91 and ring.dropped == 7
    msgs = ring.pop_many()
    assert [m.payload for m in msgs] == [bytes([i]) * 10 for i in (7, 8, 9)] + [b"b" * 60, b"c"]
    assert [m.seq for m in msgs] == [8, 9, 10, 11, 12]       # the gap is the 7 dropped


def test_drop_newest_discards_once_the_byte_bound_is_reached(impl):
    ring = impl.Ring(64, "drop_newest", max_bytes=20)
    assert [ring.put("s", b"x" * 10) for _ in range(3)] == [1, 1, 0]
    assert (ring.nbytes, ring.dropped, ring.last_seq) == (20, 1, 3)
    ring.pop()
    assert ring.put("s", b"y") == 1 and ring.pop_many()[-1].seq == 4


def test_pop_many_can_stop_at_a_byte_count(impl):
    ring = impl.Ring(16, "block")
    for i in range(8):
        ring.put("s", bytes([i]) * 10)
    assert [m.payload[0] for m in ring.pop_many(100, 25)] == [0, 1, 2]   # 0, 10, 20 < 25
    assert [m.payload[0] for m in ring.pop_many(2, 1000)] == [3, 4]
    assert len(ring.pop_many(100, 0)) == 3                               # 0: no byte stop


def test_eviction_survives_payloads_that_push_when_released(impl):
    """drop_oldest releases what it evicts; a payload's finaliser may push into
    the same ring meanwhile. Room is checked again after every release, so
    the counts and the byte bound hold whatever the finalisers did."""
    ring = impl.Ring(16, "drop_oldest", max_bytes=100)

    class Pushy(bytearray):
        def __del__(self):
            ring.put("inner", b"i" * 30)

    for _ in range(3):
        ring.put("s", Pushy(b"x" * 40))
    assert ring.put("s", b"B" * 10) == 1
    held = [m.payload for m in ring.pop_many()]
    assert ring.offered == len(held) + ring.dropped == ring.last_seq
    assert sum(map(len, held)) <= 100 + 40 and held[-1] in (b"B" * 10, b"i" * 30)
    assert ring.nbytes == 0


@pytest.mark.parametrize("how", ["pop", "pop_many", "pop_payloads", "clear"])
def test_every_take_returns_its_bytes(impl, how):
    ring = impl.Ring(8, "block", max_bytes=1000)
    ring.put("s", b"x" * 7)
    ring.put("s", b"y" * 5)
    getattr(ring, how)()
    assert ring.nbytes == (5 if how == "pop" else 0)


def test_byte_bound_counts_buffer_payloads_in_bytes_and_other_objects_as_none(impl):
    import array

    ring = impl.Ring(8, "block", max_bytes=1 << 20)
    ring.put("s", bytearray(10))
    ring.put("s", memoryview(array.array("i", [1, 2, 3])))   # 3 items, 12 bytes
    ring.put("s", ("not", "bytes"))                          # the bare ring carries anything
    assert ring.nbytes == 22
    ring.clear()
    assert ring.nbytes == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", None, 1 << 63])
def test_max_bytes_must_be_a_non_negative_int(impl, bad):
    with pytest.raises(LimitExceeded):
        impl.Ring(8, "block", max_bytes=bad)


def test_router_block_checks_bytes_before_delivering_anywhere(impl):
    r = impl.CoreRouter()
    small = impl.Ring(64, "block", max_bytes=30)
    other = impl.Ring(64, "block")
    r.add("a", small)
    r.add("a", other)
    assert r.try_publish_many("a", [b"x" * 10] * 5) == 3     # 0, 10, 20 < 30: three go
    assert r.blocked_ring is small
    assert r.try_publish("a", b"x") == -1
    assert (len(small), len(other)) == (3, 3)


# -- stamped rings and persistent hooks (durable queues use them) ------------

def test_stamped_ring_records_the_enqueue_time(impl):
    ring, plain = impl.Ring(4, "block", stamped=True), impl.Ring(4, "block")
    assert ring.stamped and not plain.stamped
    before = time.time_ns()
    ring.put("s", b"1")
    ring.put_many("s", [b"2", b"3"])
    after = time.time_ns()
    plain.put("s", b"1")
    slack = 50_000_000  # the native stamp reads the clock through C11 timespec_get
    got = ring.pop_many()
    assert all(before - slack <= m.timestamp_ns <= after + slack for m in got)
    assert [m.timestamp_ns for m in got] == sorted(m.timestamp_ns for m in got)
    assert got[0].timestamp == got[0].timestamp_ns / 1e9
    unstamped = plain.pop()
    assert (unstamped.timestamp_ns, unstamped.timestamp) == (0, None)


def test_message_timestamp_field(impl):
    assert impl.Message("a", b"x").timestamp is None
    m = impl.Message("a", b"x", timestamp_ns=1_500_000_000_000_000_000)
    assert m.timestamp_ns == 1_500_000_000_000_000_000
    assert m.timestamp == 1.5e9


def test_hook_runs_after_every_stored_message(impl):
    ring = impl.Ring(2, "block")
    calls = Calls()
    ring.set_hook(calls)
    ring.put("s", b"1")
    ring.put("s", b"2")
    assert calls.n == 2                     # persistent, not one-shot
    assert ring.put("s", b"refused") == -1
    assert calls.n == 2                     # nothing stored, no call
    ring.pop_many()
    assert ring.put_many("s", [b"3", b"4"]) == 2
    assert calls.n == 3                     # one call per batch
    ring.disarm()                           # disarm leaves a hook alone
    ring.pop()
    ring.put("s", b"5")
    assert calls.n == 4
    ring.set_hook(None)
    ring.pop_many()
    ring.put("s", b"6")
    assert calls.n == 4


def test_hook_and_one_shot_arming_exclude_each_other(impl):
    ring = impl.Ring(2, "block")
    ring.set_hook(Calls())
    with pytest.raises(RingcastError, match="hook"):
        ring.arm_ready(Calls())
    ring.set_hook(None)
    assert ring.arm_ready(Calls()) is True


def test_close_does_not_run_the_hook(impl):
    ring = impl.Ring(1, "block")
    hook, space = Calls(), Calls()
    ring.set_hook(hook)
    ring.put("s", b"1")
    assert ring.arm_space(space)
    ring.close()
    assert (hook.n, space.n) == (1, 1)


def test_router_publish_runs_the_hook(impl):
    core = impl.CoreRouter()
    hooked, plain = impl.Ring(8, "block"), impl.Ring(8, "block")
    seen = []
    hooked.set_hook(lambda: seen.extend(hooked.pop_payloads()))  # drains, as a journal does
    core.add("q", hooked)
    core.add("q", plain)
    assert core.publish("q", b"1") == 2
    assert core.publish_many("q", [b"2", b"3"]) == 2
    assert seen == [b"1", b"2", b"3"] and len(hooked) == 0
    assert plain.pop_payloads() == [b"1", b"2", b"3"]


# -- Message ------------------------------------------------------------------

def test_message_fields_and_equality(impl):
    m = impl.Message("a.b", b"x")
    assert (m.subject, m.payload, m.data, m.headers, m.seq) == ("a.b", b"x", b"x", None, 0)
    assert (m.redelivered, m.delivery_count) == (False, 1)
    assert m == impl.Message("a.b", b"x")
    assert m != impl.Message("a.b", b"x", seq=1)
    assert m != impl.Message("a.b", b"x", {"k": "v"})
    assert m != impl.Message("a.c", b"x")
    assert m != ("a.b", b"x")
    with pytest.raises(TypeError):
        hash(m)
    assert "a.b" in repr(m)


def test_message_size_counts_payload_bytes_as_byte_bounds_do(impl):
    import array

    assert impl.Message("a", b"abc").size == 3
    assert impl.Message("a", bytearray(5), {"k": "v" * 100}).size == 5   # headers aside
    assert impl.Message("a", array.array("i", [1, 2])).size == 8          # bytes, not items
    assert impl.Message("a", object()).size == 0                          # not bytes-like


@pytest.mark.parametrize("action", ["ack", "nack", "respond"])
def test_settling_a_plain_message_is_an_error(impl, action):
    m = impl.Message("a", b"x")
    args = (b"reply",) if action == "respond" else ()
    with pytest.raises(RingcastError, match="nothing to ack"):
        getattr(m, action)(*args)


# -- native reference counting ----------------------------------------------

native = pytest.mark.parametrize("impl", ["c"], indirect=True)


def _refs(*objs):
    return [sys.getrefcount(o) for o in objs]


@native
def test_refcounts_put_then_pop(impl):
    ring = impl.Ring(4, "block")
    subj, payload, headers = subject(), object(), {"k": "v"}
    base = _refs(subj, payload, headers)
    ring.put(subj, payload, headers)
    assert _refs(subj, payload, headers) == [b + 1 for b in base]  # owned by the slot
    m = ring.pop()
    assert m.payload is payload
    del m
    assert _refs(subj, payload, headers) == base


@native
@pytest.mark.parametrize("how", ["pop_many", "pop_payloads", "clear"])
def test_refcounts_batch_paths(impl, how):
    ring = impl.Ring(8, "block")
    subj, headers = subject(), {"k": "v"}
    payloads = [object() for _ in range(5)]
    base = _refs(subj, headers, *payloads)
    assert ring.put_many(subj, payloads, headers) == 5
    assert _refs(subj, headers, *payloads) == [base[0] + 5, base[1] + 5] + [
        b + 1 for b in base[2:]]
    out = getattr(ring, how)()
    del out
    assert _refs(subj, headers, *payloads) == base


@native
@pytest.mark.parametrize("policy", POLICIES)
def test_refcounts_when_full(impl, policy):
    ring = impl.Ring(1, policy)
    subj, first, second, headers = subject(), object(), object(), {"k": "v"}
    base = _refs(subj, first, second, headers)
    ring.put(subj, first, headers)
    ring.put(subj, second, headers)  # refused, dropped, or evicts `first`
    kept_second = policy == "drop_oldest"
    expect = [base[0] + 1, base[1] + (not kept_second), base[2] + kept_second, base[3] + 1]
    assert _refs(subj, first, second, headers) == expect
    assert ring.pop_payloads() == [second if kept_second else first]
    assert _refs(subj, first, second, headers) == base


@native
def test_refcounts_when_a_byte_bound_evicts_several(impl):
    ring = impl.Ring(8, "drop_oldest", max_bytes=25)
    subj, headers = subject(), {"k": "v"}
    olds = [bytearray(10) for _ in range(3)]
    big = bytearray(30)
    base = _refs(subj, headers, *olds, big)
    for old in olds:
        ring.put(subj, old, headers)
    del old
    ring.put(subj, big, headers)       # holds 30 >= 25: the next put evicts all
    ring.put(subj, b"z", headers)
    assert ring.dropped == 4 and len(ring) == 1
    assert _refs(subj, headers, *olds, big) == [base[0] + 1, base[1] + 1] + base[2:]
    ring.clear()
    assert _refs(subj, headers, *olds, big) == base


@native
def test_refcounts_released_when_the_ring_is_deallocated(impl):
    ring = impl.Ring(8, "drop_oldest")
    subj, headers = subject(), {"k": "v"}
    payloads = [object() for _ in range(3)]
    base = _refs(subj, headers, *payloads)
    for _ in range(4):                 # wrap around a little first
        ring.put_many(subj, payloads, headers)
    ring.pop()
    assert _refs(subj, headers, *payloads) != base
    del ring
    gc.collect()
    assert _refs(subj, headers, *payloads) == base


@native
def test_message_releases_its_references(impl):
    subj, payload, headers = subject(), object(), {"k": "v"}
    base = _refs(subj, payload, headers)
    for _ in range(100):               # Message has a freelist; reuse must not leak
        ring = impl.Ring(2, "block")
        ring.put(subj, payload, headers)
        ring.put(subj, payload)
        ms = ring.pop_many()
        del ms, ring
    assert _refs(subj, payload, headers) == base


# -- model test -------------------------------------------------------------

class RingModel:
    """What a ring must do, in terms of collections.deque: bounded in slots
    and, with ``max_bytes``, softly in payload bytes (full once it holds at
    least ``max_bytes``)."""

    def __init__(self, capacity, policy, max_bytes=0):
        self.capacity = capacity
        self.policy = policy
        self.max_bytes = max_bytes
        self.items = collections.deque()
        self.next_seq = 1
        self.dropped = 0
        self.offered = 0

    @property
    def nbytes(self):
        return sum(len(p) for _, p in self.items)

    def full(self):
        return len(self.items) == self.capacity or (
            self.max_bytes and self.nbytes >= self.max_bytes)

    def put(self, payload):
        if self.full():
            if self.policy == "block":
                return -1
            self.offered += 1
            if self.policy == "drop_newest":
                self.dropped += 1
                self.next_seq += 1
                return 0
            while self.full():
                self.items.popleft()
                self.dropped += 1
        else:
            self.offered += 1
        self.items.append((self.next_seq, payload))
        self.next_seq += 1
        return 1

    def put_many(self, payloads):
        for i, p in enumerate(payloads):
            if self.put(p) < 0:
                return i
        return len(payloads)

    def pop_many(self, k):
        return [self.items.popleft() for _ in range(min(k, len(self.items)))]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put")),
        st.tuples(st.just("put_many"), st.integers(0, 6)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("pop_many"), st.integers(0, 6)),
        st.tuples(st.just("pop_payloads"), st.integers(0, 6)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(policy=st.sampled_from(POLICIES), requested=st.integers(1, 9), ops=ops,
       max_bytes=st.sampled_from([0, 0, 1, 12, 40]))
def test_ring_behaves_like_a_bounded_deque(impl, policy, requested, ops, max_bytes):
    ring = impl.Ring(requested, policy, max_bytes=max_bytes)
    model = RingModel(ring.capacity, policy, max_bytes)
    assert ring.capacity >= requested and ring.capacity & (ring.capacity - 1) == 0
    counter = 0

    def payloads(k):
        # distinct objects of 0..16 bytes, so byte bounds bite at odd places
        nonlocal counter
        counter += k
        return [b"%d" % i + b"." * (i * 7 % 15) for i in range(counter - k, counter)]

    for op in ops:
        kind = op[0]
        if kind == "put":
            (p,) = payloads(1)
            assert ring.put("s", p) == model.put(p), op
        elif kind == "put_many":
            batch = payloads(op[1])
            assert ring.put_many("s", batch) == model.put_many(batch), op
        elif kind == "pop":
            m = ring.pop()
            expect = model.pop_many(1)
            if expect:
                assert (m.seq, m.payload) == expect[0]
            else:
                assert m is None
        elif kind == "pop_many":
            got = [(m.seq, m.payload) for m in ring.pop_many(op[1])]
            assert got == model.pop_many(op[1]), op
        elif kind == "pop_payloads":
            got = ring.pop_payloads(op[1])
            expect = [p for _, p in model.pop_many(op[1])]
            assert len(got) == len(expect) and all(a is b for a, b in zip(got, expect)), op
        else:
            assert ring.clear() == len(model.items)
            model.items.clear()
        assert len(ring) == len(model.items)
        assert ring.free == (0 if model.full() else model.capacity - len(model.items))
        assert ring.nbytes == model.nbytes
        if max_bytes:   # soft bound: at most one message beyond it
            assert ring.nbytes < max_bytes + 17
        assert ring.dropped == model.dropped
        assert ring.offered == model.offered
        assert ring.last_seq == model.next_seq - 1
    assert [(m.seq, m.payload) for m in ring.pop_many()] == list(model.items)
