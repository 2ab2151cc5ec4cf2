"""A small program over ringcast's public API, checked with ``mypy --strict``:
the embedded router (sync and asyncio) and the clients of a broker.

tools/check_typing.sh checks it against the source tree, tools/check_dist.sh
against an installed wheel (proving ``py.typed`` and the ``.pyi`` stubs of
the compiled modules ship), and tests/test_packaging.py runs it. The
``assert_type`` calls fail the type check if a public name degrades to
``Any`` (a missing stub, say), so keep them when editing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine, Dict, List, Optional, TypeVar

import ringcast
import ringcast.aio

# Broker, Client, connect and the ringcast.aio names are loaded lazily at run
# time and seen by mypy through TYPE_CHECKING imports.
from ringcast import Broker, Client, connect, errors
from ringcast.aio import Connection
from ringcast.aio import connect as aio_connect

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover - exercised on 3.9 and 3.10
    from typing_extensions import assert_type


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on a selector event loop on Windows (what ringcast.aio
    needs there; the default Proactor loop cannot watch a ZeroMQ socket)."""
    if sys.platform == "win32":
        loop = asyncio.SelectorEventLoop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    else:
        return asyncio.run(coro)

def pubsub(router: ringcast.Router) -> List[bytes]:
    sub = router.subscribe("orders.*", capacity=64, overflow="drop_oldest")
    assert_type(sub, ringcast.Subscription)
    delivered = router.publish("orders.placed", b"order-1", {"region": "eu"})
    assert_type(delivered, int)
    router.publish_many("orders.placed", [b"order-2", b"order-3"])
    msg = sub.recv(timeout=1.0)
    assert_type(msg, ringcast.Message)
    assert_type(msg.subject, str)
    assert_type(msg.seq, int)
    assert_type(msg.redelivered, bool)
    assert_type(msg.headers, Optional[Dict[str, str]])
    rest = sub.recv_many(16, timeout=0.0)
    assert_type(rest, List[ringcast.Message])
    assert_type(sub.dropped, int)
    sub.close()
    return [bytes(m.payload) for m in [msg, *rest]]


def work_queue(router: ringcast.Router) -> int:
    queue = router.declare_queue("shipping", bind="orders.placed")
    assert_type(queue, ringcast.Queue)
    router.send("shipping", b"parcel")
    done = 0
    with router.consume("shipping", prefetch=4) as consumer:
        assert_type(consumer, ringcast.Consumer)
        for msg in consumer.recv_many(8):
            msg.ack()
            done += 1
    return done


def request_reply(router: ringcast.Router) -> bytes:
    def handler(msg: ringcast.Message) -> bytes:
        return b"stock:" + bytes(msg.payload)

    responder = router.serve("inventory.check", handler)
    assert_type(responder, ringcast.Responder)
    reply = router.request("inventory.check", b"widget", timeout=1.0)
    assert_type(reply, ringcast.Message)
    try:
        router.request("nobody.serves.this", b"", timeout=0.1)
    except ringcast.NoResponders as exc:
        assert_type(exc.code, int)
    except errors.RingcastError:
        raise
    responder.close()
    return bytes(reply.payload)


async def asyncio_api() -> bytes:
    async with ringcast.aio.Router() as router:
        assert_type(router, ringcast.aio.Router)
        sub = router.subscribe("ticks.>")
        await router.publish("ticks.eu.1", b"tick")
        msg = await sub.recv(timeout=1.0)
        assert_type(msg, ringcast.Message)
        return bytes(msg.payload)


def remote_clients() -> Dict[str, Any]:
    """The same API against a broker: an embedded one on a free local port."""
    with Broker("tcp://127.0.0.1:0") as broker:
        assert_type(broker, Broker)
        url = broker.endpoints[0]
        with connect(url) as client:
            assert_type(client, Client)
            sub = client.subscribe("orders.*")
            client.serve("inventory.check", lambda msg: b"stock:" + bytes(msg.payload))
            client.flush()
            client.publish("orders.placed", b"order-9")
            msg = sub.recv(timeout=5.0)
            assert_type(msg, ringcast.Message)
            reply = client.request("inventory.check", b"lamp", timeout=5.0)
            assert_type(reply, ringcast.Message)
            result: Dict[str, Any] = {
                "remote": bytes(msg.payload),
                "remote_reply": bytes(reply.payload),
            }
        result["aio_remote"] = run(aio_remote(url))
    return result


async def aio_remote(url: str) -> bytes:
    conn = await aio_connect(url)
    assert_type(conn, Connection)
    async with conn:
        sub = conn.subscribe("ticks.>")
        await conn.flush()
        await conn.publish("ticks.us.1", b"tick")
        msg = await sub.recv(timeout=5.0)
        assert_type(msg, ringcast.Message)
        return bytes(msg.payload)


def main() -> Dict[str, Any]:
    assert_type(ringcast.__version__, str)
    with ringcast.Router() as router:
        result: Dict[str, Any] = {
            "pubsub": pubsub(router),
            "queue": work_queue(router),
            "reply": request_reply(router),
        }
    result["aio"] = run(asyncio_api())
    result.update(remote_clients())
    return result


if __name__ == "__main__":
    print(main())
