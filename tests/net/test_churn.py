"""The broker over time: clients come, use it and go (BYE, HELLO again,
garbage, silence), and every per-session structure of the broker returns to
its baseline; hostile values and floods cost the sender, not the broker."""

import gc

from ringcast import _codec as C
from ringcast.broker import _Session

from .conftest import raw_session, wait_for


def _sessions_alive():
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is _Session]


def test_publishers_that_leave_while_parked_are_forgotten(embedded, zsocket):
    """A publisher parked on a full block-policy buffer waits through the
    router's space signal. The callback it registered there held its session;
    when the session ended before the buffer had room, the callback (and the
    whole session) stayed in the signal's list for as long as the buffer
    stayed full: one more per publisher that came and went."""
    router, broker = embedded()
    stuck = router.subscribe("blk.>", capacity=2, overflow="block")   # never read
    url = broker.endpoints[0]
    space = router._space
    for i in range(20):
        sock, _ = raw_session(zsocket, url, f"pub{i}")
        w = C.Writer()
        for _ in range(3):
            w.record(C.PUB, "blk.x", None, b"m")
        sock.send(w.take())
        assert wait_for(lambda i=i: broker.counters["publisher_waits"] > i)
        w.record(C.BYE)
        sock.send(w.take())
        assert wait_for(lambda i=i: broker.counters["sessions_dropped"] == i + 1)
    assert wait_for(lambda: not broker._sessions)
    assert len(space._callbacks) == 0
    assert not _sessions_alive()
    stuck.close()
    assert broker.counters["internal_errors"] == 0
