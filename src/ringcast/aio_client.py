"""asyncio client: ``await ringcast.aio.connect(url)``.

Drives the same :class:`~ringcast.protocol.ClientProtocol` as the sync
client, from the event loop: the ZeroMQ socket's file descriptor wakes a
pump that moves frames both ways, and everything buffered during one loop
tick leaves as one batch.

Cancellation safety (the pyzmq asyncio pitfall): no coroutine here ever
awaits the socket. Frames are read by the pump, synchronously, into
per-handle inboxes; ``recv`` waits on a bare future and then takes a message
from the inbox synchronously. A cancelled ``recv`` therefore takes nothing,
and a cancelled ``request`` only forgets its id, so a late reply is dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union, cast

import zmq

from . import errors
from ._args import check_timeout
from ._codec import settle_future
from ._impl import Message
from ._waiting import EXPIRED, _await, _deadline
from ._zsock import EVENTS, NOBLOCK, POLLIN, zget, zsend
from .protocol import (
    ClientProtocol,
    Headers,
    RemoteConsumer,
    RemoteService,
    RemoteSubscription,
    _Handle,
    fail,
    reply,
)

log = logging.getLogger("ringcast.aio")
#: how often, with requests in flight, overdue ones are looked for (seconds)
REQUEST_SWEEP = 0.01


class Connection:
    """A connection to a broker from an asyncio program."""

    def __init__(self, url: str, *, name: Optional[str] = None, heartbeat: float = 1.0,
                 context: Optional[zmq.Context] = None) -> None:
        self.url = url
        self.proto = ClientProtocol(name or f"aio-{os.getpid()}", heartbeat=heartbeat, linger=0)
        self.proto.kick = self._kick
        self.proto.on_credit = self._credit_ready
        self.proto.on_deliver = self._delivered
        self._loop = asyncio.get_running_loop()
        self._ctx = context or zmq.Context.instance()
        self._sock: Optional[zmq.Socket] = None
        self._scheduled = False
        self._waiters: Dict[int, List["asyncio.Future[None]"]] = {}
        self._credit_waiters: List["asyncio.Future[None]"] = []
        self._handlers: Dict[int, Callable[[Message], Any]] = {}
        outbox = self.proto.outbox
        outbox.wait = _would_block
        #: buffer one message now (native fast path); ``WouldBlock`` when the
        #: buffer is over its limit (then ``await publish(...)`` instead)
        self.publish_nowait: Callable[..., None] = outbox.publish
        self._timer: Optional[asyncio.TimerHandle] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------
    async def _start(self, timeout: Optional[float]) -> "Connection":
        self._open()
        self._tick()
        if timeout:
            try:
                await self.wait_ready(timeout)
            except BaseException:
                await self.close()   # no broker: leave no timer or socket behind
                raise
        return self

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait for the broker's welcome (ConnectionLost after ``timeout``)."""
        deadline = time.monotonic() + cast(float, check_timeout(timeout, optional=False))
        while not self.proto.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.ConnectionLost(f"no broker answered at {self.url}")
            await self._wait_credit_change(left)

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)   # bounded by publish credit
        sock.setsockopt(zmq.RCVHWM, 0)   # bounded by subscription credit
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.url)
        self._sock = sock
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        try:
            self._loop.add_reader(self._fd, self._pump)
        except NotImplementedError:  # Windows' default ProactorEventLoop
            sock.close(linger=0)
            raise errors.RingcastError(
                "ringcast.aio needs an event loop with add_reader; on Windows run "
                "asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy()) "
                "first") from None
        self.proto.connection_made(time.monotonic())

    def _close_socket(self, linger: int = 0) -> None:
        if self._sock is not None:
            self._loop.remove_reader(self._fd)
            self._sock.close(linger=linger)
            self._sock = None

    def _reconnect(self, exc: errors.RingcastError) -> None:
        log.warning("session lost (%s); reconnecting", exc)
        self.proto.connection_lost(exc)
        self._close_socket()
        self._open()
        self._wake_everyone()

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (waiting up to ``timeout`` for the broker to
        confirm), say goodbye, release the socket."""
        if self.closed:
            return
        if self.proto.ready:
            try:
                await self.flush(timeout)
            except errors.RingcastError:
                log.warning("closing with messages the broker has not confirmed")
        elif self.proto.unsent():
            log.warning("closing with messages buffered and no broker to send them to")
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.proto.mark_closed()   # also with no socket: nothing more is accepted
        if self._sock is not None:
            for frame in self.proto.bye():
                self._sock.send(frame)
            self._close_socket(linger=200)   # BYE goes out; the broker need not
                                             # wait three heartbeats to forget us
        for h in list(self.proto.handles.values()):
            h.closed = True
        # no frame is read and no sweep runs any more: requests in flight end now
        self.proto.connection_lost(errors.Closed("connection is closed"))
        self._wake_everyone()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self.proto.ready

    @property
    def sessions(self) -> int:
        return self.proto.sessions

    # -- the pump ------------------------------------------------------------------------
    def _kick(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Send what is due, then read every frame waiting (edge-triggered FD:
        always drain until EVENTS says there is nothing left)."""
        self._scheduled = False
        sock = self._sock
        if sock is None or self.closed:
            return
        now = time.monotonic()
        for frame in self.proto.data_to_send(now, eager=True):
            zsend(sock, frame)
        while zget(sock, EVENTS) & POLLIN:
            frame = sock.recv(NOBLOCK, copy=True)
            err = self.proto.frame_received(frame, now)
            if err is not None:
                self._reconnect(errors.ConnectionLost(str(err)))
                return

    def _tick(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        lost, wait = self.proto.timer(now)
        if lost:
            self._reconnect(errors.ConnectionLost("the broker stopped answering heartbeats"))
        if self.proto.requests:
            self.proto.expire_requests(now)
            wait = min(wait, REQUEST_SWEEP)
        self._pump()
        self._timer = self._loop.call_later(wait, self._tick)

    # -- wake-ups ----------------------------------------------------------------------------
    def _delivered(self, h: _Handle) -> None:
        handler = self._handlers.get(h.id)
        if handler is not None and h.error is None:   # refused (ERR): nothing to take
            self._run_handler(h, handler)
        for fut in self._waiters.pop(h.id, ()):
            if not fut.done():
                fut.set_result(None)

    def _credit_ready(self) -> None:
        waiters, self._credit_waiters = self._credit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _wake_everyone(self) -> None:
        self._credit_ready()
        for hid in list(self._waiters):
            for fut in self._waiters.pop(hid, ()):
                if not fut.done():
                    fut.set_result(None)

    async def _wait_credit_change(self, timeout: Optional[float]) -> None:
        fut = self._loop.create_future()
        self._credit_waiters.append(fut)
        await _await(fut, timeout)

    def _run_handler(self, h: _Handle, handler: Callable[[Message], Any]) -> None:
        for msg in h.take(1 << 30):
            if h.closed:   # closed by a handler of this batch
                break
            if isinstance(h, RemoteService):
                self._answer(msg, handler)
            else:
                try:
                    result = handler(msg)
                    if inspect.isawaitable(result):
                        self._spawn(result)
                except Exception:
                    log.exception("callback for %r raised", msg.subject)

    def _answer(self, msg: Message, handler: Callable[[Message], Any]) -> None:
        try:
            result = handler(msg)
        except Exception as exc:
            fail(msg, exc)
            return
        if inspect.isawaitable(result):
            self._spawn(self._answer_later(msg, result))
        elif result is not None:
            reply(msg, result)

    async def _answer_later(self, msg: Message, awaitable: Any) -> None:
        try:
            result = await awaitable
        except Exception as exc:
            fail(msg, exc)
            return
        if result is not None:
            reply(msg, result)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, h: _Handle, max_count: int, timeout: Optional[float]) -> List[Message]:
        deadline = _deadline(timeout)
        while True:
            msgs = h.take(max_count)   # synchronous: a cancellation can never split it
            if msgs:
                return msgs
            if self.closed:
                raise errors.Closed("connection is closed")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.Timeout("timed out waiting for a message")
            fut = self._loop.create_future()
            waiters = self._waiters.setdefault(h.id, [])
            waiters.append(fut)
            try:
                await _await(fut, left)   # expired: the loop raises Timeout
            finally:
                if fut in waiters:
                    waiters.remove(fut)

    # -- pub/sub ----------------------------------------------------------------------------------
    async def publish(self, subject: str, payload: Any, headers: Headers = None, *,
                      timeout: Optional[float] = None) -> None:
        """Buffer one message, waiting up to ``timeout`` for broker credit;
        everything buffered in one loop tick leaves as one frame."""
        if not self.proto.can_publish():
            await self._credit(timeout)
        self.publish_nowait(subject, payload, headers)

    async def publish_many(self, subject: str, payloads: Sequence[Any], headers: Headers = None,
                           *, timeout: Optional[float] = None) -> None:
        if not self.proto.can_publish():
            await self._credit(timeout)
        self.proto.outbox.publish_many(subject, payloads, headers)

    async def _credit(self, timeout: Optional[float]) -> None:
        deadline = _deadline(timeout)
        while not self.proto.can_publish():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.WouldBlock("the broker has not granted publish credit in time")
            await self._wait_credit_change(left)

    async def flush(self, timeout: Optional[float] = 5.0) -> None:
        """Send everything now and wait until the broker has applied it (the
        publisher confirm; see ``Client.flush``)."""
        self.proto.flush()
        deadline = _deadline(timeout)
        while not self.proto.applied() and not self.closed:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.Timeout("flush timed out (no credit from the broker)")
            await self._wait_credit_change(left)
        self.proto.take_loss()

    def subscribe(self, pattern: str, *, capacity: int = 8192, overflow: str = "block",
                  window: Optional[int] = None,
                  callback: Optional[Callable[[Message], Any]] = None,
                  max_bytes: int = 0) -> "Subscription":
        """As ``Client.subscribe``; ``callback`` may be a coroutine function."""
        h = self.proto.subscribe(pattern, capacity, overflow, window, max_bytes)
        if callback is not None:
            self._handlers[h.id] = callback
        return Subscription(self, h)

    # -- queues ----------------------------------------------------------------------------
    async def declare_queue(self, name: str, *, bind: Union[str, Sequence[str]] = (),
                            capacity: int = 65536, overflow: str = "block",
                            timeout: float = 5.0, **options: Any) -> None:
        fut = self._loop.create_future()
        binds = [bind] if isinstance(bind, str) else list(bind)
        self.proto.declare_queue(name, binds, capacity, overflow, options,
                                 partial(settle_future, fut))
        result = await _await(fut, timeout, EXPIRED)
        if result is EXPIRED:
            raise errors.Timeout(f"declare_queue({name!r}) got no answer")
        if isinstance(result, BaseException):
            raise result

    async def send(self, queue: str, payload: Any, headers: Headers = None, *,
                   timeout: Optional[float] = None) -> None:
        if not self.proto.can_publish():
            await self._credit(timeout)
        self.proto.send(queue, payload, headers)

    async def send_many(self, queue: str, payloads: Sequence[Any], headers: Headers = None, *,
                        timeout: Optional[float] = None) -> None:
        if not self.proto.can_publish():
            await self._credit(timeout)
        self.proto.outbox.send_many(queue, payloads, headers)

    def consume(self, queue: str, *, prefetch: int = 64) -> "Consumer":
        return Consumer(self, self.proto.consume(queue, prefetch))

    # -- request/reply ---------------------------------------------------------------------
    async def request(self, service: str, payload: Any, headers: Headers = None, *,
                      timeout: Optional[float] = 5.0) -> Message:
        """Ask ``service``; many may be in flight at once (pipelining).
        ``timeout`` None (or infinity) sets no deadline."""
        fut = self._loop.create_future()
        # No timer per request: the broker answers Timeout at the deadline, and
        # the protocol's sweep (each tick) fails requests it never answers.
        rid, _ = self.proto.request(service, payload, headers, timeout,
                                    partial(settle_future, fut))
        try:
            result = await fut
        except BaseException:   # cancelled (fut is then done too): a late reply is dropped
            self.proto.forget_request(rid)
            raise
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def serve(self, name: str, handler: Optional[Callable[[Message], Any]] = None, *,
              concurrency: int = 64) -> "Responder":
        """Answer requests to ``name``; ``handler`` may be sync or async."""
        h = self.proto.serve(name, concurrency)
        if handler is not None:
            self._handlers[h.id] = handler
        return Responder(self, h)

    async def stats(self, timeout: float = 5.0) -> Dict[str, Any]:
        fut = self._loop.create_future()
        self.proto.stats(partial(settle_future, fut))
        result = await _await(fut, timeout, EXPIRED)
        if result is EXPIRED:
            raise errors.Timeout("stats request timed out")
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]


