"""The embedded router: pub/sub, work queues and request/reply in-process.

Everything here is thin Python over the native core (``_router``,
``_ring``): routing and fan-out happen in Cython; this layer adds waiting,
acknowledgement bookkeeping and responders. The broker serves remote
clients with this very class, so embedded and remote semantics are one.

Threading: every method may be called from any thread. The native core
mutates its state with the GIL held and calls back into Python only after
a mutation is complete, so concurrent publishers neither corrupt a ring
nor lose a message. Callbacks (``subscribe(callback=...)``, ``serve(handler)``)
run in whichever publishing thread finds them ready, one at a time, in order
per subscription; a publish from inside a callback is delivered after the
callback returns (run-to-completion), never recursively.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from . import errors
from ._impl import CoreRouter, Message, Ring, check_pattern, check_subject, policy_code

log = logging.getLogger("ringcast.router")

Headers = Optional[Dict[str, str]]
Handler = Callable[[Message], Any]
T = TypeVar("T")

_DEFAULT_CAPACITY = 8192
_MAX_REQUEST_BACKLOG = 1 << 20  # requests waiting for a responder with room


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if timeout < 0:
        raise errors.LimitExceeded(f"timeout must be >= 0, got {timeout!r}")
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.monotonic()


class _Signal:
    """Wakes every thread and every asyncio task waiting on one source.

    A ring's ready/space callback is one-shot and single-slot; this object is
    what gets armed, and it fans the wake-up out to all current waiters, so
    several consumers (sync or async, any thread) can wait on one queue.
    """

    __slots__ = ("_cond", "_futures", "_callbacks")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._futures: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []
        self._callbacks: List[Callable[[], None]] = []

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
            futures, self._futures = self._futures, []
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
        if not futures:
            return
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, fut in futures:
            if loop is running:
                if not fut.done():
                    fut.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    def wait(self, poll: Callable[[], Optional[T]], arm: Callable[[], bool],
             deadline: Optional[float]) -> T:
        """Block until ``poll()`` yields an item; ``arm()`` registers interest
        and returns False when something is already there."""
        while True:
            item = poll()
            if item is not None:
                return item
            with self._cond:
                if not arm():
                    continue
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise errors.Timeout("timed out waiting")
                self._cond.wait(remaining)

    async def wait_async(self, poll: Callable[[], Optional[T]], arm: Callable[[], bool],
                         deadline: Optional[float]) -> T:
        """As ``wait``, for asyncio. Cancellation-safe: the item is taken only
        by ``poll()``, which runs synchronously right before returning it."""
        loop = asyncio.get_running_loop()
        while True:
            item = poll()
            if item is not None:
                return item
            fut: asyncio.Future[None] = loop.create_future()
            with self._cond:
                self._futures.append((loop, fut))
                armed = arm()
            if not armed:
                self._forget(fut)
                continue
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                self._forget(fut)
                raise errors.Timeout("timed out waiting")
            try:
                if remaining is None:
                    await fut
                else:
                    await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                raise errors.Timeout("timed out waiting") from None
            finally:
                self._forget(fut)

    def on_ready(self, callback: Callable[[], None], arm: Callable[[], bool]) -> bool:
        """Register a one-shot ``callback()`` for the next wake-up; False (not
        registered) when ``arm()`` says something is already waiting."""
        with self._cond:
            if not arm():
                return False
            self._callbacks.append(callback)
            return True

    def _forget(self, fut: "asyncio.Future[None]") -> None:
        with self._cond:
            self._futures = [(lp, f) for lp, f in self._futures if f is not fut]


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Dispatcher:
    """Runs callbacks of ready sources, one thread at a time (see module doc)."""

    def __init__(self) -> None:
        self._ready: Deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self.owner: Optional[int] = None  # thread running callbacks now

    def schedule(self, run: Callable[[], None]) -> None:
        self._ready.append(run)
        while self._lock.acquire(blocking=False):
            self.owner = threading.get_ident()
            try:
                while self._ready:
                    self._ready.popleft()()
            finally:
                self.owner = None
                self._lock.release()
            if not self._ready:
                return


class Subscription:
    """Messages on subjects matching one pattern, buffered in a native ring.

    Iterate it, call ``recv``/``recv_many``/``recv_payloads``, or give
    ``subscribe`` a callback. ``dropped`` counts messages the overflow policy
    discarded; ``Message.seq`` jumps where they were.
    """

    def __init__(self, router: "Router", pattern: str, capacity: int, overflow: str,
                 callback: Optional[Handler]) -> None:
        self.pattern = pattern
        self.ring = Ring(capacity, overflow)
        self._router = router
        self._signal = _Signal()
        self._callback = callback
        self.callback_errors = 0
        if callback is not None:
            self.ring.arm_ready(self._schedule)

    # -- receiving -------------------------------------------------------
    def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message; waits up to ``timeout`` seconds (None: forever)."""
        return self._signal.wait(self._poll, self._arm, _deadline(timeout))

    def recv_nowait(self) -> Message:
        """Next message, or ``WouldBlock`` when none is waiting."""
        msg = self._poll()
        if msg is None:
            raise errors.WouldBlock("no message waiting")
        return msg

    def recv_many(self, max_count: int = 1024, timeout: Optional[float] = 0.0) -> List[Message]:
        """Up to ``max_count`` messages; waits up to ``timeout`` for the first."""
        msgs = self.ring.pop_many(max_count)
        if msgs or timeout == 0:
            self._check_open(msgs)
            return msgs
        first = self.recv(timeout)
        return [first] + self.ring.pop_many(max_count - 1)

    def recv_payloads(self, max_count: int = 1 << 30) -> List[Any]:
        """Up to ``max_count`` payloads without Message objects: the batch fast path."""
        return self.ring.pop_payloads(max_count)

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.recv()
            except errors.Closed:
                return

    def _poll(self) -> Optional[Message]:
        msg = self.ring.pop()
        if msg is None:
            self._check_open(None)
        return msg

    def _arm(self) -> bool:
        return self.ring.arm_ready(self._signal.notify) or self.ring.closed

    def _check_open(self, got: Any) -> None:
        if not got and self.ring.closed:
            raise errors.Closed(f"subscription {self.pattern!r} is closed")

    # -- callbacks ---------------------------------------------------------
    def _schedule(self) -> None:
        self._router._dispatcher.schedule(self._run_callbacks)

    def _run_callbacks(self) -> None:
        callback = self._callback
        assert callback is not None
        for msg in self.ring.pop_many(1024):
            try:
                callback(msg)
            except Exception:
                self.callback_errors += 1
                log.exception("subscription callback for %r raised", self.pattern)
        if not self.ring.closed and not self.ring.arm_ready(self._schedule):
            self._schedule()

    def on_ready(self, callback: Callable[[], None]) -> bool:
        """Arm a one-shot ``callback()`` for when the next message is stored.

        Returns False (not armed) when messages are already waiting. This is
        how an event loop learns there is work without a call per message.
        """
        return self._signal.on_ready(callback, self._arm)

    # -- state ---------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return int(self.ring.dropped)

    @property
    def pending(self) -> int:
        return len(self.ring)

    @property
    def closed(self) -> bool:
        return bool(self.ring.closed)

    def close(self) -> None:
        """Stop receiving; waiters get ``Closed``. Unread messages are discarded."""
        if self.ring.closed:
            return
        self._router._unsubscribe(self)
        self.ring.close()
        self._signal.notify()

    def stats(self) -> Dict[str, Any]:
        return {
            "pattern": self.pattern,
            "pending": self.pending,
            "capacity": self.ring.capacity,
            "overflow": self.ring.policy_name,
            "offered": self.ring.offered,
            "dropped": self.dropped,
            "last_seq": self.ring.last_seq,
        }

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} pending={self.pending} dropped={self.dropped}>"


