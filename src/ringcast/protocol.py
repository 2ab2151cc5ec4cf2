"""Client side of the wire protocol, without I/O (sans-IO).

The sync client (``client.py``) and the asyncio client (``aio.py``) both
drive one :class:`ClientProtocol`: they hand it received frames and ask it
for frames to send; everything about sessions, handles, credit, batching,
heartbeats and re-establishing state after a broker restart lives here, once.
The drivers only differ in how they wait and how they wake each other.

Threading: every public method takes ``self.lock`` (an ``RLock`` for the sync
client, a no-op for asyncio), so the sync client's user threads and I/O
thread can share one protocol object; but for the sync requester's fast path
(``request`` with ``now``, ``answer``), whose session is its thread's alone.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, cast

from . import _codec as C
from . import errors
from ._args import check_count
from ._impl import Message, check_pattern, check_subject, policy_code
from .queues import queue_options_to_wire

log = logging.getLogger("ringcast.client")

Headers = Optional[Dict[str, str]]
Settle = Callable[[Any], None]

#: ordered frames are cut at this size; larger batches gain nothing measurable
FRAME_TARGET = 64 << 10
#: how long past a request's deadline the client waits for the broker's own
#: Timeout answer before failing the request itself
REQUEST_GRACE = 0.05
#: largest default subscription window (the broker caps any window at 65536)
MAX_WINDOW = 1 << 16
#: publishes buffered beyond the broker's credit before ``publish`` must wait
QUEUED_LIMIT = 1 << 20
#: longest error text a responder sends with a failed request
MAX_ERROR_TEXT = 4096


_RQST, _MSG, _QMSG, _PCREDIT = (C.RQST, C.MSG, C.QMSG, C.PCREDIT)


class _Handle:
    """Something the broker must know about this client: re-declared on every
    new session. ``record`` is the (cmd, *fields) that declares it."""

    kind = "handle"
    #: the delivery record this kind of handle takes (MSG, QMSG or RQST)
    delivery = -1

    def __init__(self, proto: "ClientProtocol", hid: int, record: Tuple[Any, ...]) -> None:
        self.proto = proto
        self.id = hid
        self.record = record
        self.inbox: Deque[Any] = collections.deque()   # Messages, or encoded runs
        self.closed = False
        self.error: Optional[errors.RingcastError] = None
        self.wake: Callable[[], None] = _noop

    def reset(self) -> None:
        """A new session starts: nothing from the old one is valid any more."""
        self.inbox.clear()

    @property
    def pending(self) -> int:
        return len(self.inbox)

    @property
    def ended(self) -> bool:
        """Closed here (or its client), or refused or ended by the broker:
        nothing more comes."""
        return self.closed or self.error is not None or self.proto.closed

    def deliver(self, msgs: Any) -> None:
        """Keep what a ``delivery`` record brought: here a list of Messages
        (QMSG); subscriptions and responders take their own shapes."""
        self.inbox.extend(msgs)

    def take(self, max_count: int, payloads: bool = False) -> List[Any]:
        """Up to ``max_count`` messages (or their payloads) from the inbox
        (caller holds the lock)."""
        inbox = self.inbox
        if max_count >= len(inbox):
            out = list(inbox)
            inbox.clear()
        else:
            out = [inbox.popleft() for _ in range(max_count)]
        if out:
            self._taken(len(out))
            if payloads:
                return [m.payload for m in out]
        elif self.ended:
            self._raise_closed()
        return out

    def _taken(self, n: int) -> None:
        pass

    def _raise_closed(self) -> None:
        if self.error is not None:
            raise self.error
        raise errors.Closed(f"{self.kind} is closed")


class RemoteSubscription(_Handle):
    """A subscription held at the broker; the client grants it credit as the
    application takes messages, so at most ``window`` are in flight."""

    kind = "subscription"
    delivery = _MSG

    def __init__(self, proto: "ClientProtocol", hid: int, pattern: str, capacity: int,
                 overflow: str, window: int, max_bytes: int) -> None:
        super().__init__(proto, hid, (C.SUB, hid, pattern, capacity, policy_code(overflow),
                                      window, max_bytes))
        self.pattern = pattern
        self.window = window
        self.consumed = 0     # taken since the last CREDIT
        self.consumed_bytes = 0   # their encoded bytes
        self.last_seq = 0
        self.dropped = 0      # sequence gaps seen: messages the broker dropped by policy
        self.count = 0        # messages in the inbox (it holds encoded runs)
        self.stale = 0        # ... of them sent in an earlier session (the oldest)

    def reset(self) -> None:
        # messages already received stay readable; only the flow state restarts,
        # and taking them grants the new session nothing: it did not send them
        self.consumed = 0
        self.consumed_bytes = 0
        self.last_seq = 0
        self.stale = self.count

    def deliver(self, run: Any) -> None:
        """Queue a run of encoded deliveries (``_codec.Deliveries``)."""
        self.dropped += run.last_seq - self.last_seq - run.count
        self.last_seq = run.last_seq
        self.inbox.append(run)
        self.count += run.count

    @property
    def pending(self) -> int:
        return self.count

    def take(self, max_count: int, payloads: bool = False) -> List[Any]:
        out: List[Any] = []
        inbox = self.inbox
        while inbox and len(out) < max_count:
            run = inbox[0]
            held = run.nbytes
            try:
                got = (run.take_payloads if payloads else run.take)(max_count - len(out))
            except errors.RingcastError:
                inbox.popleft()   # a corrupt run is dropped whole, and reported
                self.count -= run.count
                self.stale = min(self.stale, self.count)
                raise
            self.consumed_bytes += held - run.nbytes
            out += got
            if not run.count:
                inbox.popleft()
        if out:
            self.count -= len(out)
            self._taken(len(out))
        elif self.ended:
            self._raise_closed()
        return out

    def _taken(self, n: int) -> None:
        # half the window taken; or, holding nothing more, enough bytes taken
        # that the broker may be waiting on its bound of bytes in flight
        if self.stale:
            k = min(n, self.stale)
            self.stale -= k
            n -= k
        self.consumed += n
        if not self.consumed:
            return
        if self.consumed * 2 >= self.window or (
                not self.count and self.consumed_bytes >= C.CREDIT_BYTES):
            self.proto.urgent.put(C.CREDIT, self.id, self.consumed)
            self.consumed = 0
            self.consumed_bytes = 0


class RemoteConsumer(_Handle):
    """A queue consumer held at the broker with ``prefetch`` unacked at most.
    It settles its messages: ``msg.ack()`` and ``msg.nack()`` land here."""

    kind = "consumer"
    delivery = _QMSG

    def __init__(self, proto: "ClientProtocol", hid: int, queue: str, prefetch: int) -> None:
        super().__init__(proto, hid, (C.CONSUME, hid, queue, prefetch))
        self.queue = queue
        self.owner = _Settler(self, hid, proto.urgent)

    def reset(self) -> None:
        super().reset()
        self.owner.stale = True   # acks of old deliveries mean nothing to a new broker
        self.owner = _Settler(self, self.id, self.proto.urgent)


class RemoteService(_Handle):
    """A responder registered at the broker; requests arrive in the inbox."""

    kind = "responder"
    delivery = _RQST

    def __init__(self, proto: "ClientProtocol", hid: int, name: str, concurrency: int) -> None:
        super().__init__(proto, hid, (C.SERVE, hid, name, concurrency))
        self.name = name
        self.owner = _RequestSettler(self, hid, proto.urgent)

    def deliver(self, msg: Any) -> None:   # one request per RQST record
        self.inbox.append(msg)

    def reset(self) -> None:
        super().reset()
        self.owner.stale = True
        self.owner = _RequestSettler(self, self.id, self.proto.urgent)


class _Settler(C.Settler):
    """The ``_owner`` of a remote consumer's deliveries for one session, and
    the base of a responder's (``_RequestSettler``): ``ack`` and ``respond``
    are native (every consumed message and every request comes there); the
    rest is here, and a consumer's refuses ``respond``."""

    __slots__ = ()

    def _check(self) -> "ClientProtocol":
        self.live()
        return cast("ClientProtocol", self.handle.proto)

    def nack(self, msg: Message, requeue: bool = True) -> None:
        with self.handle.proto.lock:
            urgent = self._check().urgent
            self.settling(msg)
            urgent.put(C.NACK, self.hid, msg._tag, 1 if requeue else 0)
            msg._tag = 0   # settled: once (see C.Settler.ack)

    def respond(self, msg: Message, payload: Any, headers: Headers = None) -> None:
        raise errors.RingcastError("queue messages are acked, not responded to")   # as embedded

    def fail(self, msg: Message, exc: BaseException) -> None:
        if isinstance(exc, errors.RingcastError) and exc.code:
            code, text = exc.code, str(exc)
        else:
            code, text = errors.ServiceError.code, f"{type(exc).__name__}: {exc}"
        with self.handle.proto.lock:
            self._check().urgent.put(C.REPERR, self.hid, msg._tag, code,
                                     text[:MAX_ERROR_TEXT])