def _would_block(timeout: Optional[float]) -> None:
    raise errors.WouldBlock("publish buffer full; await publish() or flush()")


class _AsyncReceiver:
    """An inbox to await: shared by subscriptions, consumers and responders."""

    def __init__(self, conn: Connection, handle: Any) -> None:
        self._conn = conn
        self._h = handle

    async def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message. Cancelling this loses nothing."""
        return (await self._conn._take(self._h, 1, timeout))[0]

    async def recv_many(self, max_count: int = 1024,
                        timeout: Optional[float] = None) -> List[Message]:
        """Up to ``max_count`` messages, waiting up to ``timeout`` for the
        first; ``timeout=0`` does not wait: ``[]`` when none is waiting, as
        the sync client gives."""
        if timeout == 0:
            return self._h.take(max_count)  # type: ignore[no-any-return]
        return await self._conn._take(self._h, max_count, timeout)

    def recv_nowait(self) -> Message:
        msgs = self._h.take(1)
        if not msgs:
            raise errors.WouldBlock("no message waiting")
        return msgs[0]  # type: ignore[no-any-return]

    def __aiter__(self) -> "_AsyncReceiver":
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except errors.Closed:
            raise StopAsyncIteration from None

    @property
    def closed(self) -> bool:
        return bool(self._h.ended)

    @property
    def pending(self) -> int:
        return int(self._h.pending)

    def close(self) -> None:
        self._conn._handlers.pop(self._h.id, None)
        self._conn.proto.close_handle(self._h)
        self._conn._wake_everyone()


class Subscription(_AsyncReceiver):
    _h: RemoteSubscription

    @property
    def pattern(self) -> str:
        return self._h.pattern

    def recv_payloads(self, max_count: int = 1 << 30) -> List[Any]:
        """Up to ``max_count`` payloads, without waiting or Message objects."""
        return self._h.take(max_count, payloads=True)

    @property
    def dropped(self) -> int:
        return self._h.dropped


class Consumer(_AsyncReceiver):
    _h: RemoteConsumer


class Responder(_AsyncReceiver):
    _h: RemoteService


async def connect(url: str = "tcp://127.0.0.1:7450", *, timeout: Optional[float] = 5.0,
                  **kwargs: Any) -> Connection:
    """Connect and wait for the broker's welcome."""
    return await Connection(url, **kwargs)._start(timeout)
