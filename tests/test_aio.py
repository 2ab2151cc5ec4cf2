"""asyncio embedded API: awaitables, cancellation safety, async handlers."""

import asyncio
import random
import threading

import pytest

import ringcast
from ringcast import aio, errors


@pytest.fixture
async def router():
    async with aio.Router() as r:
        yield r


async def test_await_recv_and_async_for(router):
    sub = router.subscribe("orders.*")
    for i in range(3):
        await router.publish("orders.placed", b"%d" % i)
    got = []
    async for msg in sub:
        got.append(msg.payload)
        if len(got) == 3:
            sub.close()
    assert got == [b"0", b"1", b"2"]


async def test_recv_timeout(router):
    sub = router.subscribe("x")
    with pytest.raises(errors.Timeout):
        await sub.recv(timeout=0.01)


async def test_cancelled_recv_loses_no_message(router):
    """Cancel receivers at random moments while messages flow: every
    published message is received exactly once, in order."""
    sub = router.subscribe("flow")
    total, received = 2000, []
    rng = random.Random(7)

    async def producer():
        for i in range(total):
            await router.publish("flow", b"%d" % i)
            if i % 7 == 0:
                await asyncio.sleep(0)

    prod = asyncio.create_task(producer())
    while len(received) < total:
        task = asyncio.create_task(sub.recv(timeout=5))
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            task.cancel()
        try:
            received.append(int((await task).payload))
        except asyncio.CancelledError:
            pass
    await prod
    assert received == list(range(total))
    assert sub.pending == 0


async def test_cancelled_queue_recv_leaves_nothing_unacked(router):
    consumer = router.consume("jobs")
    task = asyncio.create_task(consumer.recv())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await router.send("jobs", b"j1")
    msg = await consumer.recv(timeout=1)
    assert msg.payload == b"j1" and not msg.redelivered
    assert consumer.unacked == 1
    msg.ack()
    assert consumer.unacked == 0


async def test_async_request_with_async_handler(router):
    async def handler(msg):
        await asyncio.sleep(0)
        return b"re:" + msg.payload

    router.serve("svc", handler)
    replies = await asyncio.gather(*(router.request("svc", b"%d" % i) for i in range(500)))
    assert [r.payload for r in replies] == [b"re:%d" % i for i in range(500)]


async def test_async_request_errors(router):
    with pytest.raises(errors.NoResponders):
        await router.request("missing", b"")
    router.serve("never")  # a responder that never answers
    with pytest.raises(errors.Timeout):
        await router.request("never", b"", timeout=0.02)


async def test_cancelled_request_is_withdrawn(router):
    responder = router.serve("svc")
    task = asyncio.create_task(router.request("svc", b"first", timeout=5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second = asyncio.create_task(router.request("svc", b"second", timeout=5))
    msg = await responder.recv(timeout=1)  # the withdrawn request is skipped
    assert msg.payload == b"second"
    msg.respond(b"ok")
    assert (await second).payload == b"ok"


async def test_async_publish_waits_for_room_without_blocking_the_loop(router):
    sub = router.subscribe("b", capacity=4)
    total = 100

    async def producer():
        for i in range(total):
            await router.publish("b", b"%d" % i, timeout=5)

    prod = asyncio.create_task(producer())
    got = []
    while len(got) < total:
        got.extend(m.payload for m in await sub.recv_many(8, timeout=5))
    await prod
    assert got == [b"%d" % i for i in range(total)]
    with pytest.raises(errors.WouldBlock):
        for _ in range(5):
            router.publish_nowait("b", b"x")


async def test_thread_publisher_wakes_async_receiver():
    sync_router = ringcast.Router()
    router = aio.Router(sync_router)
    sub = router.subscribe("t")
    t = threading.Thread(target=lambda: [sync_router.publish("t", b"%d" % i) for i in range(50)])
    t.start()
    got = [int((await sub.recv(timeout=5)).payload) for _ in range(50)]
    t.join()
    assert got == list(range(50))
    sync_router.close()


async def test_send_many_waits_as_a_task_while_the_queue_is_full(router):
    router.declare_queue("jobs", capacity=4)
    c = router.consume("jobs")
    sender = asyncio.ensure_future(router.send_many("jobs", [b"%d" % i for i in range(10)]))
    got = []
    while len(got) < 10:           # the loop stays free: this task drains meanwhile
        m = await c.recv(timeout=5)
        got.append(m.payload)
        m.ack()
    assert await sender == 10
    assert got == [b"%d" % i for i in range(10)]
    with pytest.raises(errors.WouldBlock):
        await router.send_many("jobs", [b"x"] * 5, timeout=0.05)   # 4 fit, then the deadline
    with pytest.raises(errors.WrongType):
        await router.send_many("jobs", [b"ok", "text"])


@pytest.mark.parametrize("timeout", [None, 10])
async def test_a_recv_cancelled_as_its_message_arrives_is_cancelled(router, timeout):
    """Woken by a publish and cancelled in the same loop tick, a recv ends
    cancelled and leaves the message: with a timeout it waited in
    asyncio.wait_for, which before Python 3.12 swallowed that cancellation
    (the recv returned the message, the task carried on)."""
    sub = router.subscribe("t")
    task = asyncio.ensure_future(sub.recv(timeout=timeout))
    await asyncio.sleep(0)   # it waits
    router.publish_nowait("t", b"x")   # wakes it (on this loop: at once) ...
    task.cancel()                      # ... cancelled in the same tick
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await sub.recv(timeout=5)).payload == b"x"


async def test_an_async_send_waiting_for_room_gets_closed_with_its_router():
    """As ``Router.send``: a task waiting for room in a queue of a router
    closed meanwhile gets Closed, instead of waiting for good."""
    sync_router = ringcast.Router()
    router = aio.Router(sync_router)
    router.declare_queue("full", capacity=1)
    await router.send("full", b"a")
    task = asyncio.ensure_future(router.send("full", b"b"))
    while not sync_router._space._futures:   # the task waits for room
        await asyncio.sleep(0)
    sync_router.close()
    with pytest.raises(errors.Closed):
        await asyncio.wait_for(task, 10)
