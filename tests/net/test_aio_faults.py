"""The asyncio client under cancellation, close and broker restarts: the
cases test_aio_client.py does not reach."""

import asyncio

import pytest

from ringcast import aio

from .conftest import HEARTBEAT, BrokerProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def tcp_broker():
    b = BrokerProcess("tcp://127.0.0.1:0").start()
    yield b
    b.stop()


@pytest.fixture
async def conn(tcp_broker):
    c = await aio.connect(tcp_broker.url, heartbeat=HEARTBEAT)
    yield c
    await c.close()


async def test_an_abandoned_request_is_forgotten_at_once(conn):
    """A cancelled request (task.cancel, wait_for) is forgotten there and then,
    not kept until its deadline: it used to stay in ``proto.requests``
    (the future was already cancelled when the cleanup asked whether it was
    done), so callers that give up early piled up entries for up to their
    timeout, and the 10 ms sweep kept running meanwhile."""
    conn.serve("silent")   # takes requests and never answers
    await conn.flush()
    task = asyncio.ensure_future(conn.request("silent", b"1", timeout=60))
    await asyncio.sleep(0)   # the task has sent it and waits
    assert len(conn.proto.requests) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.proto.requests == {}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.request("silent", b"2", timeout=60), 0.05)
    assert conn.proto.requests == {}