class _RequestSettler(_Settler):
    """A responder's: its requests are answered (the native ``respond`` of
    C.Settler: checks, then the REP write), never acked or nacked (an ACK
    would be refused by the broker after the call returned)."""

    __slots__ = ()
    respond = C.Settler.respond

    def handler_raised(self, msg: Message, exc: Exception) -> None:
        """``answer``'s handler raised: logged, the request failed."""
        log.exception("handler for %r raised", msg.subject, exc_info=exc)
        fail(msg, exc)

    def not_replied(self, msg: Message, exc: errors.RingcastError) -> None:
        """``answer``'s (or ``reply``'s) result could not be sent, see ``reply``."""
        if isinstance(exc, errors.AckError):
            log.debug("reply to a request of an ended session dropped")
        else:
            log.error("handler for %r returned what cannot be a reply: %s", msg.subject, exc)
            self.fail(msg, exc)

    def ack(self, msg: Message) -> None:
        raise errors.RingcastError("requests are responded to, not acked")

    def nack(self, msg: Message, requeue: bool = True) -> None:
        raise errors.RingcastError("requests are responded to, not nacked")


def reply(msg: Message, result: Any) -> None:
    """Send a handler's result as its request's reply. A result that cannot
    be one fails the request with that error (WrongType, LimitExceeded)
    instead of escaping into the client's I/O loop, which would end the
    session; a request of a session that has ended is dropped (the broker
    already told its requester the responder disconnected)."""
    owner = msg._owner
    try:
        owner.respond(msg, result)
    except errors.RingcastError as exc:
        owner.not_replied(msg, exc)


