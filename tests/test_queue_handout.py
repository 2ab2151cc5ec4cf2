"""``hand_out`` and ``settle``: the native loops a queue hands deliveries
out and settles acks with. Both implementations (``impl``)."""

import collections

TTL = "ttl-ms"


def _messages(impl, specs):
    out = []
    for i, (redelivered, headers) in enumerate(specs):
        out.append(impl.Message("jobs", b"%d" % i, headers, i + 1, redelivered))
    return out


def test_hand_out_stamps_plain_messages_and_stops_at_one_the_queue_must_check(impl):
    msgs = _messages(impl, [(False, None), (False, {"k": "v"}), (False, {TTL: "5"}),
                            (False, None), (True, None)])
    ready = collections.deque(msgs)
    owner, unacked = object(), {}
    got, tag = impl.ring_module.hand_out(ready, 10, owner, 7, unacked, TTL)
    assert got == msgs[:2] and tag == 9
    assert [m._tag for m in got] == [7, 8] and all(m._owner is owner for m in got)
    assert unacked == {7: msgs[0], 8: msgs[1]}
    assert list(ready) == msgs[2:]          # the TTL one waits at the head
    ready.popleft()
    got, tag = impl.ring_module.hand_out(ready, 10, owner, tag, unacked, TTL)
    assert got == [msgs[3]] and tag == 10   # stops again at the redelivered one
    assert list(ready) == [msgs[4]]


def test_hand_out_takes_no_more_than_its_limit(impl):
    msgs = _messages(impl, [(False, None)] * 5)
    ready, unacked = collections.deque(msgs), {}
    got, tag = impl.ring_module.hand_out(ready, 3, None, 1, unacked, TTL)
    assert got == msgs[:3] and tag == 4 and list(ready) == msgs[3:]
    assert impl.ring_module.hand_out(collections.deque(), 3, None, 4, unacked, TTL) == ([], 4)


def test_settle_takes_acked_deliveries_out_and_reports_the_rest(impl):
    msgs = _messages(impl, [(False, None)] * 3)
    msgs[1]._id = 41
    unacked = {1: msgs[0], 2: msgs[1], 3: msgs[2]}
    inflight = collections.OrderedDict([(2, "deadline"), (3, "deadline")])
    missing, ids = impl.ring_module.settle([2, 9, 1, 2], unacked, inflight)
    assert missing == [9, 2] and ids == [41]   # unknown, then already settled
    assert unacked == {3: msgs[2]} and list(inflight) == [3]


def test_hand_out_leaves_a_consumer_and_its_deliveries_collectable(impl):
    """A ring's messages are untracked by the garbage collector while nothing
    they hold can lead back to them; handed out, each holds its consumer,
    whose unacked map holds it: that cycle must still be collected."""
    import gc
    import weakref

    class Consumer:
        pass

    ring = impl.Ring(4)
    ring.put("jobs", b"a")
    ready = collections.deque(ring.pop_many())
    consumer = Consumer()
    consumer.unacked = {}
    got, _ = impl.ring_module.hand_out(ready, 10, consumer, 1, consumer.unacked, TTL)
    assert len(got) == 1
    gone = weakref.ref(consumer)
    del consumer, got
    gc.collect()
    assert gone() is None
