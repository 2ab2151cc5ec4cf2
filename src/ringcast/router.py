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

import logging
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

from . import errors
from ._args import check_count, check_timeout
from ._impl import (
    CoreRouter,
    Handler,
    Headers,
    Message,
    Ring,
    check_message,
    check_pattern,
    check_subject,
    policy_code,
)
from ._waiting import Source, _deadline, _Dispatcher, _Signal
from .queues import Consumer, Queue, QueueOptions, saved_definitions
from .services import COUNTS, PendingRequest, Responder, ServiceMember, _Service
from .storage import FSYNC_POLICIES

log = logging.getLogger("ringcast.router")

_DEFAULT_CAPACITY = 8192
R = TypeVar("R", bound=ServiceMember)


class Subscription(Source):
    """Messages on subjects matching one pattern, buffered in a native ring.

    Iterate it, call ``recv``/``recv_many``/``recv_payloads``, or give
    ``subscribe`` a callback. ``dropped`` counts messages the overflow policy
    discarded; ``Message.seq`` jumps where they were.
    """

    def __init__(self, router: "Router", pattern: str, capacity: int, overflow: str,
                 callback: Optional[Handler], max_bytes: int = 0) -> None:
        self.pattern = pattern
        self.ring = Ring(capacity, overflow, max_bytes=max_bytes)
        self._router = router
        self._signal = _Signal()
        self._callback = callback
        self.callback_errors = 0
        if callback is not None:
            self.ring.arm_ready(self._schedule)

    # -- receiving -------------------------------------------------------
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
            "bytes": self.ring.nbytes,
            "max_bytes": self.ring.max_bytes,
            "overflow": self.ring.policy_name,
            "offered": self.ring.offered,
            "dropped": self.dropped,
            "last_seq": self.ring.last_seq,
        }

    def __repr__(self) -> str:
        return f"<Subscription {self.pattern!r} pending={self.pending} dropped={self.dropped}>"