class Queue:
    """A named work queue: each message goes to exactly one consumer and
    stays owed until acked. Declared with ``Router.declare_queue``."""

    def __init__(self, router: "Router", name: str, bind: Sequence[str], capacity: int,
                 overflow: str, dead_letter: Optional[str]) -> None:
        self.name = name
        self.bind = tuple(bind)
        self.dead_letter = dead_letter
        self.ring = Ring(capacity, overflow)
        self._router = router
        self._signal = _Signal()
        # given back by nack or by a closing consumer; served before the ring
        self._returned: Deque[Message] = collections.deque()
        self._tags = itertools.count(1)
        self.consumers: List["Consumer"] = []
        self.acked = 0
        self.rejected = 0
        self.redelivered = 0

    def _take(self, consumer: "Consumer") -> Optional[Message]:
        if self._returned:
            old = self._returned.popleft()
            msg = Message(old.subject, old.payload, old.headers, old.seq, True,
                          old.delivery_count + 1)
            self.redelivered += 1
        else:
            msg = self.ring.pop()
            if msg is None:
                return None
        msg._owner = consumer
        msg._tag = next(self._tags)
        consumer._unacked[msg._tag] = msg
        return msg

    def _give_back(self, msgs: Iterable[Message]) -> None:
        self._returned.extendleft(reversed(list(msgs)))
        self._signal.notify()

    def _reject(self, msg: Message) -> None:
        self.rejected += 1
        if self.dead_letter is None:
            log.info("queue %r rejected message seq=%d (no dead-letter queue)", self.name, msg.seq)
            return
        headers = dict(msg.headers or {})
        headers.update({"x-dead-letter-from": self.name, "x-dead-letter-reason": "rejected",
                        "x-delivery-count": str(msg.delivery_count)})
        self._router.send(self.dead_letter, msg.payload, headers, timeout=0)

    def _arm(self) -> bool:
        return not self._returned and bool(self.ring.arm_ready(self._signal.notify))

    def on_ready(self, callback: Callable[[], None]) -> bool:
        """One-shot ``callback()`` when a message is next available to consumers;
        False (not armed) when one is available now."""
        return self._signal.on_ready(callback, self._arm)

    @property
    def depth(self) -> int:
        """Messages waiting for a consumer (not counting unacked ones)."""
        return len(self.ring) + len(self._returned)

    @property
    def unacked(self) -> int:
        return sum(len(c._unacked) for c in self.consumers)

    def stats(self) -> Dict[str, Any]:
        return {
            "depth": self.depth,
            "unacked": self.unacked,
            "consumers": len(self.consumers),
            "capacity": self.ring.capacity,
            "overflow": self.ring.policy_name,
            "dropped": int(self.ring.dropped),
            "acked": self.acked,
            "redelivered": self.redelivered,
            "rejected": self.rejected,
            "bind": list(self.bind),
        }