def fail(msg: Message, exc: BaseException) -> None:
    """Fail a request its handler raised for: the requester gets
    ``ServiceError`` naming the exception, as from an embedded responder,
    also when the handler raised a ringcast error of its own (a request it
    made that timed out must not read as the requester's own ``Timeout``).
    As in ``reply``, a request of a session that has ended is dropped (not
    raised into the caller: a threaded handler's worker, an asyncio task)."""
    try:
        msg._owner.fail(msg, errors.ServiceError(f"{type(exc).__name__}: {exc}"))
    except errors.AckError:
        log.debug("failure of a request of an ended session dropped")


def _noop() -> None:
    pass


def _ignore(_: Any) -> None:
    pass


class ClientProtocol:
    """Session state of one client connection (see module docstring)."""

    def __init__(self, name: str = "", *, heartbeat: float = 1.0, linger: float = 0.002,
                 lock: Any = None) -> None:
        self.name = name
        self.heartbeat = heartbeat
        self.linger = linger
        self.lock = lock if lock is not None else C.NoLock()
        self.outbox = C.Outbox(check_subject, time.monotonic, FRAME_TARGET, QUEUED_LIMIT)
        self.outbox.kick = lambda: self.kick()
        #: acks, replies, credit and control, ahead of the ordered stream
        self.urgent = C.Urgent(self, self.lock, FRAME_TARGET)
        self.credit = 0
        #: publish credit returned in this session, all told (bytes)
        self.confirmed = 0
        #: subscriptions closed here whose CLOSE the broker has not applied:
        #: handle -> ``confirmed`` once it is. Their MSGs are still granted
        #: credit (and dropped): CLOSE is ordered, and may wait behind this
        #: client's own publishes held back by the very subscription it closes
        self.draining: Dict[int, int] = {}
        self.hello_sent_at = -1.0
        self.sessions = 0            # completed handshakes
        self.losses = 0              # sessions ended (or tries that got none)
        self.handles: Dict[int, _Handle] = {}
        self.owners: Dict[int, _Settler] = {}
        #: responder handle -> a handler the decoder runs as its requests
        #: arrive (the sync client's inline handlers: see ``C.Reader.events``)
        self.inline: Dict[int, Callable[[Message], Any]] = {}
        # rid -> (service, settle, deadline): the broker answers Timeout at the
        # deadline itself; expire_requests is the safety net if it cannot
        self.requests: Dict[int, Tuple[str, Settle, float]] = {}
        self.waiters: Dict[int, Settle] = {}              # OK/ERR/STATSREP by ref
        self.ids = itertools.count(1)
        self.subjects: Dict[str, str] = {}
        self.max_message = C.DEFAULT_MAX_MESSAGE
        self.max_frame = C.DEFAULT_MAX_FRAME
        self.window = 0
        self.last_rx = self.last_tx = time.monotonic()
        #: called (with the lock held) when something should be sent soon
        self.kick: Callable[[], None] = _noop
        #: called when a publisher waiting for credit may proceed
        self.on_credit: Callable[[], None] = _noop
        #: called with each (handle) that received messages
        self.on_deliver: Callable[[_Handle], None] = _ignore
        self.closed = False
        #: bytes of ordered frames (publishes, sends...) that were buffered or
        #: in flight, unconfirmed, when a session ended: reported by the next
        #: flush (``take_loss``) so a confirm never covers a lost message
        self.unconfirmed_lost = 0
        #: ERRs ref 0 that refused publishes or sends (a run of them, or one
        #: SEND) since the last ``take_loss``, and the first: it raises that
        self.refused = 0
        self.first_refusal: Optional[errors.RingcastError] = None
        #: bytes of re-declarations at the head of the outbox, until WELCOME
        self.redeclared = 0

    # -- session ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """WELCOME received for the current session (kept where the native
        acks and replies test it)."""
        return bool(self.urgent.ready)

    @ready.setter
    def ready(self, value: bool) -> None:
        self.urgent.ready = value

    def connection_made(self, now: float) -> None:
        """A fresh socket: start a session and queue everything to re-declare.
        Requests still waiting were made since the last session ended (or it
        ended unnoticed): their REQ is cleared with the outbox, never to be
        sent, so they fail now instead of waiting out their deadline."""
        with self.lock:
            orphans, self.requests = self.requests, {}
            self.ready = False
            self.credit = self.confirmed = 0
            self.draining.clear()
            # re-declarations were never sent: they are no publish to lose
            self.unconfirmed_lost += max(0, int(self.outbox.unsent) - self.redeclared)
            self.outbox.clear()
            self.owners.clear()
            # re-declare everything first: what is buffered before the WELCOME
            # goes after it (a publish after the binding it relies on, a send
            # after the DECLARE with the queue's options, a CLOSE after its SUB)
            for h in self.handles.values():
                h.reset()
                if isinstance(h, (RemoteConsumer, RemoteService)):
                    self.owners[h.id] = h.owner
                self.outbox.record(*h.record)
            self.redeclared = int(self.outbox.unsent)
            self.last_rx = self.last_tx = now
            self._send_hello(now)
        if orphans:
            exc = errors.ConnectionLost("the session to the broker ended before the request "
                                        "was sent; it may be sent again")
            for _, settle, _ in orphans.values():
                settle(exc)

    def _send_hello(self, now: float) -> None:
        self.urgent.clear()   # nothing else may go before HELLO
        self.urgent.record(C.HELLO, C.PROTOCOL_VERSION, int(self.heartbeat * 1000), self.name)
        self.hello_sent_at = now
        self.kick()

    def connection_lost(self, exc: errors.RingcastError) -> None:
        """The session is gone: fail what cannot survive it (requests, waiters)."""
        with self.lock:
            if self.ready:
                self.unconfirmed_lost += max(0, self.window - self.credit)
            self.ready = False
            self.losses += 1
            # what it delivered can no longer be settled: an ack now would be
            # written nowhere, and the broker redelivers the message anyway
            for owner in self.owners.values():
                owner.stale = True
            requests, self.requests = self.requests, {}
            waiters, self.waiters = self.waiters, {}
        for _, settle, _ in requests.values():
            settle(exc)
        for settle in waiters.values():
            settle(exc)

    def timer(self, now: float) -> Tuple[bool, float]:
        """Heartbeat bookkeeping. Returns (session_lost, seconds until next call)."""
        with self.lock:
            hb = self.heartbeat
            if now - self.last_rx > 3 * hb:
                return True, hb
            ready = self.urgent.ready   # ``ready``'s own field: no Python call per loop pass
            if not ready and now - self.hello_sent_at > hb:
                self._send_hello(now)
            elif ready and now - self.last_tx >= hb and not len(self.urgent):
                self.urgent.record(C.HB)
                self.kick()
            wait = hb - (now - self.last_tx)
            if self.outbox.buffered:
                wait = min(wait, self.linger)
            return False, max(0.0005, min(wait, hb))

    # -- outbound ----------------------------------------------------------------------
    def _ordered(self, cmd: int, *fields: Any) -> None:
        self.outbox.record(cmd, *fields)

    def publish(self, subject: str, payload: Any, headers: Headers = None,
                timeout: Optional[float] = None) -> None:
        """Buffer one message (the drivers bind ``outbox.publish`` directly)."""
        self.outbox.publish(subject, payload, headers, timeout)

    def can_publish(self) -> bool:
        return bool(self.outbox.can_publish()) or self.closed

    def check_open(self) -> None:
        """Closed: nothing more is sent, so nothing more may be accepted."""
        if self.closed:
            raise errors.Closed("client is closed")

    def mark_closed(self) -> None:
        self.closed = self.outbox.closed = True   # the outbox refuses publish and send

    def flush(self) -> None:
        """Cut the partial ordered frame now instead of after the linger."""
        self.check_open()
        self.outbox.cut()
        self.kick()

    def unsent(self) -> int:
        """Bytes not yet handed to the socket (partial frame + queued frames)."""
        return int(self.outbox.unsent)

    def applied(self) -> bool:
        """Has the broker applied everything sent so far (all credit back)?"""
        with self.lock:
            return self.ready and not self.unsent() and self.credit >= self.window

    def take_loss(self) -> None:
        """Raise (once) what the caller's confirm must not succeed over, since
        the last call: ConnectionLost if ordered frames went unconfirmed with
        a session (what it says covers refusals too: send them all again),
        else the first refusal of publishes or sends, as the broker typed it."""
        with self.lock:
            lost, self.unconfirmed_lost = self.unconfirmed_lost, 0
            refused, first = self.refused, self.first_refusal
            self.refused, self.first_refusal = 0, None
        if lost:
            raise errors.ConnectionLost(
                f"the session to the broker ended with {lost} bytes of publishes/sends "
                f"unconfirmed: they may or may not have been applied; send them again "
                f"(with a msg-id header to make the retry land once)")
        if first is not None:
            raise errors.error_from_code(
                first.code, f"the broker refused publishes or sends ({refused} ERR since the "
                f"last flush; the first: {first}): what it refused was not applied, the rest was")

    def data_to_send(self, now: float, eager: bool = False) -> List[bytes]:
        """Frames to hand to the socket now, urgent ones first; ordered ones
        only within publish credit. A partial ordered frame goes once it is
        ``linger`` old, or at once when ``eager`` (the asyncio client calls
        this once per event-loop tick, which is its batching window)."""
        with self.lock:
            out: List[bytes] = self.urgent.take()
            if not self.urgent.ready:   # as in timer()
                return out
            self.outbox.cut(now, self.linger, eager)
            frames, used = self.outbox.take_frames(self.credit)
            self.credit -= used
            out += frames
            if out:
                self.last_tx = now
            return out

    # -- commands ---------------------------------------------------------------------
    def subscribe(self, pattern: str, capacity: int, overflow: str,
                  window: Optional[int] = None, max_bytes: int = 0) -> RemoteSubscription:
        """``window`` (messages in flight to this process) defaults to the
        broker-side capacity, up to MAX_WINDOW: a subscription sized for
        bursts also streams them without waiting on credit round trips.
        ``max_bytes`` 0 takes the broker's bound."""
        self.check_open()
        check_pattern(pattern)
        check_count("capacity", capacity)
        check_count("max_bytes", max_bytes, 0, (1 << 63) - 1)
        window = min(capacity, MAX_WINDOW) if window is None else check_count("window", window)
        with self.lock:
            h = RemoteSubscription(self, next(self.ids), pattern, capacity, overflow, window,
                                   max_bytes)
            self.handles[h.id] = h
            self._ordered(*h.record)
            return h

    def consume(self, queue: str, prefetch: int) -> RemoteConsumer:
        self.check_open()
        check_subject(queue)
        check_count("prefetch", prefetch)
        with self.lock:
            h = RemoteConsumer(self, next(self.ids), queue, prefetch)
            self.handles[h.id] = h
            self.owners[h.id] = h.owner
            self._ordered(*h.record)
            return h

    def serve(self, name: str, concurrency: int) -> RemoteService:
        self.check_open()
        check_subject(name)
        check_count("concurrency", concurrency)
        with self.lock:
            h = RemoteService(self, next(self.ids), name, concurrency)
            self.handles[h.id] = h
            self.owners[h.id] = h.owner
            self._ordered(*h.record)
            return h

    def close_handle(self, h: _Handle) -> None:
        with self.lock:
            if h.closed:
                return
            h.closed = True
            self.handles.pop(h.id, None)
            self.owners.pop(h.id, None)
            # also between sessions: its SUB/CONSUME/SERVE is in the outbox
            self._ordered(C.CLOSE, h.id)
            if self.ready and isinstance(h, RemoteSubscription):
                # applied once all before it is
                self.draining[h.id] = (self.confirmed + self.window - self.credit
                                       + self.unsent())
                owed = h.consumed + h.count - h.stale   # what it took or holds
                if owed:
                    self.urgent.put(C.CREDIT, h.id, owed)
            elif isinstance(h, RemoteConsumer):
                # the broker gives back all the consumer holds, to go to
                # others: none of it is handed out or settled here any more
                h.inbox.clear()
                h.owner.stale = True
            h.wake()

    def declare_queue(self, name: str, bind: Sequence[str], capacity: int, overflow: str,
                      options: Dict[str, Any], settle: Settle) -> None:
        self.check_open()
        check_subject(name)
        for p in bind:
            check_pattern(p)
        check_count("capacity", capacity)
        wire = queue_options_to_wire(options)
        with self.lock:
            ref = next(self.ids)
            rec = (C.DECLARE, ref, name, capacity, policy_code(overflow), list(bind), wire)
            # queues outlive a broker restart only if re-declared: keep it as a handle
            h = _Handle(self, ref, rec)
            self.handles[ref] = h
            self.waiters[ref] = settle
            self._ordered(*rec)

    def send(self, queue: str, payload: Any, headers: Headers = None) -> None:
        """Buffer one message for a queue (the sync client binds ``outbox.send``)."""
        self.outbox.send(queue, payload, headers)

    def request(self, service: str, payload: Any, headers: Headers, timeout: Optional[float],
                settle: Settle, now: Optional[float] = None) -> Tuple[int, Optional[bytes]]:
        """Queue a request; ``settle`` gets the reply Message or an exception.
        Returns its rid, and None; with ``now`` (a driver that sends at once,
        the per-thread requester), the REQ's frame instead of the None when
        it may leave at once (a session, nothing waiting to go before it,
        the credit for it): the caller sends it, without ``data_to_send``.
        That requester's session is its thread's alone (its lock a no-op):
        with ``now`` the lock is not taken."""
        if now is None:
            with self.lock:
                rid = next(self.ids)
                # checks (closed, name, timeout, size; headers as written) and REQ, natively
                deadline, _ = self.outbox.request(rid, service, payload, headers, timeout,
                                                  REQUEST_GRACE)
                self.requests[rid] = (service, settle, deadline)
                return rid, None
        rid = next(self.ids)
        urgent = self.urgent
        credit = self.credit if urgent.ready and not len(urgent) else -1
        deadline, frame = self.outbox.request(rid, service, payload, headers, timeout,
                                              REQUEST_GRACE, credit, now)
        self.requests[rid] = (service, settle, deadline)
        if frame is not None:
            self.credit -= len(frame)
            self.last_tx = now
        return rid, frame

    def expire_requests(self, now: float) -> None:
        """Fail requests whose deadline passed with no answer from the broker
        (it normally sends Timeout itself; this covers a broker that cannot).
        One sweep per timer tick instead of a timer per request."""
        with self.lock:
            overdue = [rid for rid, (_, _, deadline) in self.requests.items() if deadline <= now]
            expired = [self.requests.pop(rid) for rid in overdue]
        for service, settle, _ in expired:
            settle(errors.Timeout(f"request to {service!r} got no answer before its deadline"))

    def forget_request(self, rid: int) -> None:
        """The caller gave up (timeout, cancellation): a late reply is dropped."""
        with self.lock:
            self.requests.pop(rid, None)

    def stats(self, settle: Settle) -> None:
        self.check_open()
        with self.lock:
            ref = next(self.ids)
            self.waiters[ref] = settle
            self.urgent.put(C.STATS, ref)

    def bye(self) -> List[bytes]:
        """The last frames of a closing client: what credit allows, then BYE.
        What stays buffered is never sent: a flush still waiting must not
        confirm it (nor, once ``connection_lost``, what is unconfirmed)."""
        with self.lock:
            self.mark_closed()
            out = self.data_to_send(time.monotonic())
            self.unconfirmed_lost += self.unsent()
            w = C.Writer(64)
            w.record(C.BYE)
            return out + [w.take()]

    # -- inbound ------------------------------------------------------------------------
    def answer(self, frame: bytes, rid: int, now: float) -> Any:
        """A waiting requester's fast path (``C.Reader.answer``): the answer to
        ``rid`` (a Message or the error) when ``frame`` holds it and nothing
        but PCREDIT, whose credit is applied; else None, nothing changed, and
        the frame is for ``frame_received``. For a session with no
        subscription (nothing draining) whose credit nobody waits on, and
        that is its thread's alone (no lock is taken): the per-thread
        requester's."""
        got = C.Reader(frame, self.max_message, 1 << 20).answer(self.requests, rid)
        if got is None:
            return None
        self.last_rx = now
        answer, credit = got
        if credit:
            self.credit += credit
            self.confirmed += credit
        return answer

    def frame_received(self, frame: bytes, now: float) -> Optional[errors.RingcastError]:
        """Apply one frame from the broker. Returns an error when the session
        is over and the driver must reconnect."""
        settles: List[Tuple[Settle, Any]] = []
        result: Optional[errors.RingcastError] = None
        with self.lock:
            self.last_rx = now
            try:
                # answers (REPLY, REPLYERR) settle natively, in the frame's
                # order: into ``settles``, no event each
                events = C.Reader(frame, self.max_message, 1 << 20, self.subjects).events(
                    self.owners, self.requests, settles, self.inline)
            except errors.RingcastError as exc:
                log.error("undecodable frame from the broker: %s", exc)
                # the session ends; replies decoded ahead of the bad record
                # left ``requests``: they are settled below, not lost
                events = []
                result = errors.ProtocolError(f"undecodable frame from the broker: {exc}")
            handles = self.handles
            fed: List[_Handle] = []   # handles that got deliveries: told once per frame
            # most frequent first: deliveries (requests for responders too),
            # credit; module constants as locals
            for ev in events:
                cmd = ev[0]
                if cmd == _RQST or cmd == _MSG or cmd == _QMSG:
                    h = handles.get(ev[1])
                    if h is not None and h.delivery == cmd:   # else: not for a live handle
                        h.deliver(ev[2])                      # of that kind: ignored
                        if h not in fed:
                            fed.append(h)
                    elif cmd == _MSG and ev[1] in self.draining:
                        self.urgent.put(C.CREDIT, ev[1], ev[2].count)
                elif cmd == _PCREDIT:
                    self.credit += ev[1]
                    self.confirmed += ev[1]
                    if self.draining:   # the CLOSEs now applied: nothing more comes
                        self.draining = {hid: at for hid, at in self.draining.items()
                                         if at > self.confirmed}
                    if self.kick is not _noop:   # a driver that sends by itself
                        self.kick()              # (the per-thread requester) has none
                    if self.on_credit is not _noop:
                        self.on_credit()
                elif cmd == C.WELCOME:
                    _, version, _hb, max_frame, max_message, max_subject, window, _bid = ev
                    self.max_frame, self.max_message = max_frame, max_message
                    self.outbox.max_message = max_message
                    # a frame is cut after the record that reaches the target:
                    # it may hold target - 1 bytes and then the largest record
                    self.urgent.frame_target = self.outbox.frame_target = max(1, min(
                        FRAME_TARGET, max_frame - C.max_record(max_message, max_subject)))
                    self.window = self.credit = window
                    self.ready = True
                    self.sessions += 1
                    self.redeclared = 0   # from now on they count as sent
                    self.kick()
                    self.on_credit()
                elif cmd == C.OK:
                    settle = self.waiters.pop(ev[1], None)
                    if settle is not None:
                        settles.append((settle, None))
                elif cmd == C.STATSREP:
                    settle = self.waiters.pop(ev[1], None)
                    if settle is not None:
                        settles.append((settle, json.loads(ev[2])))
                elif cmd == C.ERR:
                    _, ref, code, text = ev
                    reported = errors.error_from_code(code, text)
                    if ref == 0:
                        if code == errors.ConnectionLost.code or isinstance(
                                reported, errors.ProtocolError):
                            result = reported   # the broker does not know this session
                            continue
                        log.warning("broker reported: %s", reported)
                        if code != errors.AckError.code:   # an ack's is no confirm's business
                            self.refused += 1
                            if self.first_refusal is None:
                                self.first_refusal = reported
                        continue
                    settle = self.waiters.pop(ref, None)
                    if settle is not None:
                        settles.append((settle, reported))
                    h = self.handles.get(ref)
                    if h is not None:
                        h.error = reported
                        self.handles.pop(ref, None)
                        self.owners.pop(ref, None)
                        h.wake()
                        self.on_deliver(h)
                # HB: liveness only (last_rx above)
            for h in fed:
                self.on_deliver(h)
        for settle, value in settles:
            settle(value)
        return result
