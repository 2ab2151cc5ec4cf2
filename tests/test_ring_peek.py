"""``Ring.peek_after`` and ``Ring.first_seq``: how a queue admits (and logs)
messages while they stay in its ring. Both implementations (``impl``)."""

import sys

import pytest


@pytest.mark.parametrize("policy", ["block", "drop_oldest", "drop_newest"])
def test_peek_after_returns_unread_messages_above_a_seq_and_leaves_them(impl, policy):
    ring = impl.Ring(4, policy, stamped=True)
    assert ring.first_seq == 1 and ring.peek_after(0) == []
    for i in range(6):
        ring.put("s", b"%d" % i, {"i": str(i)} if i % 2 else None)
    kept = {"block": [1, 2, 3, 4], "drop_oldest": [3, 4, 5, 6],
            "drop_newest": [1, 2, 3, 4]}[policy]
    seen = ring.peek_after(0)
    assert [m.seq for m in seen] == kept and len(ring) == 4
    assert [m.payload for m in seen] == [b"%d" % (s - 1) for s in kept]
    assert seen[1].headers == {"i": str(kept[1] - 1)} and seen[0].headers is None
    assert all(m.timestamp_ns > 0 and not m.redelivered and m.delivery_count == 1 for m in seen)
    assert ring.first_seq == kept[0]
    assert [m.seq for m in ring.peek_after(kept[1])] == kept[2:]
    assert ring.peek_after(kept[-1]) == [] and ring.peek_after(10 ** 6) == []
    assert [m.seq for m in ring.pop_many(10)] == kept  # nothing was taken
    assert ring.first_seq == ring.last_seq + 1 and ring.peek_after(0) == []


def test_peek_after_keeps_the_ring_owning_its_references(impl):
    if impl.name != "c":
        pytest.skip("reference counts are about the native ring's slots")
    payload = object()
    ring = impl.Ring(8)
    ring.put("s", payload)
    before = sys.getrefcount(payload)
    for _ in range(100):
        (m,) = ring.peek_after(0)
        del m
    assert sys.getrefcount(payload) == before
    assert ring.pop().payload is payload
