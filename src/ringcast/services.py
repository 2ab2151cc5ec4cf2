"""Request/reply: services, their responders and requests in flight.

A service is a name with responders; each responder buffers requests in its
own native ring, and requests wait in the service's backlog while every
responder is full. A request is settled exactly once -- answered, failed or
expired -- and answers arriving after that are counted, never delivered.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

from . import errors
from ._impl import Handler, Headers, Message, Ring, check_message
from ._waiting import Source, _Signal

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("ringcast.services")

#: requests waiting for a responder with room, per service
MAX_REQUEST_BACKLOG = 1 << 20

#: what a service counts (stats), kept in the router's totals once it is forgotten
COUNTS = ("requests", "late_replies", "failed", "expired")


class ServiceMember(Protocol):
    """What a service needs of a responder: :class:`Responder` here, the
    broker's remote responders there."""

    def has_room(self) -> bool: ...

    def _offer(self, payload: Any, headers: Headers, pending: "PendingRequest") -> bool: ...

    def close(self) -> None: ...


class PendingRequest:
    """A request in flight: answered once, failed once, or expired once.

    ``on_done`` receives the reply Message or a RingcastError. Answers that
    arrive after it is settled are counted (``Service.late_replies``) and
    never delivered to anyone.
    """

    __slots__ = ("service", "on_done", "deadline", "settled", "_unclaimed")

    def __init__(self, service: "_Service", on_done: Callable[[Any], None],
                 deadline: Optional[float]) -> None:
        self.service = service
        self.on_done = on_done
        self.deadline = deadline
        self.settled = False
        # the one settle that pops it wins: list.pop is atomic (free-threaded
        # builds too), where checking ``settled`` then setting it is not, and
        # it costs less than a lock
        self._unclaimed = [True]

    def _settle(self, result: Any) -> bool:
        try:
            self._unclaimed.pop()
        except IndexError:   # another thread settled it first
            return False
        self.settled = True
        self.on_done(result)
        return True

    def ack(self, msg: Message) -> None:
        raise errors.RingcastError("requests are responded to, not acked")

    def nack(self, msg: Message, requeue: bool = True) -> None:
        raise errors.RingcastError("requests are responded to, not nacked")

    def respond(self, msg: Optional[Message], payload: Any, headers: Headers) -> None:
        check_message(payload, headers)
        reply = Message(self.service.name, payload, headers)
        if not self._settle(reply):
            self.service.count("late_replies")

    def fail(self, exc: errors.RingcastError) -> bool:
        """Settle with an error (handler failure, timeout, no responders)."""
        return self._settle(exc)

    def expire(self) -> bool:
        return self._settle(errors.Timeout(f"request to {self.service.name!r} timed out"))


