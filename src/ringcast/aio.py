"""asyncio face of ringcast.

``ringcast.aio.Router`` mirrors ``ringcast.Router`` with awaitables. It wraps
a sync router (its own, or one you pass in), so threads and tasks can share
one router. Waiting is cancellation-safe: a message is taken off its ring
only in the same synchronous step that returns it, so cancelling ``recv``
or ``request`` never loses a message.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Union,
)

from . import errors
from . import router as _sync
from ._impl import Headers, Message
from ._waiting import EXPIRED, _await, _deadline
from .queues import Queue as _Queue
from .services import Responder as _SyncResponder
from .services import log as _service_log
from .services import reply

__all__ = ["Router", "Subscription", "Consumer", "Responder"]


class _AsyncSource:
    """Awaitable receive over a sync source (subscription, consumer, responder)."""

    def __init__(self, source: Any) -> None:
        self.sync = source

    async def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message; raises ``Timeout`` after ``timeout`` seconds."""
        src = self.sync
        msg: Message = await src._signal.wait_async(src._poll, src._arm, _deadline(timeout))
        return msg

    def recv_nowait(self) -> Message:
        msg: Message = self.sync.recv_nowait()
        return msg

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.recv()
            except errors.Closed:
                return

    @property
    def closed(self) -> bool:
        return bool(self.sync.closed)

    def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> "_AsyncSource":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


class _AsyncBatches(_AsyncSource):
    """``recv_many`` over a sync source that has one (subscription, consumer)."""

    async def recv_many(self, max_count: int = 1024,
                        timeout: Optional[float] = None) -> List[Message]:
        """Up to ``max_count`` messages, waiting up to ``timeout`` for the
        first; ``timeout=0`` does not wait: ``[]`` when none is waiting, as
        the sync ``recv_many`` gives."""
        msgs: List[Message] = self.sync.recv_many(max_count, 0)
        if msgs or timeout == 0:
            return msgs
        first = await self.recv(timeout)
        return [first] + self.sync.recv_many(max_count - 1, 0)


class Subscription(_AsyncBatches):
    """``await sub.recv()``, ``async for msg in sub``."""

    sync: _sync.Subscription

    def recv_payloads(self, max_count: int = 1 << 30) -> List[Any]:
        return self.sync.recv_payloads(max_count)

    @property
    def dropped(self) -> int:
        return self.sync.dropped

    @property
    def pending(self) -> int:
        return self.sync.pending

    @property
    def pattern(self) -> str:
        return self.sync.pattern


class Consumer(_AsyncBatches):
    """A competing consumer of a queue; ``msg.ack()`` / ``msg.nack()`` as
    usual. ``recv_many`` takes no more than the prefetch credit allows."""

    sync: "_sync.Consumer"

    @property
    def unacked(self) -> int:
        return self.sync.unacked


class Responder(_AsyncSource):
    """Requests to one service; answer with ``msg.respond(payload)``."""

    sync: _SyncResponder

    def __init__(self, source: _SyncResponder, handler: Optional[Callable[[Message], Any]],
                 concurrency: int) -> None:
        super().__init__(source)
        self._task: Optional["asyncio.Task[None]"] = None
        if handler is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._serve(handler, concurrency), name=f"ringcast-serve-{source.name}")

    async def _serve(self, handler: Callable[[Message], Any], concurrency: int) -> None:
        limit = asyncio.Semaphore(concurrency)
        running: "set[asyncio.Task[None]]" = set()

        async def one(msg: Message) -> None:
            try:
                pending = msg._owner
                try:
                    result = handler(msg)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception as exc:
                    _service_log.exception("handler for %r raised", msg.subject)
                    pending.fail(errors.ServiceError(f"{type(exc).__name__}: {exc}"))
                    return
                reply(msg, result)
            finally:
                limit.release()

        async for msg in self:
            await limit.acquire()
            task = asyncio.get_running_loop().create_task(one(msg))
            running.add(task)
            task.add_done_callback(running.discard)

    def close(self) -> None:
        self.sync.close()
        if self._task is not None:
            self._task.cancel()


