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
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from . import errors
from ._impl import Headers, Message, Ring, check_message, check_messages, hand_out, settle
from ._waiting import Source, _deadline, _Signal
from .storage import QueueLog

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("ringcast.queues")

#: header carrying a publisher's message id for de-duplication
MSG_ID_HEADER = "msg-id"
#: header carrying a per-message time-to-live in milliseconds
TTL_HEADER = "ttl-ms"

_REFILL = 256  # messages moved from the intake ring per refill...
_REFILL_BYTES = 1 << 20  # ...or payload bytes: the ring's byte bound stays meaningful
#: file in a durable queue's directory holding its definition
DEFINITION = "queue.json"


class QueueOptions:
    """How a queue behaves; fixed when it is declared."""

    __slots__ = ("capacity", "max_bytes", "overflow", "dead_letter", "durable", "fsync",
                 "max_deliver", "ttl", "on_expire", "ack_deadline", "dedup_window",
                 "segment_bytes")

    def __init__(self, *, capacity: int = 65536, max_bytes: int = 0, overflow: str = "block",
                 dead_letter: Optional[str] = None, durable: bool = False,
                 fsync: Optional[str] = None, max_deliver: int = 0, ttl: Optional[float] = None,
                 on_expire: str = "dead_letter", ack_deadline: Optional[float] = None,
                 dedup_window: float = 120.0, segment_bytes: int = 64 << 20) -> None:
        if on_expire not in ("dead_letter", "drop"):
            raise errors.LimitExceeded(f"on_expire must be 'dead_letter' or 'drop', "
                                       f"not {on_expire!r}")
        for name, value in (("ttl", ttl), ("ack_deadline", ack_deadline)):
            if value is not None and not value > 0:   # also NaN (the reaper sleeps on it)
                raise errors.LimitExceeded(f"{name} must be > 0 seconds, got {value!r}")
        if not dedup_window >= 0:   # NaN would never let an id go
            raise errors.LimitExceeded(f"dedup_window must be >= 0 seconds, got {dedup_window!r}")
        if max_deliver < 0:
            raise errors.LimitExceeded(f"max_deliver must be >= 0, got {max_deliver!r}")
        self.capacity = capacity
        self.max_bytes = max_bytes
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
        self.ring = Ring(options.capacity, options.overflow, stamped=True,
                         max_bytes=options.max_bytes)
        # Taken off the ring (or recovered from the log), in order, not yet delivered.
        self._ready: Deque[Message] = collections.deque()
        # Given back by nack, a closing consumer or a missed ack deadline: served first.
        self._returned: Deque[Message] = collections.deque()
        # With an ack deadline: delivered and owed, oldest first: tag -> (consumer, msg, deadline).
        self._inflight: "collections.OrderedDict[int, Tuple[Consumer, Message, float]]" = \
            collections.OrderedDict()
        # msg-id -> when it may be accepted again; ids whose send() checked
        # them but whose message is still in the ring (not yet admitted)
        self._seen_ids: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self._claimed: Dict[str, int] = {}
        # Highest ring seq admitted, and the verdicts on admitted messages still
        # in the ring, oldest first: (ring seq, log id) for every one of a durable
        # queue, (ring seq, 0) for a duplicate (dropped when taken off the ring).
        self._journaled = 0
        self._ids: Deque[Tuple[int, int]] = collections.deque()
        self._hooked = False
        self._dups_in_ring = 0  # (ring seq, 0) entries of _ids: not counted in depth
        self._next_tag = 1   # delivery tags, unique per queue
        # Guards the Python-side bookkeeping above against concurrent consumers,
        # journal hooks and the reaper (single dict/deque ops are atomic under
        # the GIL; the compound steps here are not).
        self._lock = threading.RLock()
        self.consumers: List["Consumer"] = []
        # a message leaves as acked, rejected, expired or max_delivered (whether
        # dead-lettered or dropped); dead_lettered counts those sent on
        self.counters = {"acked": 0, "redelivered": 0, "rejected": 0, "dead_lettered": 0,
                         "expired": 0, "max_delivered": 0, "ack_timeouts": 0, "duplicates": 0,
                         "late_acks": 0, "dead_letter_failed": 0}
        self.log: Optional[QueueLog] = None
        if options.durable:
            if log_dir is None:
                raise errors.LimitExceeded(
                    f"queue {name!r} is durable but the router has no data_dir")
            self.log = QueueLog(os.path.join(log_dir, name),
                                fsync=options.fsync or router.fsync,
                                segment_bytes=options.segment_bytes)
            self._recover()
            self.hook_intake()
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
    #
    # Every path into a queue -- ``Router.send``/``send_many`` and publishes on
    # bound subjects, embedded or from the broker -- pushes into the native
    # intake ring, so ``capacity`` and ``overflow`` bound a durable queue
    # exactly as an in-memory one. A message becomes the queue's own when it is
    # *admitted*: de-duplicated by its ``msg-id`` header and, if durable,
    # logged. A durable queue admits in its ring hook, before the publisher's
    # call returns, and leaves the message in the ring; an in-memory queue
    # admits when a consumer takes messages off the ring.
    def put(self, payload: Any, headers: Headers, timeout: Optional[float]) -> bool:
        """Enqueue one message (``Router.send``); False if a duplicate id.
        Closed once the router is: no consumer could take it any more."""
        self._router._check_open()
        check_message(payload, headers)   # as publish does (a ring itself takes anything)
        msg_id = headers.get(MSG_ID_HEADER) if headers else None
        if msg_id is not None and not self._claim(msg_id):
            return False
        try:
            rc = self.ring.put(self.name, payload, headers)
            if rc < 0:
                deadline = _deadline(timeout)
                while rc < 0:
                    self._router._wait_space(self.ring, deadline)
                    rc = self.ring.put(self.name, payload, headers)
        except BaseException:
            if msg_id is not None:
                self._unclaim(msg_id)  # not enqueued: a retry must land
            raise
        if rc == 0 and msg_id is not None:
            self._unclaim(msg_id)  # dropped by drop_newest: a retry must land
        return True

    def put_many(self, payloads: List[Any], headers: Headers, timeout: Optional[float]) -> int:
        """Enqueue many payloads in one native call (one log write if durable)."""
        done = self.try_put_many(payloads, headers)
        deadline = _deadline(timeout)
        while done < len(payloads):
            self._router._wait_space(self.ring, deadline)
            done += self.ring.put_many(self.name, payloads[done:], headers)
        return done

    def try_put_many(self, payloads: List[Any], headers: Headers) -> int:
        """As ``put_many`` without waiting: how many were enqueued before a
        ``block`` intake ring filled up (the broker parks the rest)."""
        self._router._check_open()   # as put
        check_messages(payloads, headers)
        return int(self.ring.put_many(self.name, payloads, headers))

    # -- de-duplication (call the helpers below with the lock held) ---------------
    def _forget_ids(self, now: float) -> None:
        seen = self._seen_ids
        while seen and next(iter(seen.values())) < now:
            msg_id, _ = seen.popitem(last=False)
            self._claimed.pop(msg_id, None)

    def _claim(self, msg_id: str) -> bool:
        """``send``'s check: False (counted) for an id seen within the window;
        else remember it, and that its message is on its way through the ring
        (admitting it there must not count it as its own duplicate)."""
        with self._lock:
            now = time.monotonic()
            self._forget_ids(now)
            if msg_id in self._seen_ids:
                self.counters["duplicates"] += 1
                return False
            self._seen_ids[msg_id] = now + self.options.dedup_window
            self._claimed[msg_id] = self._claimed.get(msg_id, 0) + 1
            return True

    def _unclaim(self, msg_id: str) -> None:
        with self._lock:
            left = self._claimed.get(msg_id, 0) - 1
            if left < 0:
                return
            if left:
                self._claimed[msg_id] = left
            else:
                del self._claimed[msg_id]
                self._seen_ids.pop(msg_id, None)

    def _admit(self, msgs: List[Message]) -> List[Message]:
        """The messages of ``msgs`` that are not duplicates (in order)."""
        for m in msgs:
            if m.headers:
                break
        else:
            return msgs  # the common case: no headers, nothing to check
        now = time.monotonic()
        self._forget_ids(now)
        seen, claimed = self._seen_ids, self._claimed
        window = self.options.dedup_window
        out = []
        for m in msgs:
            msg_id = m.headers.get(MSG_ID_HEADER) if m.headers else None
            if msg_id is not None:
                n = claimed.get(msg_id)
                if n:  # the one a send() checked and let through
                    if n > 1:
                        claimed[msg_id] = n - 1
                    else:
                        del claimed[msg_id]
                elif msg_id in seen:
                    self.counters["duplicates"] += 1
                    continue
                else:
                    seen[msg_id] = now + window
            out.append(m)
        return out

    # -- admission at publish time (durable queues, queues with bindings) -------
    def hook_intake(self) -> None:
        """Admit (and, if durable, log) messages in the pushing thread, before
        its publish or send returns: what a durable queue needs, and what makes
        de-duplication of bound publishes as immediate as ``send``'s. Queues
        without either admit when a consumer takes messages off the ring."""
        if not self._hooked:
            self._hooked = True
            self.ring.set_hook(self._journal)
            self._journal()  # whatever arrived before the hook was set
            self._signal.notify()  # waiters armed on the ring's one-shot slot

    def _journal(self) -> None:
        """The ring hook: admit what a publish or send pushed. The messages
        stay in the ring, which stays the bounded buffer; ``_ids`` remembers
        the verdict per ring sequence number until they are taken."""
        ring = self.ring
        with self._lock:
            ids = self._ids
            if ids and ids[0][0] < ring.first_seq:
                self._forget_marks(ring.first_seq)
            new = ring.peek_after(self._journaled)
            if not new:
                return
            self._journaled = new[-1].seq
            kept = self._admit(new)
            if kept is not new:
                self._dups_in_ring += len(new) - len(kept)
            if self.log is not None:
                self._append(kept)
                ids.extend([(m.seq, m._id) for m in new])  # log id, 0: duplicate
            elif len(kept) != len(new):
                keep = {id(m) for m in kept}
                self._ids.extend([(m.seq, 0) for m in new if id(m) not in keep])
        self._signal.notify()

    def _forget_marks(self, first_seq: int) -> None:
        """Drop the verdicts of messages below ``first_seq``: they left the
        ring without being taken (``drop_oldest`` evicted them); a logged one
        is settled, so it does not come back after a restart."""
        ids = self._ids
        while ids and ids[0][0] < first_seq:
            log_id = ids.popleft()[1]
            if not log_id:
                self._dups_in_ring -= 1
            elif self.log is not None:
                self.log.settle(log_id)

    def _append(self, msgs: List[Message]) -> None:
        assert self.log is not None
        if not msgs:
            return
        ids = self.log.append([(m.timestamp_ns, m.subject, m.payload, m.headers) for m in msgs])
        for m, i in zip(msgs, ids):
            m._id = i

    def _taken(self, msgs: List[Message]) -> List[Message]:
        """Messages just taken off the ring (lock held), made deliverable:
        duplicates left out, log ids attached. Those the hook has not seen
        (no hook, or their publisher's hook has not run yet) are admitted and
        logged here; the hook will find them gone."""
        ids = self._ids
        journaled = self._journaled
        out: List[Message] = []
        late = msgs
        for i, m in enumerate(msgs):
            seq = m.seq
            if seq > journaled:
                late = msgs[i:]
                break
            if ids:
                if ids[0][0] < seq:
                    self._forget_marks(seq)
                if ids and ids[0][0] == seq:
                    mark = ids.popleft()[1]
                    if not mark:
                        self._dups_in_ring -= 1
                        continue  # a duplicate, counted when it was admitted
                    m._id = mark
            out.append(m)
        else:
            return out
        self._journaled = late[-1].seq
        late = self._admit(late)
        if self.log is not None:
            self._append(late)
        if not out:
            return late
        out.extend(late)
        return out

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
    def _refill(self) -> None:
        """Move up to _REFILL admitted messages from the intake ring to _ready."""
        while not self._ready:
            msgs = self.ring.pop_many(_REFILL, _REFILL_BYTES)
            if not msgs:
                return
            self._ready.extend(self._taken(msgs))

    def _next(self) -> Optional[Message]:
        if self._returned:
            return self._returned.popleft()
        if not self._ready:
            self._refill()
        if self._ready:
            return self._ready.popleft()
        return None

    def _take(self, consumer: "Consumer", limit: int) -> List[Message]:
        """Hand up to ``limit`` deliverable messages to ``consumer``, applying
        TTL and max_deliver on the way."""
        out: List[Message] = []
        dead: List[Tuple[Message, str, bool]] = []
        opts = self.options
        timed_ttl = opts.ttl is not None
        with self._lock:
            # the consumer's checks again, under the lock: another thread may
            # have closed it (it gave back what it held) or taken its room
            if consumer.closed:
                raise errors.Closed(f"consumer of {self.name!r} is closed")
            if consumer.prefetch:
                limit = min(limit, consumer.prefetch - len(consumer._unacked))
            if self._inflight:
                self._reap(dead)
            ready = self._ready
            while len(out) < limit:
                if ready and not self._returned:  # the common case
                    if not timed_ttl:   # plain messages, in one native call
                        got, self._next_tag = hand_out(ready, limit - len(out), consumer,
                                                       self._next_tag, consumer._unacked,
                                                       TTL_HEADER)
                        if got:
                            if opts.ack_deadline:
                                self._track(consumer, got)
                            out += got
                            continue
                    msg = ready.popleft()   # one the checks below must see
                else:
                    found = self._next()
                    if found is None:
                        break
                    msg = found
                if (timed_ttl or (msg.headers and TTL_HEADER in msg.headers)) \
                        and self._expired(msg):
                    self.counters["expired"] += 1
                    dead.append((msg, "expired", opts.on_expire == "drop"))
                    continue
                if msg.redelivered:  # a copy that counts this delivery too
                    count = msg.delivery_count + 1
                    if opts.max_deliver and count > opts.max_deliver:
                        self.counters["max_delivered"] += 1
                        dead.append((msg, "max_deliver", False))
                        continue
                    self.counters["redelivered"] += 1
                    again = Message(msg.subject, msg.payload, msg.headers, msg.seq, True,
                                    count, msg.timestamp_ns)
                    again._id = msg._id
                    msg = again
                msg._owner = consumer
                msg._tag = tag = self._next_tag
                self._next_tag += 1
                consumer._unacked[tag] = msg
                if opts.ack_deadline:
                    self._track(consumer, [msg])
                out.append(msg)
            if self.log is not None and out:
                self.log.delivered([m._id for m in out])
        self._dead_letter_all(dead)
        return out

    def _track(self, consumer: "Consumer", msgs: List[Message]) -> None:
        """Start the ack deadline of deliveries just handed to ``consumer``."""
        deadline = time.monotonic() + (self.options.ack_deadline or 0.0)
        inflight = self._inflight
        for m in msgs:
            inflight[m._tag] = (consumer, m, deadline)

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

    def _dead_letter_all(self, dead: List[Tuple[Message, str, bool]]) -> None:
        for msg, reason, drop in dead:
            self._dead_letter(msg, reason, drop)

    def _dead_letter(self, msg: Message, reason: str, drop: bool = False) -> None:
        """Send ``msg`` to the dead-letter queue (or drop it) and settle it.

        Never call this with the lock held: the send takes the dead-letter
        queue's lock (durable, or de-duplicating), and two queues that
        dead-letter into each other, consumed from two threads, would each
        hold their own lock while waiting for the other's. Callers collect
        under the lock and call this after releasing it; the message is
        settled here only after the send, so it is never lost."""
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
                counter = "dead_lettered"
            except errors.RingcastError as exc:
                counter = "dead_letter_failed"
                log.error("queue %r: could not dead-letter seq=%d to %r (%s); dropped",
                          self.name, msg.seq, self.dead_letter, exc)
            with self._lock:
                self.counters[counter] += 1
        self._settle(msg)

    def reap(self) -> None:
        """Take back deliveries whose ack deadline passed (oldest first) and
        expire messages at the head whose TTL ran out."""
        dead: List[Tuple[Message, str, bool]] = []
        with self._lock:
            self._reap(dead)
        self._dead_letter_all(dead)

    def _reap(self, dead: List[Tuple[Message, str, bool]]) -> None:
        """``reap`` with the lock held; what to dead-letter goes to ``dead``."""
        now = time.monotonic()
        late = []
        inflight = self._inflight
        rooms: List[Callable[[], None]] = []
        while inflight:
            tag, (consumer, msg, deadline) = next(iter(inflight.items()))
            if not deadline or deadline > now:
                break
            del inflight[tag]
            consumer._unacked.pop(tag, None)
            late.append(msg)
            room, consumer._on_room = consumer._on_room, None
            if room is not None:
                rooms.append(room)
        if late:
            self.counters["ack_timeouts"] += len(late)
            log.warning("queue %r: %d deliveries missed their ack deadline; redelivering",
                        self.name, len(late))
            self._requeue(late)
        # consumers that had no room hear last: those that were waiting for
        # work get the first chance at what the slow one was late with
        for room in rooms:
            room()
        if self.options.ttl is not None:
            self._expire_head(dead)

    def _expire_head(self, dead: List[Tuple[Message, str, bool]]) -> None:
        while True:
            head = self._next()
            if head is None:
                return
            if not self._expired(head):
                (self._returned if head.redelivered else self._ready).appendleft(head)
                return
            self.counters["expired"] += 1
            dead.append((head, "expired", self.options.on_expire == "drop"))

    # -- settlement (called by Consumer) -------------------------------------------------
    def _owed(self, consumer: "Consumer", msg: Message) -> None:
        """Forget an owed delivery (call with the lock held) or raise AckError."""
        if consumer._unacked.pop(msg._tag, None) is None:
            raise self._late_ack(msg._tag)
        if self._inflight:
            self._inflight.pop(msg._tag, None)

    def _late_ack(self, tag: int) -> errors.AckError:
        """The error for settling a delivery this queue no longer owes (counted)."""
        self.counters["late_acks"] += 1
        return errors.AckError(
            f"delivery {tag} on {self.name!r} is unknown, already settled, or was "
            f"taken back (consumer closed or ack deadline passed)")

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
        if not self._hooked:
            try:
                return bool(self.ring.arm_ready(self._signal.notify))
            except errors.RingcastError:
                pass  # hooked by a bind declared meanwhile
        return not len(self.ring)  # the intake hook notifies

    def on_ready(self, callback: Callable[[], None]) -> bool:
        """One-shot ``callback()`` when a message is next available to consumers;
        False (not armed) when one is available now."""
        return self._signal.on_ready(callback, self._arm)

    # -- state ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Messages waiting for a consumer (not counting unacked ones)."""
        return max(0, len(self.ring) - self._dups_in_ring) + len(self._ready) + \
            len(self._returned)

    @property
    def unacked(self) -> int:
        return sum(len(c._unacked) for c in self.consumers)

    def stats(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "depth": self.depth,
            "unacked": self.unacked,
            "consumers": len(self.consumers),
            "capacity": self.ring.capacity,
            # what waits (the intake ring, staged and returned messages) and
            # what consumers hold unacked: all of it is in this process's memory
            "bytes": self.ring.nbytes + sum(m.size for m in self._ready)
            + sum(m.size for m in self._returned),
            "unacked_bytes": sum(m.size for c in self.consumers for m in c._unacked.values()),
            "max_bytes": self.ring.max_bytes,
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
        self._on_room: Optional[Callable[[], None]] = None   # see on_room
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

    def recv_many(self, max_count: int = 1024, timeout: Optional[float] = 0.0) -> List[Message]:
        """Up to ``max_count`` waiting messages (within credit); waits up to
        ``timeout`` for the first (0: not at all)."""
        if self.prefetch and len(self._unacked) >= self.prefetch:
            msgs: List[Message] = []
        else:
            msgs = self._take(max_count)
        if msgs or timeout == 0:
            return msgs
        first = self.recv(timeout)
        return [first] + self.recv_many(max_count - 1)

    def ack(self, msg: Message) -> None:
        q = self.queue
        with q._lock:
            q._owed(self, msg)
            q.counters["acked"] += 1
        if q.log is not None and msg._id:
            q.log.settle(msg._id)

    def ack_many(self, msgs: List[Message]) -> List[errors.AckError]:
        """Ack deliveries under one lock; returns the errors of those that
        could not be acked (unknown, settled, taken back), in order; the
        others are acked."""
        return self.ack_tags([msg._tag for msg in msgs])

    def ack_tags(self, tags: List[int]) -> List[errors.AckError]:
        """``ack_many`` by delivery tag: what the broker's runs of ACK records
        carry (it keeps no map of its own from tags to messages)."""
        q = self.queue
        with q._lock:
            missing, ids = settle(tags, self._unacked, q._inflight)   # _owed, natively
            failed = [q._late_ack(tag) for tag in missing]
            q.counters["acked"] += len(tags) - len(failed)
        if q.log is not None:
            for id in ids:
                q.log.settle(id)
        return failed

    def nack_tag(self, tag: int, requeue: bool = True) -> None:
        """``nack`` by delivery tag (the broker's NACK records)."""
        msg = self._unacked.get(tag)
        if msg is None:
            with self.queue._lock:
                raise self.queue._late_ack(tag)
        self.nack(msg, requeue)

    def on_room(self, callback: Callable[[], None]) -> bool:
        """One-shot ``callback()`` when deliveries it holds unacked are taken
        back (their ack deadline passed), so that a consumer at its prefetch
        limit gets work again; False (not armed) when it has room now."""
        with self.queue._lock:
            if not self.prefetch or len(self._unacked) < self.prefetch:
                return False
            self._on_room = callback
            return True

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
    "dedup_window": float, "segment_bytes": int, "max_bytes": int,
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