class Consumer:
    """One competing consumer of a queue. ``prefetch`` caps unacked messages
    (0: no cap). Closing it returns every unacked message to the queue,
    flagged redelivered."""

    def __init__(self, queue: Queue, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self._signal = queue._signal  # consumers of one queue wait together
        self._unacked: Dict[int, Message] = {}
        self.closed = False

    @property
    def credit(self) -> Optional[int]:
        """How many more messages it may hold unacked (None: unlimited)."""
        return None if not self.prefetch else max(0, self.prefetch - len(self._unacked))

    def _poll(self) -> Optional[Message]:
        if self.closed:
            raise errors.Closed(f"consumer of {self.queue.name!r} is closed")
        if self.prefetch and len(self._unacked) >= self.prefetch:
            raise errors.WouldBlock(
                f"prefetch limit {self.prefetch} reached on {self.queue.name!r}: ack first"
            )
        return self.queue._take(self)

    def _arm(self) -> bool:
        return self.closed or self.queue._arm()

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message of the queue; ack or nack it when done."""
        return self._signal.wait(self._poll, self._arm, _deadline(timeout))

    def recv_nowait(self) -> Message:
        msg = self._poll()
        if msg is None:
            raise errors.WouldBlock(f"queue {self.queue.name!r} is empty")
        return msg

    def recv_many(self, max_count: int = 1024) -> List[Message]:
        """Up to ``max_count`` waiting messages (within credit), without waiting."""
        out: List[Message] = []
        credit = self.credit
        limit = max_count if credit is None else min(max_count, credit)
        while len(out) < limit:
            msg = self._poll()
            if msg is None:
                break
            out.append(msg)
        return out

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.recv()
            except errors.Closed:
                return

    def _settled(self, msg: Message) -> Message:
        if self._unacked.pop(msg._tag, None) is None:
            raise errors.AckError(
                f"delivery {msg._tag} on {self.queue.name!r} is unknown or already settled"
            )
        return msg

    def ack(self, msg: Message) -> None:
        self._settled(msg)
        self.queue.acked += 1

    def nack(self, msg: Message, requeue: bool = True) -> None:
        self._settled(msg)
        if requeue:
            self.queue._give_back([msg])
        else:
            self.queue._reject(msg)

    def respond(self, msg: Message, payload: Any, headers: Headers) -> None:
        raise errors.RingcastError("queue messages are acked, not responded to")

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        owed = [self._unacked[t] for t in sorted(self._unacked)]
        self._unacked.clear()
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        self.queue._give_back(owed)

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PendingRequest:
    """A request in flight: answered once, failed once, or expired once.

    ``on_done`` receives the reply Message or a RingcastError. Answers that
    arrive after it is settled are counted (``Service.late_replies``) and
    never delivered to anyone.
    """

    __slots__ = ("service", "on_done", "deadline", "settled")

    def __init__(self, service: "_Service", on_done: Callable[[Any], None],
                 deadline: Optional[float]) -> None:
        self.service = service
        self.on_done = on_done
        self.deadline = deadline
        self.settled = False

    def _settle(self, result: Any) -> bool:
        if self.settled:
            return False
        self.settled = True
        self.on_done(result)
        return True

    def ack(self, msg: Message) -> None:
        raise errors.RingcastError("requests are responded to, not acked")

    nack = ack  # type: ignore[assignment]

    def respond(self, msg: Message, payload: Any, headers: Headers) -> None:
        reply = Message(self.service.name, payload, headers)
        if not self._settle(reply):
            self.service.late_replies += 1

    def fail(self, exc: errors.RingcastError) -> bool:
        """Settle with an error (handler failure, timeout, no responders)."""
        return self._settle(exc)

    def expire(self) -> bool:
        return self._settle(errors.Timeout(f"request to {self.service.name!r} timed out"))


class Responder:
    """One responder of a service: requests arrive in its own ring (block
    policy); ``handler`` answers them, or iterate and ``msg.respond(...)``."""

    def __init__(self, router: "Router", service: "_Service", handler: Optional[Handler],
                 capacity: int) -> None:
        self.name = service.name
        self.ring = Ring(capacity, "block")
        self._service = service
        self._router = router
        self._handler = handler
        self._signal = _Signal()
        self._pending: Deque[PendingRequest] = collections.deque()  # parallel to the ring
        self.handled = 0
        if handler is not None:
            self.ring.arm_ready(self._schedule)

    def _offer(self, payload: Any, headers: Headers, pending: PendingRequest) -> bool:
        self._pending.append(pending)  # first: a handler may run inside put()
        if self.ring.put(self.name, payload, headers) < 0:
            self._pending.pop()
            return False
        return True

    def _poll(self) -> Optional[Message]:
        while True:
            msg = self.ring.pop()
            if msg is None:
                if self.ring.closed:
                    raise errors.Closed(f"responder for {self.name!r} is closed")
                return None
            pending = self._pending.popleft()
            self._service.refill(self)
            if not pending.settled:  # expired or withdrawn requests are never handed out
                msg._owner = pending
                return msg
            self._service.expired += 1

    def _arm(self) -> bool:
        return bool(self.ring.arm_ready(self._signal.notify)) or self.ring.closed

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Next request; answer it with ``msg.respond(payload)``."""
        return self._signal.wait(self._poll, self._arm, _deadline(timeout))

    def recv_nowait(self) -> Optional[Message]:
        return self._poll()

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield self.recv()
            except errors.Closed:
                return

    def _schedule(self) -> None:
        self._router._dispatcher.schedule(self._run_handler)

    def _run_handler(self) -> None:
        handler = self._handler
        assert handler is not None
        while not self.ring.closed:
            msg = self._poll()
            if msg is None:
                break
            answer(msg, handler)
            self.handled += 1
        if not self.ring.closed and not self.ring.arm_ready(self._schedule):
            self._schedule()

    @property
    def pending(self) -> int:
        return len(self.ring)

    def close(self) -> None:
        """Stop serving; queued requests go to the other responders, or fail
        with NoResponders when there are none."""
        if self.ring.closed:
            return
        self._service.responders.remove(self)
        self.ring.close()
        self._signal.notify()
        while True:
            msg = self.ring.pop()
            if msg is None:
                break
            pending = self._pending.popleft()
            if not pending.settled:
                self._router._dispatch_request(self._service, msg.payload, msg.headers, pending)
        service = self._service
        for other in service.responders:
            service.refill(other)
        if not service.responders:
            while service.backlog:
                service.backlog.popleft()[2].fail(
                    errors.NoResponders(f"no responders left for {service.name!r}"))

    def __enter__(self) -> "Responder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def answer(msg: Message, handler: Handler) -> None:
    """Run ``handler`` on a request and respond with its result; a raising
    handler fails the request with ServiceError instead of killing anything."""
    pending = msg._owner
    try:
        result = handler(msg)
    except Exception as exc:  # the requester gets the error, the responder lives on
        log.exception("handler for %r raised", msg.subject)
        pending.fail(errors.ServiceError(f"{type(exc).__name__}: {exc}"))
        return
    if result is not None and not pending.settled:
        msg.respond(result)


class _Service:
    """Responders of one name, plus requests waiting for room in any of them."""

    __slots__ = ("name", "responders", "backlog", "_next", "requests", "late_replies",
                 "failed", "expired")

    def __init__(self, name: str) -> None:
        self.name = name
        self.responders: List[Responder] = []
        self.backlog: Deque[Tuple[Any, Headers, PendingRequest]] = collections.deque()
        self._next = 0
        self.requests = 0
        self.late_replies = 0
        self.failed = 0
        self.expired = 0

    def refill(self, responder: Responder) -> None:
        """Move backlogged requests into ``responder`` while it has room."""
        while self.backlog and responder.ring.free and not responder.ring.closed:
            payload, headers, pending = self.backlog.popleft()
            if pending.settled:
                self.expired += 1
            else:
                responder._offer(payload, headers, pending)

    def pick(self) -> List[Responder]:
        """Responders in round-robin order starting after the last one used."""
        n = len(self.responders)
        start = self._next % n if n else 0
        self._next = start + 1
        return self.responders[start:] + self.responders[:start]


class Router(CoreRouter):
    """In-process message router: pub/sub, queues and request/reply.

    A subclass of the native ``CoreRouter`` (as pyzmq's sugar subclasses its
    backend): ``publish``, ``try_publish`` and ``publish_many`` are the native
    methods themselves, so a publish is one native call; this class adds the
    waiting they fall back to when a ``block`` buffer is full, and the
    friendly objects around them.
    """

    def __init__(self, *, cache_size: int = 8192) -> None:
        super().__init__(cache_size)
        self._subs: Dict[int, Subscription] = {}
        self._queues: Dict[str, Queue] = {}
        self._services: Dict[str, _Service] = {}
        self._dispatcher = _Dispatcher()
        self._space = _Signal()
        self._lock = threading.RLock()  # guards the Python-side tables
        self.closed = False

    # -- pub/sub -----------------------------------------------------------------
    def subscribe(self, pattern: str, *, capacity: int = _DEFAULT_CAPACITY,
                  overflow: str = "block", callback: Optional[Handler] = None) -> Subscription:
        """Receive every message published on a subject matching ``pattern``
        (``*`` one token, ``>`` one or more trailing tokens)."""
        self._check_open()
        check_pattern(pattern)
        policy_code(overflow)
        sub = Subscription(self, pattern, capacity, overflow, callback)
        with self._lock:
            self.add(pattern, sub.ring)
            self._subs[id(sub)] = sub
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.pop(id(sub), None) is not None:
                self.remove(sub.pattern, sub.ring)

    def _on_blocked(self, subject: str, payload: Any, headers: Headers,
                    timeout: Optional[float]) -> int:
        deadline = _deadline(timeout)
        while True:
            self._wait_space(self.blocked_ring, deadline)
            n: int = self.try_publish(subject, payload, headers)
            if n >= 0:
                return n

    def _on_blocked_many(self, subject: str, items: List[Any], headers: Headers,
                         timeout: Optional[float], done: int) -> int:
        deadline = _deadline(timeout)
        while done < len(items):
            self._wait_space(self.blocked_ring, deadline)
            done += self.try_publish_many(subject, items[done:], headers)
        return done

    def _wait_space(self, ring: Ring, deadline: Optional[float]) -> None:
        if deadline is not None and deadline <= time.monotonic():
            raise errors.WouldBlock(f"a block-policy buffer is full ({ring!r})")
        try:
            self._space.wait(lambda: True if ring.free or ring.closed else None,
                             lambda: bool(ring.arm_space(self._space.notify)) or ring.closed,
                             deadline)
        except errors.Timeout:
            raise errors.WouldBlock(
                f"a block-policy buffer stayed full until the deadline ({ring!r})"
            ) from None

    # -- queues --------------------------------------------------------------------
    def declare_queue(self, name: str, *, bind: Union[str, Sequence[str]] = (),
                      capacity: int = 65536, overflow: str = "block",
                      dead_letter: Optional[str] = None) -> Queue:
        """Create the queue ``name`` (idempotent). Messages published on a
        subject matching a ``bind`` pattern land in it too."""
        self._check_open()
        check_subject(name)
        binds = (bind,) if isinstance(bind, str) else tuple(bind)
        for pattern in binds:
            check_pattern(pattern)
        policy_code(overflow)
        with self._lock:
            q = self._queues.get(name)
            if q is not None:
                for pattern in binds:
                    if pattern not in q.bind:
                        self.add(pattern, q.ring)
                        q.bind += (pattern,)
                return q
            q = Queue(self, name, binds, capacity, overflow, dead_letter)
            for pattern in binds:
                self.add(pattern, q.ring)
            self._queues[name] = q
            return q

    def queue(self, name: str) -> Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise errors.NotFound(f"no queue named {name!r}") from None

    def send(self, queue: str, payload: Any, headers: Headers = None, *,
             timeout: Optional[float] = None) -> None:
        """Put one message on a queue (declared on first use)."""
        q = self._queues.get(queue) or self.declare_queue(queue)
        if q.ring.put(queue, payload, headers) >= 0:
            return
        deadline = _deadline(timeout)
        while q.ring.put(queue, payload, headers) < 0:
            self._wait_space(q.ring, deadline)

    def consume(self, queue: str, *, prefetch: int = 0) -> Consumer:
        """A competing consumer of ``queue`` (declared on first use)."""
        q = self._queues.get(queue) or self.declare_queue(queue)
        consumer = Consumer(q, prefetch)
        q.consumers.append(consumer)
        return consumer

    # -- request/reply ---------------------------------------------------------------
    def serve(self, name: str, handler: Optional[Handler] = None, *,
              capacity: int = 1024) -> Responder:
        """Answer requests to ``name``. ``handler(msg)`` returns the reply
        payload; without a handler, iterate the responder and ``msg.respond``.
        Several responders of one name share its requests round-robin."""
        self._check_open()
        check_subject(name)
        with self._lock:
            service = self._services.get(name)
            if service is None:
                service = self._services[name] = _Service(name)
            responder = Responder(self, service, handler, capacity)
            service.responders.append(responder)
        return responder

    def request_cb(self, name: str, payload: Any, on_done: Callable[[Any], None],
                   headers: Headers = None, *, timeout: Optional[float] = None) -> PendingRequest:
        """Start a request without waiting. ``on_done`` gets the reply Message
        or an error, exactly once; the caller expires it at ``deadline``."""
        service = self._services.get(name)
        if service is None or not service.responders:
            check_subject(name)
            raise errors.NoResponders(f"no responders for {name!r}")
        pending = PendingRequest(service, on_done, _deadline(timeout))
        service.requests += 1
        self._dispatch_request(service, payload, headers, pending)
        return pending

    def _dispatch_request(self, service: _Service, payload: Any, headers: Headers,
                          pending: PendingRequest) -> None:
        if not service.responders:
            pending.fail(errors.NoResponders(f"no responders left for {service.name!r}"))
            return
        if not service.backlog:
            for responder in service.pick():
                if responder._offer(payload, headers, pending):
                    return
        if len(service.backlog) >= _MAX_REQUEST_BACKLOG:
            service.failed += 1
            pending.fail(errors.WouldBlock(
                f"every responder of {service.name!r} is full and "
                f"{_MAX_REQUEST_BACKLOG} requests already wait"))
            return
        service.backlog.append((payload, headers, pending))

    def request(self, name: str, payload: Any, headers: Headers = None, *,
                timeout: float = 5.0) -> Message:
        """Ask ``name`` and wait for its one reply (Timeout / NoResponders)."""
        if self._dispatcher.owner == threading.get_ident():
            raise errors.RingcastError(
                "request() inside a callback or handler would wait on itself; use request_cb()"
            )
        box: List[Any] = []
        done = threading.Event()

        def settle(result: Any) -> None:
            box.append(result)
            done.set()

        pending = self.request_cb(name, payload, settle, headers, timeout=timeout)
        if not done.wait(timeout):
            pending.expire()
        return _unbox(box[0])

    # -- lifecycle ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise errors.Closed("router is closed")

    def close(self) -> None:
        """Close every subscription, consumer and responder; waiters get Closed."""
        with self._lock:
            self.closed = True
            subs = list(self._subs.values())
            consumers = [c for q in self._queues.values() for c in q.consumers]
            responders = [r for s in self._services.values() for r in s.responders]
        for sub in subs:
            sub.close()
        for consumer in consumers:
            consumer.close()
        for responder in responders:
            responder.close()

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> Dict[str, Any]:
        return {
            "published": self.published,
            "delivered": self.delivered,
            "subscriptions": [s.stats() for s in list(self._subs.values())],
            "queues": {name: q.stats() for name, q in list(self._queues.items())},
            "services": {
                name: {"responders": len(s.responders), "requests": s.requests,
                       "late_replies": s.late_replies, "failed": s.failed,
                       "expired": s.expired, "backlog": len(s.backlog)}
                for name, s in list(self._services.items())
            },
            "cache": {"size": self.cache_size, "misses": self.cache_misses},
        }


def _unbox(result: Any) -> Message:
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]