class Responder(Source):
    """One responder of a service: requests arrive in its own ring (block
    policy); ``handler`` answers them, or iterate and ``msg.respond(...)``."""

    def __init__(self, router: "Router", service: "_Service", handler: Optional[Handler],
                 capacity: int, threaded: bool = False) -> None:
        self.name = service.name
        self.ring = Ring(capacity, "block")
        self._service = service
        self._router = router
        self._handler = handler
        self._signal = _Signal()
        self._pending: Deque[PendingRequest] = collections.deque()  # parallel to the ring
        # held while the ring and _pending change together, so that each
        # message stays paired with its own request whatever threads offer,
        # take and give back at once; never held while a handler runs
        self._pairing = threading.RLock()
        self._deferred = False   # made ready inside _offer's put: see _ready
        self.handled = 0
        if handler is not None and threaded:
            threading.Thread(target=self._run_threaded, args=(handler,), daemon=True,
                             name=f"ringcast-serve-{self.name}").start()
        elif handler is not None:
            self.ring.arm_ready(self._ready)

    def _offer(self, payload: Any, headers: Headers, pending: PendingRequest) -> bool:
        pairing = self._pairing   # not ``with``: half the cost, on every request
        pairing.acquire()
        try:
            self._pending.append(pending)
            if self.ring.put(self.name, payload, headers) < 0:
                self._pending.pop()
                return False
        finally:
            pairing.release()
        if self._deferred:   # the put made the handler ready: run it now, lock let go
            self._deferred = False
            self._schedule()
        if self.ring.closed:
            # closed by another thread since the service listed it: a
            # closed ring still takes a put, and close() may have given
            # back what it held before this one was in it
            self._give_back()
        return True

    def _poll(self) -> Optional[Message]:
        pairing = self._pairing   # a close() may be giving back meanwhile
        while True:
            pairing.acquire()
            try:
                msg = self.ring.pop()
                if msg is not None:
                    pending = self._pending.popleft()
            finally:
                pairing.release()
            if msg is None:
                if self.ring.closed:
                    raise errors.Closed(f"responder for {self.name!r} is closed")
                return None
            self._service.refill(self)
            if not pending.settled:  # expired or withdrawn requests are never handed out
                msg._owner = pending
                return msg
            self._service.count("expired")

    def _arm(self) -> bool:
        return bool(self.ring.arm_ready(self._signal.notify)) or self.ring.closed

    def recv_nowait(self) -> Message:
        """Next request, or ``WouldBlock`` when none is waiting."""
        msg = self._poll()
        if msg is None:
            raise errors.WouldBlock(f"no request waiting for {self.name!r}")
        return msg

    def _ready(self) -> None:
        """The ring's ready callback (with a handler): fired inside _offer's
        put, under _pairing, where running the handler would hold _pairing
        all along (other threads offering -- a broker's loop -- would wait
        for it); _offer runs it once it let go. (Fired by close() too: then
        there is nothing to run.)"""
        self._deferred = True

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
        if not self.ring.closed and not self.ring.arm_ready(self._ready):
            self._schedule()

    def _run_threaded(self, handler: Handler) -> None:
        """``serve(..., threaded=True)``: this responder's own thread, so its
        handler may block or make requests without holding up anyone."""
        while True:
            try:
                msg = self.recv()
            except errors.Closed:
                return
            answer(msg, handler)
            self.handled += 1

    @property
    def pending(self) -> int:
        return len(self.ring)

    @property
    def closed(self) -> bool:
        return bool(self.ring.closed)

    def has_room(self) -> bool:
        return bool(self.ring.free) and not self.ring.closed

    def close(self) -> None:
        """Stop serving; queued requests go to the other responders, or fail
        with NoResponders when there are none."""
        if self.ring.closed:
            return
        self._service.responders.remove(self)
        self.ring.close()
        self._signal.notify()
        self._give_back()
        self._service.responder_gone()

    def _give_back(self) -> None:
        """Once closed: queued requests go to the other responders, or fail
        with NoResponders. Each message is taken with its own request under
        _pairing, and dispatched without it (another responder may run a
        handler inline)."""
        while True:
            with self._pairing:
                msg = self.ring.pop()
                if msg is None:
                    break
                pending = self._pending.popleft()
            if not pending.settled:
                self._service.dispatch(msg.payload, msg.headers, pending)


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
    reply(msg, result)


def check_reply(payload: Any, headers: Headers, limit: int) -> None:
    """Refuse a reply that would not reach a remote party: not bytes-like,
    bad headers, or over the broker's message limit (its reader would end
    the session of whoever sent or receives it)."""
    check_message(payload, headers)
    size = len(payload) if type(payload) is bytes else memoryview(payload).nbytes
    if size > limit:
        raise errors.LimitExceeded(f"reply of {size} bytes exceeds the broker's limit of {limit}")


def reply(msg: Message, result: Any) -> None:
    """Respond with a handler's result (None: the handler responds itself).
    A result that cannot be a reply (not bytes-like, too large for a remote
    requester) fails the request with that error: the requester learns why,
    and nothing escapes into the thread that ran the handler."""
    pending = msg._owner
    if result is None or pending.settled:
        return
    try:
        msg.respond(result)
    except errors.RingcastError as exc:
        log.error("handler for %r returned what cannot be a reply: %s", msg.subject, exc)
        pending.fail(exc)