class Router(CoreRouter):
    """In-process message router: pub/sub, queues and request/reply.

    A subclass of the native ``CoreRouter`` (as pyzmq's sugar subclasses its
    backend): ``publish``, ``try_publish`` and ``publish_many`` are the native
    methods themselves, so a publish is one native call; this class adds the
    waiting they fall back to when a ``block`` buffer is full, and the
    friendly objects around them.
    """

    def __init__(self, *, data_dir: Optional[str] = None, fsync: str = "interval",
                 cache_size: int = 8192) -> None:
        """``data_dir`` holds the logs of durable queues; ``fsync`` is their
        default policy (``always``, ``interval``, ``never``; docs/reliability.md
        says what each can lose)."""
        if fsync not in FSYNC_POLICIES:
            raise errors.LimitExceeded(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        super().__init__(cache_size)
        self.data_dir = data_dir
        self.fsync = fsync
        self._reaper: Optional[threading.Thread] = None
        self._subs: Dict[int, Subscription] = {}
        self._closed_drops = 0   # what closed subscriptions dropped, all told
        self._queues: Dict[str, Queue] = {}
        self._services: Dict[str, _Service] = {}
        self._forgotten_counts = dict.fromkeys(COUNTS, 0)   # what forgotten services counted
        self._dispatcher = _Dispatcher()
        self._space = _Signal()
        self._lock = threading.RLock()  # guards the Python-side tables
        self.closed = False
        if data_dir is not None:
            for saved in saved_definitions(data_dir):  # rebuild durable queues now
                self.declare_queue(saved["name"], bind=saved["bind"], **saved["options"])

    # -- pub/sub -----------------------------------------------------------------
    def subscribe(self, pattern: str, *, capacity: int = _DEFAULT_CAPACITY,
                  overflow: str = "block", callback: Optional[Handler] = None,
                  max_bytes: int = 0) -> Subscription:
        """Receive every message published on a subject matching ``pattern``
        (``*`` one token, ``>`` one or more trailing tokens).

        The buffer holds up to ``capacity`` messages and, when ``max_bytes``
        is set, about that many payload bytes (a message is taken while the
        buffer is below it); ``overflow`` says what happens beyond either.
        """
        self._check_open()
        check_pattern(pattern)
        policy_code(overflow)
        sub = Subscription(self, pattern, capacity, overflow, callback, max_bytes)
        with self._lock:
            self._check_open()   # again, under the lock: close() lists what it closes there
            self.add(pattern, sub.ring)
            self._subs[id(sub)] = sub
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if self._subs.pop(id(sub), None) is not None:
                self.remove(sub.pattern, sub.ring)
                self._closed_drops += int(sub.ring.dropped)   # no publish reaches it now

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

    def _wait_space(self, ring: Optional[Ring], deadline: Optional[float]) -> None:
        assert ring is not None, "only called after a publish reported a full ring"
        if self._dispatcher.owner == threading.get_ident():
            self._check_not_self_drained(ring)
        if deadline is not None and deadline <= time.monotonic():
            raise errors.WouldBlock(f"a block-policy buffer is full ({ring!r})")
        try:
            self._space.wait(lambda: self._room(ring), lambda: self._arm_room(ring), deadline)
        except errors.Timeout:
            raise errors.WouldBlock(
                f"a block-policy buffer stayed full until the deadline ({ring!r})"
            ) from None
        self._check_open()

    # what a wait for room in ``ring`` tests (sync here, asyncio in aio.Router):
    # room, or an end (a closed router's queues are drained no more: their
    # room never comes; the retry then raises Closed)
    def _room(self, ring: Ring) -> Optional[bool]:
        return True if ring.free or ring.closed or self.closed else None

    def _arm_room(self, ring: Ring) -> bool:
        return bool(ring.arm_space(self._space.notify)) or ring.closed or self.closed

    def _check_not_self_drained(self, ring: Ring) -> None:
        """Called from inside a callback: if ``ring`` belongs to a callback
        subscription, only this thread (which runs callbacks one at a time)
        would ever drain it, so waiting for room would wait on itself."""
        for sub in list(self._subs.values()):
            if sub.ring is ring and sub._callback is not None:
                raise errors.WouldBlock(
                    f"publish from inside a callback into {sub.pattern!r}, a full "
                    f"block-policy subscription ({ring!r}) whose callbacks run on this "
                    f"very thread: waiting for room would wait on itself. Give that "
                    f"subscription a drop_oldest/drop_newest policy or more capacity "
                    f"(or max_bytes), or publish from another thread")

    # -- queues --------------------------------------------------------------------
    def declare_queue(self, name: str, *, bind: Union[str, Sequence[str]] = (),
                      **options: Any) -> Queue:
        """Create the queue ``name`` (idempotent; later calls may add binds).

        Messages published on a subject matching a ``bind`` pattern land in it
        too. Options (see ``QueueOptions``): ``capacity``, ``max_bytes``
        (payload bytes waiting, 0: no bound), ``overflow``,
        ``dead_letter`` (queue name), ``durable`` (log to ``data_dir``),
        ``fsync``, ``max_deliver``, ``ttl`` (seconds), ``on_expire``
        (``dead_letter``/``drop``), ``ack_deadline`` (seconds),
        ``dedup_window`` (seconds a ``msg-id`` header is remembered).
        """
        self._check_open()
        check_subject(name)
        for key in options:
            if key not in QueueOptions.__slots__:   # as a client refuses it
                raise errors.LimitExceeded(f"unknown queue option {key!r}")
        binds = (bind,) if isinstance(bind, str) else tuple(bind)
        for pattern in binds:
            check_pattern(pattern)
        with self._lock:
            self._check_open()   # again, under the lock: close() lists what it closes there
            q = self._queues.get(name)
            if q is None:
                opts = QueueOptions(**options)
                policy_code(opts.overflow)
                if opts.dead_letter is not None:
                    check_subject(opts.dead_letter)
                    if opts.dead_letter == name:
                        raise errors.LimitExceeded(f"queue {name!r} cannot dead-letter to itself")
                q = Queue(self, name, (), opts, self.data_dir)
                self._queues[name] = q
                if opts.durable and opts.dead_letter and opts.dead_letter not in self._queues:
                    # what a durable queue dead-letters must survive a restart too
                    self.declare_queue(opts.dead_letter, durable=True, fsync=opts.fsync)
                if opts.timed:
                    self._start_reaper()
            added = [p for p in binds if p not in q.bind]
            if added:
                q.hook_intake()  # bound publishes are admitted (de-duplicated) as they land
            for pattern in added:
                self.add(pattern, q.ring)
                q.bind += (pattern,)
            if added and q.log is not None:
                q.save_definition()
            return q

    def ensure_queue(self, name: str, **options: Any) -> Queue:
        """The queue ``name``, declared with ``options`` when it does not
        exist yet: what using a queue before declaring it does."""
        return self._queues.get(name) or self.declare_queue(name, **options)

    def queue(self, name: str) -> Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise errors.NotFound(f"no queue named {name!r}") from None

    def send(self, queue: str, payload: Any, headers: Headers = None, *,
             timeout: Optional[float] = None) -> bool:
        """Put one message on a queue (declared on first use). Returns False
        when a ``msg-id`` header repeats one seen within the dedup window
        (the message was already accepted once)."""
        self._check_open()
        return self.ensure_queue(queue).put(payload, headers, timeout)

    def send_many(self, queue: str, payloads: Sequence[Any], headers: Headers = None, *,
                  timeout: Optional[float] = None) -> int:
        """Put many messages on a queue in one call (one log write if durable);
        returns how many were enqueued. A ``msg-id`` header applies to every
        message of the batch: the queue keeps the first one not seen within the
        dedup window (only ``send`` reports a duplicate by its return value)."""
        self._check_open()
        q = self.ensure_queue(queue)
        return q.put_many(payloads if isinstance(payloads, list) else list(payloads),
                          headers, timeout)

    def try_send_many(self, queue: str, payloads: List[Any]) -> int:
        """As ``send_many`` without headers, never waiting for room: how many
        were enqueued before a ``block`` queue filled up (the broker's runs of
        SEND records; it parks the rest)."""
        self._check_open()
        return self.ensure_queue(queue).try_put_many(payloads, None)

    def consume(self, queue: str, *, prefetch: int = 0) -> Consumer:
        """A competing consumer of ``queue`` (declared on first use), with at
        most ``prefetch`` messages unacked (0: no limit)."""
        self._check_open()
        check_count("prefetch", prefetch, 0)
        q = self.ensure_queue(queue)
        consumer = Consumer(q, prefetch)
        with self._lock:
            self._check_open()   # again, under the lock: close() lists what it closes there
            q.consumers.append(consumer)
        return consumer

    # -- request/reply ---------------------------------------------------------------
    def serve(self, name: str, handler: Optional[Handler] = None, *,
              capacity: int = 1024, threaded: bool = False) -> Responder:
        """Answer requests to ``name``. ``handler(msg)`` returns the reply
        payload; without a handler, iterate the responder and ``msg.respond``.
        Several responders of one name share its requests round-robin.

        A handler runs as callbacks do (one at a time, in the thread that
        made the request ready); ``threaded=True`` gives it a thread of its
        own, for handlers that block or make requests themselves."""
        return self.attach_responder(
            name, lambda service: Responder(self, service, handler, capacity, threaded))

    def attach_responder(self, name: str, make: Callable[[_Service], R]) -> R:
        """Add ``make(service)`` to the responders of ``name``: how the broker
        puts its remote responders beside embedded ones. It takes up requests
        already waiting for room at once (outside the lock: a handler may run)."""
        self._check_open()
        check_subject(name)
        with self._lock:
            self._check_open()   # again, under the lock: close() lists what it closes there
            service = self._services.get(name)
            if service is None:
                service = self._services[name] = _Service(name, self._forget_service)
            try:
                responder = make(service)
            except BaseException:   # refused (a bad capacity): a new service goes again
                if not service.responders and not service.backlog:
                    del self._services[name]
                raise
            service.responders.append(responder)
        service.refill(responder)
        return responder

    def _forget_service(self, service: _Service) -> None:
        """Drop ``service`` from the table once nobody serves it: a later
        ``serve`` of its name starts a new one (under the lock, so never one
        that a responder has just joined). Its counts stay in the totals."""
        with self._lock:
            if not service.responders and not service.backlog \
                    and self._services.get(service.name) is service:
                del self._services[service.name]
                service.retired = self._forgotten_counts   # later counts: see _Service.count
                for key in COUNTS:
                    self._forgotten_counts[key] += getattr(service, key)

    def service(self, name: str) -> _Service:
        """The service ``name``; NoResponders when nobody serves it."""
        service = self._services.get(name)
        if service is None or not service.responders:
            check_subject(name)
            raise errors.NoResponders(f"no responders for {name!r}")
        return service

    def request_cb(self, name: str, payload: Any, on_done: Callable[[Any], None],
                   headers: Headers = None, *, timeout: Optional[float] = None) -> PendingRequest:
        """Start a request without waiting. ``on_done`` gets the reply Message
        or an error, exactly once; the caller expires it at ``deadline``.
        A bad payload, headers or timeout raise first, as they do at a client,
        whether or not anyone serves ``name``."""
        self._check_open()
        deadline = _deadline(timeout)
        check_message(payload, headers)
        service = self.service(name)
        pending = PendingRequest(service, on_done, deadline)
        service.submit(payload, headers, pending)
        return pending

    def request(self, name: str, payload: Any, headers: Headers = None, *,
                timeout: Optional[float] = 5.0) -> Message:
        """Ask ``name`` and wait for its one reply (Timeout / NoResponders);
        ``timeout`` None (or infinity) sets no deadline."""
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
        if not done.wait(check_timeout(timeout)):
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
            queues = list(self._queues.values())
            consumers = [c for q in queues for c in q.consumers]
            responders = [r for s in self._services.values() for r in s.responders]
        self._space.notify()   # who waits for room in a queue gets Closed
        for sub in subs:
            sub.close()
        for consumer in consumers:
            consumer.close()
        for responder in responders:
            responder.close()
        for q in queues:
            q.close()
        self._dispatcher.close()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(2)

    def _start_reaper(self) -> None:
        """One daemon thread per router that has timed queues: ack deadlines
        and TTLs act even when nobody calls into the queue."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=_reap_loop, args=(weakref.ref(self),),
                                            daemon=True, name="ringcast-reaper")
            self._reaper.start()

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> Dict[str, Any]:
        subs = [s.stats() for s in list(self._subs.values())]
        with self._lock:   # a service forgotten meanwhile is counted once
            # served now: a service nobody serves is forgotten
            services = {name: {"responders": len(s.responders), "backlog": len(s.backlog),
                               **{key: getattr(s, key) for key in COUNTS}}
                        for name, s in self._services.items()}
            # every service's, forgotten ones too (counts, not gauges)
            totals = {key: n + sum(s[key] for s in services.values())
                      for key, n in self._forgotten_counts.items()}
        return {
            "published": self.published,
            "delivered": self.delivered,
            # by every subscription's policy, closed ones too (a count, not a gauge)
            "dropped": self._closed_drops + sum(int(s["dropped"]) for s in subs),
            "subscriptions": subs,
            "queues": {name: q.stats() for name, q in list(self._queues.items())},
            "services": services,
            "service_totals": totals,
            "cache": {"size": self.cache_size, "misses": self.cache_misses},
        }


def _reap_loop(ref: "weakref.ReferenceType[Router]") -> None:
    while True:
        router = ref()
        if router is None or router.closed:
            return
        timed = [q for q in list(router._queues.values()) if q.options.timed]
        tick = min([min(x for x in (q.options.ttl, q.options.ack_deadline) if x) for q in timed],
                   default=1.0)
        del router
        for q in timed:
            q.reap()
        time.sleep(min(max(tick / 10, 0.005), 0.5))


def _unbox(result: Any) -> Message:
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]
