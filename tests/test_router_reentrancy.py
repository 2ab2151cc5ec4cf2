"""Callbacks that publish: what must fail fast instead of waiting on itself."""

import threading
import time

import pytest

import ringcast
from ringcast import errors


@pytest.fixture
def router():
    with ringcast.Router() as r:
        yield r


@pytest.mark.parametrize("many", [False, True], ids=["publish", "publish_many"])
def test_a_block_callback_publishing_into_its_own_full_ring_fails_fast(router, many):
    """The callback runs on the thread that drains its ring: once the ring is
    full, waiting for room would wait on itself (until the timeout, or forever)."""
    outcome = []
    done = threading.Event()

    def loop(msg):
        if msg.payload != b"start":
            return
        start = time.monotonic()
        try:
            for i in range(5):  # the ring holds 4
                if many:
                    router.publish_many("loop", [b"%d" % i], timeout=30)
                else:
                    router.publish("loop", b"%d" % i, timeout=30)
        except errors.RingcastError as exc:
            outcome.append((i, exc, time.monotonic() - start))
        done.set()

    sub = router.subscribe("loop", capacity=4, overflow="block", callback=loop)
    router.publish("loop", b"start")
    assert done.wait(10)
    (i, exc, elapsed), = outcome
    assert i == 4 and type(exc) is errors.WouldBlock
    assert "inside a callback" in str(exc) and "wait on itself" in str(exc)
    assert elapsed < 5  # not the 30 s timeout
    assert sub.callback_errors == 0 and sub.pending == 0  # the 4 that fit were handled


def test_a_callback_may_still_wait_for_a_ring_another_thread_drains(router):
    """Only a ring this thread drains is refused: a full block-policy
    subscription read by another thread is waited on as usual."""
    other = router.subscribe("work", capacity=1, overflow="block")
    router.publish("work", b"fills-it")
    published = threading.Event()

    def relay(msg):
        router.publish("work", b"from-callback", timeout=10)
        published.set()

    router.subscribe("go", callback=relay)
    starter = threading.Thread(target=router.publish, args=("go", b"x"), daemon=True)
    starter.start()
    deadline = time.monotonic() + 5
    while not router._space._sleepers:  # the callback waits for room in "work"
        assert time.monotonic() < deadline, "the callback never waited"
        time.sleep(0.001)
    assert not published.is_set()
    assert other.recv(timeout=5).payload == b"fills-it"
    assert published.wait(5)
    assert other.recv(timeout=5).payload == b"from-callback"
    starter.join(5)


def test_a_thread_that_hands_callbacks_off_never_runs_them_and_a_raise_stops_nothing():
    """The broker loop's mode: callbacks it makes ready run on the router's
    callback thread, one at a time and in order, and one that raises (which
    a publisher would have seen) does not end that thread."""
    import threading

    from ringcast._waiting import _Dispatcher

    d = _Dispatcher()
    me = threading.get_ident()
    d.hand_off(me)
    ran, done = [], threading.Event()

    def boom():
        raise RuntimeError("internal")

    d.schedule(boom)
    for i in range(3):
        d.schedule(lambda i=i: ran.append((i, threading.get_ident())))
    d.schedule(done.set)
    assert done.wait(5)
    assert [i for i, _ in ran] == [0, 1, 2]
    assert all(ident != me for _, ident in ran)
    d.hand_off(me, on=False)
    d.schedule(lambda: ran.append(("here", threading.get_ident())))
    assert ran[-1] == ("here", me)   # run by the caller again
    d.close()