class _Service:
    """Responders of one name, plus requests waiting for room in any of them.

    It lives while it has responders: when the last one leaves, its backlog
    fails and ``on_idle(self)`` lets the router forget it (its counts go to
    the router's totals), so names served once each (``worker.<id>``) do
    not pile up."""

    __slots__ = ("name", "on_idle", "responders", "backlog", "_next", "retired") + COUNTS

    def __init__(self, name: str, on_idle: Callable[["_Service"], None] = lambda _: None) -> None:
        self.name = name
        self.on_idle = on_idle
        self.responders: List[ServiceMember] = []
        self.backlog: Deque[Tuple[Any, Headers, PendingRequest]] = collections.deque()
        self._next = 0
        #: the router's totals, once it forgot this service (see ``count``)
        self.retired: Optional[Dict[str, int]] = None
        self.requests = 0
        self.late_replies = 0
        self.failed = 0
        self.expired = 0

    def count(self, key: str) -> None:
        """One more ``key`` that may come after the service is forgotten (a
        late reply, a request found expired): then into the router's totals,
        which ``stats()`` still reads, not into counts nobody reads."""
        retired = self.retired
        if retired is None:
            setattr(self, key, getattr(self, key) + 1)
        else:
            retired[key] += 1

    def submit(self, payload: Any, headers: Headers, pending: PendingRequest) -> None:
        """A new request (counted) for the next responder with room."""
        self.requests += 1
        self.dispatch(payload, headers, pending)

    def dispatch(self, payload: Any, headers: Headers, pending: PendingRequest) -> None:
        """Give a request to the next responder with room, or backlog it."""
        if not self.responders:
            pending.fail(errors.NoResponders(f"no responders left for {self.name!r}"))
            return
        if not self.backlog:
            responders = self.responders
            for responder in responders if len(responders) == 1 else self.pick():
                if responder._offer(payload, headers, pending):
                    return
        if len(self.backlog) >= MAX_REQUEST_BACKLOG:
            self.failed += 1
            pending.fail(errors.WouldBlock(
                f"every responder of {self.name!r} is full and "
                f"{MAX_REQUEST_BACKLOG} requests already wait"))
            return
        self.backlog.append((payload, headers, pending))
        # A responder on another thread may have made room after we found it
        # full, and refilled from a backlog still without this request: take
        # it up now, or it waits for that responder's next answer (if any).
        # The last one may have left meanwhile: then nobody ever would.
        for responder in list(self.responders):
            if responder.has_room():
                self.refill(responder)
        if not self.responders:
            self.responder_gone()

    def refill(self, responder: ServiceMember) -> None:
        """Move backlogged requests into ``responder`` while it has room."""
        while self.backlog and responder.has_room():
            try:
                item = self.backlog.popleft()
            except IndexError:   # another thread took the last one
                return
            payload, headers, pending = item
            if pending.settled:
                self.expired += 1
            elif not responder._offer(payload, headers, pending):
                self.backlog.appendleft(item)   # filled up meanwhile: keep its place
                return

    def pick(self) -> List[ServiceMember]:
        """Responders in round-robin order starting after the last one used."""
        n = len(self.responders)   # dispatch takes a lone responder without asking
        start = self._next % n if n else 0
        self._next = start + 1
        return self.responders[start:] + self.responders[:start]

    def responder_gone(self) -> None:
        """After a responder left (already removed from ``responders``): the
        others take up the backlog, or it fails when nobody is left."""
        for other in self.responders:
            self.refill(other)
        if not self.responders:
            # another thread may fail it too (a request backlogged meanwhile,
            # another responder leaving): each takes only what is still there
            while self.backlog:
                try:
                    item = self.backlog.popleft()
                except IndexError:   # the other took the last one
                    break
                item[2].fail(errors.NoResponders(f"no responders left for {self.name!r}"))
            self.on_idle(self)
