"""Point-to-point work queues: competing consumers, acks, delivery rules.

A queue takes messages from ``Router.send`` and from publishes on subjects
it is bound to; both land in its native intake ring. Each message goes to
exactly one consumer and stays owed until acked. The rules a demanding user
expects are here: redelivery (flagged, counted) when a consumer nacks,
closes or misses its ack deadline; ``max_deliver`` and ``nack(requeue=False)``
send a message to the dead-letter queue with headers saying why; TTLs;
de-duplication by message id; and, for durable queues, a log on disk
(``storage.QueueLog``) that survives ``kill -9``.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from . import errors
from ._impl import Headers, Message, Ring, check_message
from ._waiting import Source, _deadline, _Signal
from .storage import QueueLog

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("ringcast.queues")

#: header carrying a publisher's message id for de-duplication
MSG_ID_HEADER = "msg-id"
#: header carrying a per-message time-to-live in milliseconds
TTL_HEADER = "ttl-ms"

_REFILL = 256  # messages moved from the intake ring per refill
#: file in a durable queue's directory holding its definition
DEFINITION = "queue.json"


class QueueOptions:
    """How a queue behaves; fixed when it is declared."""

    __slots__ = ("capacity", "overflow", "dead_letter", "durable", "fsync", "max_deliver",
                 "ttl", "on_expire", "ack_deadline", "dedup_window", "segment_bytes")

    def __init__(self, *, capacity: int = 65536, overflow: str = "block",
                 dead_letter: Optional[str] = None, durable: bool = False,
                 fsync: Optional[str] = None, max_deliver: int = 0, ttl: Optional[float] = None,
                 on_expire: str = "dead_letter", ack_deadline: Optional[float] = None,
                 dedup_window: float = 120.0, segment_bytes: int = 64 << 20) -> None:
        if on_expire not in ("dead_letter", "drop"):
            raise errors.LimitExceeded(f"on_expire must be 'dead_letter' or 'drop', "
                                       f"not {on_expire!r}")
        for name, value in (("ttl", ttl), ("ack_deadline", ack_deadline)):
            if value is not None and value <= 0:
                raise errors.LimitExceeded(f"{name} must be > 0 seconds, got {value!r}")
        if max_deliver < 0:
            raise errors.LimitExceeded(f"max_deliver must be >= 0, got {max_deliver!r}")
        self.capacity = capacity
        self.overflow = overflow
        self.dead_letter = dead_letter
        self.durable = durable
        self.fsync = fsync
        self.max_deliver = max_deliver
        self.ttl = ttl
        self.on_expire = on_expire
        self.ack_deadline = ack_deadline
        self.dedup_window = dedup_window
        self.segment_bytes = segment_bytes

    @property
    def timed(self) -> bool:
        """Whether something must happen with the clock (the reaper's work)."""
        return self.ttl is not None or self.ack_deadline is not None


class Queue:
    """A named work queue. Declared with ``Router.declare_queue``."""

    def __init__(self, router: "Router", name: str, bind: Tuple[str, ...],
                 options: QueueOptions, log_dir: Optional[str]) -> None:
        self.name = name
        self.bind = bind
        self.options = options
        self.dead_letter = options.dead_letter
        self._router = router
        self._signal = _Signal()
        # Stamped so TTLs and the log know each message's enqueue time.
        self.ring = Ring(options.capacity, options.overflow, stamped=True)
        # Taken off the ring (or recovered from the log), in order, not yet delivered.
        self._ready: Deque[Message] = collections.deque()
        # Given back by nack, a closing consumer or a missed ack deadline: served first.
        self._returned: Deque[Message] = collections.deque()
        # With an ack deadline: delivered and owed, oldest first: tag -> (consumer, msg, deadline).
        self._inflight: "collections.OrderedDict[int, Tuple[Consumer, Message, float]]" = \
            collections.OrderedDict()
        self._seen_ids: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self._tags = itertools.count(1)
        # Guards the Python-side bookkeeping above against concurrent consumers,
        # journal hooks and the reaper (single dict/deque ops are atomic under
        # the GIL; the compound steps here are not).
        self._lock = threading.RLock()
        self.consumers: List["Consumer"] = []
        self.counters = {"acked": 0, "redelivered": 0, "rejected": 0, "dead_lettered": 0,
                         "expired": 0, "ack_timeouts": 0, "duplicates": 0, "late_acks": 0,
                         "dead_letter_failed": 0}
        self.log: Optional[QueueLog] = None
        if options.durable:
            if log_dir is None:
                raise errors.LimitExceeded(
                    f"queue {name!r} is durable but the router has no data_dir")
            self.log = QueueLog(os.path.join(log_dir, name),
                                fsync=options.fsync or router.fsync,
                                segment_bytes=options.segment_bytes)
            self._recover()
            self.ring.set_hook(self._journal)
            self.save_definition()

    # -- definition (durable queues) ------------------------------------------------
    def save_definition(self) -> None:
        """Write name, binds and options next to the log, so a restarted
        broker rebuilds this queue before any client declares it again."""
        assert self.log is not None
        path = os.path.join(self.log.directory, DEFINITION)
        body = {"name": self.name, "bind": list(self.bind),
                "options": {k: getattr(self.options, k) for k in QueueOptions.__slots__}}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # -- intake -------------------------------------------------------------------
    def put(self, payload: Any, headers: Headers, timeout: Optional[float]) -> bool:
        """Enqueue one message (``Router.send``); False if a duplicate id."""
        msg_id = headers.get(MSG_ID_HEADER) if headers else None
        if msg_id is not None and self._duplicate(msg_id):
            return False
        if self.log is not None:
            check_message(payload, headers)
            self._log_and_ready([Message(self.name, payload, headers, 0, False, 1, time.time_ns())])
            return True
        if self.ring.put(self.name, payload, headers) < 0:
            deadline = _deadline(timeout)
            while self.ring.put(self.name, payload, headers) < 0:
                self._router._wait_space(self.ring, deadline)
        return True

    def put_many(self, payloads: List[Any], headers: Headers, timeout: Optional[float]) -> int:
        """Enqueue many payloads in one native call (one log write if durable)."""
        if self.log is not None:
            now = time.time_ns()
            for p in payloads:
                check_message(p, headers)
            self._log_and_ready([Message(self.name, p, headers, 0, False, 1, now)
                                 for p in payloads])
            return len(payloads)
        done: int = self.ring.put_many(self.name, payloads, headers)
        deadline = _deadline(timeout)
        while done < len(payloads):
            self._router._wait_space(self.ring, deadline)
            done += self.ring.put_many(self.name, payloads[done:], headers)
        return done

    def _duplicate(self, msg_id: str) -> bool:
        now = time.monotonic()
        seen = self._seen_ids
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
        if msg_id in seen:
            self.counters["duplicates"] += 1
            return True
        seen[msg_id] = now + self.options.dedup_window
        return False

    def _journal(self) -> None:
        """Ring hook of a durable queue: log what a publish pushed, before the
        publisher's call returns (so a return means durable per fsync)."""
        msgs = self.ring.pop_many(1 << 20)
        if msgs:
            self._log_and_ready(msgs)

    def _log_and_ready(self, msgs: List[Message]) -> None:
        assert self.log is not None
        ids = self.log.append([(m.timestamp_ns, m.subject, m.payload, m.headers) for m in msgs])
        for m, i in zip(msgs, ids):
            m._id = i
        with self._lock:
            self._ready.extend(msgs)
        self._signal.notify()

    def _recover(self) -> None:
        assert self.log is not None
        for stored in self.log.recover():
            msg = Message(stored.subject, stored.payload, stored.headers, stored.id,
                          stored.deliveries > 0, max(stored.deliveries, 1), stored.stamp_ns)
            msg._id = stored.id
            self._ready.append(msg)
            msg_id = stored.headers.get(MSG_ID_HEADER) if stored.headers else None
            if msg_id is not None:
                self._seen_ids[msg_id] = time.monotonic() + self.options.dedup_window
        if self._ready:
            log.info("queue %r: recovered %d unsettled messages (%d bytes cut from a torn tail)",
                     self.name, len(self._ready), self.log.truncated_bytes)

    # -- delivery -------------------------------------------------------------------
    def _next(self) -> Optional[Message]:
        if self._returned:
            return self._returned.popleft()
        if not self._ready and self.log is None:
            self._ready.extend(self.ring.pop_many(_REFILL))
        if self._ready:
            return self._ready.popleft()
        return None

    def _take(self, consumer: "Consumer", limit: int) -> List[Message]:
        """Hand up to ``limit`` deliverable messages to ``consumer``, applying
        TTL and max_deliver on the way."""
        out: List[Message] = []
        opts = self.options
        timed_ttl = opts.ttl is not None
        with self._lock:
            if self._inflight:
                self.reap()
            ready = self._ready
            while len(out) < limit:
                if ready and not self._returned:  # the common case, inline
                    msg = ready.popleft()
                else:
                    found = self._next()
                    if found is None:
                        break
                    msg = found
                if (timed_ttl or (msg.headers and TTL_HEADER in msg.headers)) \
                        and self._expired(msg):
                    self.counters["expired"] += 1
                    self._dead_letter(msg, "expired", drop=opts.on_expire == "drop")
                    continue
                if msg.redelivered:  # a copy that counts this delivery too
                    count = msg.delivery_count + 1
                    if opts.max_deliver and count > opts.max_deliver:
                        self._dead_letter(msg, "max_deliver")
                        continue
                    self.counters["redelivered"] += 1
                    again = Message(msg.subject, msg.payload, msg.headers, msg.seq, True,
                                    count, msg.timestamp_ns)
                    again._id = msg._id
                    msg = again
                msg._owner = consumer
                msg._tag = tag = next(self._tags)
                consumer._unacked[tag] = msg
                if opts.ack_deadline:
                    self._inflight[tag] = (consumer, msg, time.monotonic() + opts.ack_deadline)
                out.append(msg)
            if self.log is not None and out:
                self.log.delivered([m._id for m in out])
        return out

    def _expired(self, msg: Message) -> bool:
        ttl = self.options.ttl
        if msg.headers and TTL_HEADER in msg.headers:
            try:
                own = int(msg.headers[TTL_HEADER]) / 1000
            except ValueError:
                own = None
            if own is not None:
                ttl = own if ttl is None else min(ttl, own)
        if ttl is None or not msg.timestamp_ns:
            return False
        return time.time_ns() - msg.timestamp_ns > ttl * 1e9

    def _requeue(self, msgs: List[Message]) -> None:
        """Put messages back at the head, in order, flagged redelivered."""
        back = []
        for m in msgs:
            r = Message(m.subject, m.payload, m.headers, m.seq, True, m.delivery_count,
                        m.timestamp_ns)
            r._id = m._id
            back.append(r)
        self._returned.extendleft(reversed(back))
        self._signal.notify()

    def _settle(self, msg: Message) -> None:
        if self.log is not None and msg._id:
            self.log.settle(msg._id)

    def _dead_letter(self, msg: Message, reason: str, drop: bool = False) -> None:
        if self.dead_letter is None or drop:
            log.info("queue %r: %s message seq=%d dropped (no dead-letter queue)",
                     self.name, reason, msg.seq)
        else:
            headers = dict(msg.headers or {})
            headers.update({"x-dead-letter-from": self.name, "x-dead-letter-reason": reason,
                            "x-delivery-count": str(msg.delivery_count),
                            "x-original-subject": msg.subject})
            try:
                self._router.send(self.dead_letter, msg.payload, headers, timeout=0)
                self.counters["dead_lettered"] += 1
            except errors.RingcastError as exc:
                self.counters["dead_letter_failed"] += 1
                log.error("queue %r: could not dead-letter seq=%d to %r (%s); dropped",
                          self.name, msg.seq, self.dead_letter, exc)
        self._settle(msg)

    def reap(self) -> None:
        """Take back deliveries whose ack deadline passed (oldest first) and
        expire messages at the head whose TTL ran out."""
        with self._lock:
            now = time.monotonic()
            late = []
            inflight = self._inflight
            while inflight:
                tag, (consumer, msg, deadline) = next(iter(inflight.items()))
                if not deadline or deadline > now:
                    break
                del inflight[tag]
                consumer._unacked.pop(tag, None)
                late.append(msg)
            if late:
                self.counters["ack_timeouts"] += len(late)
                log.warning("queue %r: %d deliveries missed their ack deadline; redelivering",
                            self.name, len(late))
                self._requeue(late)
            if self.options.ttl is not None:
                self._expire_head()

    def _expire_head(self) -> None:
        while True:
            head = self._next()
            if head is None:
                return
            if not self._expired(head):
                (self._returned if head.redelivered else self._ready).appendleft(head)
                return
            self.counters["expired"] += 1
            self._dead_letter(head, "expired", drop=self.options.on_expire == "drop")

    # -- settlement (called by Consumer) -------------------------------------------------
    def _owed(self, consumer: "Consumer", msg: Message) -> None:
        """Forget an owed delivery (call with the lock held) or raise AckError."""
        if consumer._unacked.pop(msg._tag, None) is None:
            self.counters["late_acks"] += 1
            raise errors.AckError(
                f"delivery {msg._tag} on {self.name!r} is unknown, already settled, or was "
                f"taken back (consumer closed or ack deadline passed)")
        if self._inflight:
            self._inflight.pop(msg._tag, None)

    def _release(self, consumer: "Consumer") -> None:
        with self._lock:
            # back at the head in their original queue order (log id for durable
            # messages, intake sequence otherwise), not in the order they were handed out
            owed = sorted(consumer._unacked.values(), key=lambda m: (m._id or m.seq, m._tag))
            consumer._unacked.clear()
            for m in owed:
                self._inflight.pop(m._tag, None)
            if consumer in self.consumers:
                self.consumers.remove(consumer)
            self._requeue(owed)

    # -- waiting ------------------------------------------------------------------------
    def _arm(self) -> bool:
        if self._returned or self._ready:
            return False
        if self.log is not None:
            return True  # the journal hook notifies
        return bool(self.ring.arm_ready(self._signal.notify))

    def on_ready(self, callback: Callable[[], None]) -> bool:
        """One-shot ``callback()`` when a message is next available to consumers;
        False (not armed) when one is available now."""
        return self._signal.on_ready(callback, self._arm)

    # -- state ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Messages waiting for a consumer (not counting unacked ones)."""
        return len(self.ring) + len(self._ready) + len(self._returned)

    @property
    def unacked(self) -> int:
        return sum(len(c._unacked) for c in self.consumers)

    def stats(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "depth": self.depth,
            "unacked": self.unacked,
            "consumers": len(self.consumers),
            "capacity": self.ring.capacity,
            "overflow": self.ring.policy_name,
            "dropped": int(self.ring.dropped),
            "bind": list(self.bind),
            "durable": self.log is not None,
        }
        out.update(self.counters)
        if self.log is not None:
            out.update({"fsync": self.log.fsync, "segments": self.log.segments,
                        "fsyncs": self.log.syncs, "truncated_bytes": self.log.truncated_bytes})
        return out

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class Consumer(Source):
    """One competing consumer of a queue. ``prefetch`` caps unacked messages
    (0: no cap). Closing it returns every unacked message to the queue,
    flagged redelivered."""

    def __init__(self, queue: Queue, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self._unacked: Dict[int, Message] = {}
        self._signal = queue._signal  # consumers of one queue wait together
        self.closed = False

    @property
    def credit(self) -> Optional[int]:
        """How many more messages it may hold unacked (None: unlimited)."""
        return None if not self.prefetch else max(0, self.prefetch - len(self._unacked))

    def _poll(self) -> Optional[Message]:
        msgs = self._take(1)
        return msgs[0] if msgs else None

    def _take(self, max_count: int) -> List[Message]:
        if self.closed:
            raise errors.Closed(f"consumer of {self.queue.name!r} is closed")
        if self.prefetch:
            room = self.prefetch - len(self._unacked)
            if room <= 0:
                raise errors.WouldBlock(
                    f"prefetch limit {self.prefetch} reached on {self.queue.name!r}: ack first")
            max_count = min(max_count, room)
        return self.queue._take(self, max_count)

    def _arm(self) -> bool:
        return self.closed or self.queue._arm()

    def recv_nowait(self) -> Message:
        msg = self._poll()
        if msg is None:
            raise errors.WouldBlock(f"queue {self.queue.name!r} is empty")
        return msg

    def recv_many(self, max_count: int = 1024) -> List[Message]:
        """Up to ``max_count`` waiting messages (within credit), without waiting."""
        if self.prefetch and len(self._unacked) >= self.prefetch:
            return []
        return self._take(max_count)

    def ack(self, msg: Message) -> None:
        q = self.queue
        with q._lock:
            q._owed(self, msg)
            q.counters["acked"] += 1
        if q.log is not None and msg._id:
            q.log.settle(msg._id)

    def nack(self, msg: Message, requeue: bool = True) -> None:
        q = self.queue
        with q._lock:
            q._owed(self, msg)
            if requeue:
                q._requeue([msg])
                return
            q.counters["rejected"] += 1
        q._dead_letter(msg, "rejected")

    def respond(self, msg: Message, payload: Any, headers: Headers) -> None:
        raise errors.RingcastError("queue messages are acked, not responded to")

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.queue._release(self)


def saved_definitions(data_dir: str) -> List[Dict[str, Any]]:
    """The definitions of the durable queues found under ``data_dir``."""
    found = []
    for entry in sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else ():
        path = os.path.join(data_dir, entry, DEFINITION)
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                body = json.load(f)
            found.append({"name": str(body["name"]), "bind": list(body["bind"]),
                          "options": dict(body["options"])})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: unreadable queue definition (%s); queue not restored", path, exc)
    return found


# How DECLARE's options map travels (docs/protocol.md): str -> str on the wire.
_WIRE_TYPES: Dict[str, Callable[[str], Any]] = {
    "dead_letter": str, "durable": lambda v: v in ("1", "true", "True"), "fsync": str,
    "max_deliver": int, "ttl": float, "on_expire": str, "ack_deadline": float,
    "dedup_window": float, "segment_bytes": int,
}


def queue_options_to_wire(options: Dict[str, Any]) -> Dict[str, str]:
    """QueueOptions keyword arguments -> DECLARE's options map."""
    wire = {}
    for key, value in options.items():
        if key not in _WIRE_TYPES:
            raise errors.LimitExceeded(f"unknown queue option {key!r}")
        if value is not None:
            wire[key] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return wire


def queue_options_from_wire(wire: Optional[Dict[str, str]]) -> Dict[str, Any]:
    """DECLARE's options map -> QueueOptions keyword arguments (typed errors)."""
    options: Dict[str, Any] = {}
    for key, text in (wire or {}).items():
        convert = _WIRE_TYPES.get(key)
        if convert is None:
            raise errors.LimitExceeded(f"unknown queue option {key!r}")
        try:
            options[key] = convert(text)
        except ValueError:
            raise errors.LimitExceeded(f"queue option {key}={text!r} is malformed") from None
    return options