class Router:
    """An embedded router for asyncio code (see ``ringcast.Router``)."""

    def __init__(self, router: Optional[_sync.Router] = None) -> None:
        self.sync = router if router is not None else _sync.Router()

    def subscribe(self, pattern: str, *, capacity: int = _sync._DEFAULT_CAPACITY,
                  overflow: str = "block",
                  callback: Optional[Callable[[Message], Any]] = None,
                  max_bytes: int = 0) -> Subscription:
        return Subscription(self.sync.subscribe(pattern, capacity=capacity, overflow=overflow,
                                                callback=callback, max_bytes=max_bytes))

    def publish_nowait(self, subject: str, payload: Any, headers: Headers = None) -> int:
        """Publish or raise ``WouldBlock`` at once when a block buffer is full."""
        return self.sync.publish(subject, payload, headers, timeout=0)

    async def publish(self, subject: str, payload: Any, headers: Headers = None, *,
                      timeout: Optional[float] = None) -> int:
        """Publish; a full ``block`` buffer suspends this task, not the loop."""
        deadline = _deadline(timeout)
        while True:
            n = self.sync.try_publish(subject, payload, headers)
            if n >= 0:
                return n
            await self._wait_room(self.sync.blocked_ring, deadline)

    async def publish_many(self, subject: str, payloads: Sequence[Any],
                           headers: Headers = None, *, timeout: Optional[float] = None) -> int:
        return await self._offer_all(
            payloads, lambda items: int(self.sync.try_publish_many(subject, items, headers)),
            lambda: self.sync.blocked_ring, timeout)

    async def _offer_all(self, payloads: Sequence[Any], offer: Callable[[List[Any]], int],
                         full_ring: Callable[[], Any], timeout: Optional[float]) -> int:
        """Offer ``payloads`` until ``offer`` (how many it took) has taken them
        all, waiting as a task while ``full_ring()`` has no room."""
        items = payloads if isinstance(payloads, list) else list(payloads)
        deadline = _deadline(timeout)
        done = offer(items)
        while done < len(items):
            await self._wait_room(full_ring(), deadline)
            done += offer(items[done:])
        return done

    async def _wait_room(self, ring: Any, deadline: Optional[float]) -> None:
        """Suspend until ``ring`` has room (or the deadline: WouldBlock)."""
        router = self.sync   # its tests, as Router._wait_space's
        try:
            await router._space.wait_async(lambda: router._room(ring),
                                           lambda: router._arm_room(ring), deadline)
        except errors.Timeout:
            raise errors.WouldBlock(
                f"a block-policy buffer stayed full until the deadline ({ring!r})") from None

    def declare_queue(self, name: str, *, bind: Union[str, Sequence[str]] = (),
                      **options: Any) -> _Queue:
        return self.sync.declare_queue(name, bind=bind, **options)

    async def send(self, queue: str, payload: Any, headers: Headers = None, *,
                   timeout: Optional[float] = None) -> bool:
        """Put a message on a queue; waits (as a task) while the queue is full."""
        self.sync._check_open()
        q = self.sync.ensure_queue(queue)
        deadline = _deadline(timeout)
        while True:
            try:
                return q.put(payload, headers, 0)
            except errors.WouldBlock:
                await self._wait_room(q.ring, deadline)

    async def send_many(self, queue: str, payloads: Sequence[Any], headers: Headers = None, *,
                        timeout: Optional[float] = None) -> int:
        """As ``Router.send_many``; waits (as a task) while the queue is full."""
        self.sync._check_open()
        q = self.sync.ensure_queue(queue)
        return await self._offer_all(payloads, lambda items: q.try_put_many(items, headers),
                                     lambda: q.ring, timeout)

    def consume(self, queue: str, *, prefetch: int = 0) -> Consumer:
        return Consumer(self.sync.consume(queue, prefetch=prefetch))

    def serve(self, name: str, handler: Optional[Callable[[Message], Any]] = None, *,
              capacity: int = 1024, concurrency: int = 64) -> Responder:
        """Answer requests to ``name``; ``handler`` may be sync or ``async def``.
        Up to ``concurrency`` requests are handled at once."""
        return Responder(self.sync.serve(name, capacity=capacity), handler, concurrency)

    async def request(self, name: str, payload: Any, headers: Headers = None, *,
                      timeout: Optional[float] = 5.0) -> Message:
        """Ask ``name``; raises ``Timeout`` or ``NoResponders``. Cancelling the
        await withdraws the request: a late answer is counted, never misdelivered."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[Any]" = loop.create_future()

        def settle(result: Any) -> None:
            if loop.is_closed():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _set(fut, result)
            else:
                loop.call_soon_threadsafe(_set, fut, result)

        pending = self.sync.request_cb(name, payload, settle, headers, timeout=timeout)
        try:
            result = await _await(fut, timeout, EXPIRED)
        except asyncio.CancelledError:
            pending.expire()
            raise
        if result is EXPIRED:
            pending.expire()
            raise errors.Timeout(f"request to {name!r} timed out after {timeout}s")
        return _sync._unbox(result)

    def stats(self) -> Dict[str, Any]:
        return self.sync.stats()

    def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> "Router":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


def _set(fut: "asyncio.Future[Any]", result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


# -- the asyncio client of a remote broker (aio_client.py) ---------------------------
# ``conn = await ringcast.aio.connect(url)``; loaded on first use so embedded
# asyncio programs do not import ZeroMQ.
__all__ += ["connect", "Connection"]

if TYPE_CHECKING:
    from .aio_client import Connection as Connection
    from .aio_client import connect as connect


def __getattr__(name: str) -> Any:  # PEP 562
    if name in ("connect", "Connection"):
        from . import aio_client

        return getattr(aio_client, name)
    raise AttributeError(f"module 'ringcast.aio' has no attribute {name!r}")
