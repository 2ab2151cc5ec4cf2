"""The broker: an embedded :class:`~ringcast.router.Router` served over ZeroMQ.

Remote subscriptions are Router subscriptions, remote queue consumers are
Router consumers and remote responders are Router responders, so remote and
embedded clients share one set of semantics and one native router. This
module adds only I/O: a ROUTER socket, sessions with heartbeats, credit in
both directions, and the batched codec.

Flow control, in short (docs/protocol.md has the details):

* a subscriber grants credit in messages; the broker moves at most that many
  out of the subscription's ring, so a stalled subscriber costs at most its
  ring (whose overflow policy then applies) plus its credit window;
* a publisher spends credit in bytes per ordered frame and gets it back once
  the frame is routed; a frame that meets a full ``block`` ring waits, whole,
  until the ring has room, and the publisher runs out of credit: that is
  block-policy backpressure across processes, with bounded broker memory.

One thread runs the loop; the Router may also be used from other threads of
the same program (publishes from them reach remote subscribers too).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union, cast

import zmq

from . import _codec as C
from . import errors
from ._args import check_count
from ._impl import USE_EXTENSIONS, Message
from ._zsock import EAGAIN, EHOSTUNREACH, EVENTS, POLLIN, RCVTIMEO, zget, zrecv_message, zsend_parts
from .queues import Consumer, Queue, queue_options_from_wire
from .router import Router
from .services import PendingRequest, _Service, check_reply

log = logging.getLogger("ringcast.broker")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7450"
#: outbound frames are cut at this size
FRAME_TARGET = 64 << 10
#: publish credit (bytes of ordered frames in flight) per client
DEFAULT_WINDOW = 4 << 20
#: largest buffer (ring slots) a client may ask for, per subscription or queue
DEFAULT_MAX_CAPACITY = 1 << 20
#: the most max_frame, max_message or max_subject may be (sums of them stay
#: far inside the reader's size_t)
MAX_LIMIT = 1 << 40
#: payload bytes one client's subscription or queue may hold at the broker
#: (NATS's default pending-bytes limit per subscription is the same)
DEFAULT_MAX_BUFFER_BYTES = 64 << 20
#: subscriptions + consumers + responders one session may hold
DEFAULT_MAX_HANDLES = 10_000
#: frames queued for a client whose socket pipe is full, before it is dropped
MAX_BACKLOG = 256
#: the longest time (ms) an RQST tells a responder it has: about 285,000
#: years, "forever" (a REQ may ask for any u64)
MAX_TIMEOUT_MS = 1 << 53
#: pending TCP connections the broker's listening sockets queue
LISTEN_BACKLOG = 1024
#: numbers the brokers' inproc wake endpoints, unique within the process
_INPROC_IDS = itertools.count(1)
#: after input, the loop polls this long (seconds) before it sleeps: a reply
#: or the next request arriving within it costs no wake-up of the broker.
#: 0 for an embedded broker (it would hold its host's GIL); ``ringcast broker``
#: passes None: spin around request traffic only, up to REQUEST_SPIN after an
#: answer went out (a synchronous requester's next request comes soon), and
#: while requests are owed for twice as long as answers have been taking when
#: that is under REQUEST_SPIN
DEFAULT_SPIN = 0.0
REQUEST_SPIN = 0.001
#: publish credit owed to a client waits this long for other output to ride on
CREDIT_DELAY = 0.001
#: requests for one responder leave in frames of about this many bytes, so that
#: it works on the first ones while the broker still routes the rest
REQUEST_SPLIT = 1024
#: most messages a subscriber may have in flight, whatever credit it asks for
MAX_CREDIT = 1 << 16
#: subjects whose publishes STATS counts one by one; past it, the least
#: published half is folded into OTHER_SUBJECTS (subjects like ``orders.<id>``
#: would grow the table, and every STATS answer, without bound)
MAX_COUNTED_SUBJECTS = 4096
OTHER_SUBJECTS = "(other subjects)"
#: STATS records of one frame answered with statistics; the others get ERR
#: (each answer is a JSON snapshot of the whole broker: a frame of 6-byte
#: STATS records would make gigabytes of it and hold up every other client)
MAX_STATS_PER_FRAME = 16
# commands that may start an ordered (credit-counted, strictly sequential) frame
_ORDERED = frozenset((C.PUB, C.PUBS, C.SUB, C.CLOSE, C.DECLARE, C.SEND, C.CONSUME, C.SERVE,
                      C.REQ))
_PUBLISH = (C.PUB, C.PUBS)
_OVERFLOW = ("block", "drop_oldest", "drop_newest")
#: routing id of the loop's own wake-up socket (an inproc DEALER connected to
#: the ROUTER); the ROUTER refuses a later peer claiming it (no handover)
_WAKE_ID = b"\x00ringcast-wake"
#: a message read from the ROUTER: (identity, frame, parts), see zrecv_message
_Received = Tuple[bytes, Optional[bytes], int]


class _Flow:
    """What the broker may still send to one remote subscription: the
    messages the client granted (its window), and, when the subscription is
    bounded in bytes, bytes sent that the client has not taken yet, so that a
    window of 8192 messages of 1 MiB is not 8 GiB on its way to one client."""

    __slots__ = ("credit", "max_bytes", "inflight", "sent")

    def __init__(self, credit: int, max_bytes: int) -> None:
        self.credit = credit
        # 0: messages only. Never below a few CREDIT_BYTES: a client grants
        # CREDIT early only once it took that many bytes (its window of
        # messages may be far away), so a smaller bound could wait forever.
        self.max_bytes = max(max_bytes, 4 * C.CREDIT_BYTES) if max_bytes else 0
        self.inflight = 0
        self.sent: Deque[List[int]] = collections.deque()   # [messages, bytes] per write

    def room(self) -> int:
        """Bytes that may be written now (> 0), 0 to wait for CREDIT."""
        if self.credit <= 0:
            return 0
        if not self.max_bytes:
            return FRAME_TARGET
        return max(0, min(FRAME_TARGET, self.max_bytes - self.inflight))

    def wrote(self, n: int, nbytes: int) -> None:
        self.credit -= n
        if self.max_bytes and n:
            self.inflight += nbytes
            self.sent.append([n, nbytes])

    def granted(self, n: int) -> bool:
        """CREDIT: the client took ``n`` more messages, the oldest sent.
        True when this lets a stalled subscription move again."""
        stalled = not self.room()
        self.credit = min(self.credit + n, MAX_CREDIT)
        sent = self.sent
        while n and sent:
            k, b = sent[0]
            if k <= n:
                sent.popleft()
                self.inflight -= b
                n -= k
            else:   # part of a write: its bytes pro rata
                part = b * n // k
                sent[0] = [k - n, b - part]
                self.inflight -= part
                n = 0
        return stalled


class _Session:
    """One connected client (one ROUTER identity)."""

    def __init__(self, ident: bytes, name: str, heartbeat: float, now: float,
                 version: int = C.PROTOCOL_VERSION) -> None:
        self.ident = ident
        self.name = name
        self.version = version   # what the client speaks (WELCOME echoes it)
        self.heartbeat = heartbeat
        self.last_rx = now
        self.last_tx = now
        self.out = C.Writer()
        self.frames: Deque[bytes] = collections.deque()
        self.parked: Deque[Tuple[C.Reader, int]] = collections.deque()
        self.credit_due = 0      # publish credit to give back (bytes)
        self.credit_since = 0.0  # when it became due
        self.subs: Dict[int, Any] = {}           # handle -> Subscription
        self.flows: Dict[int, _Flow] = {}        # handle -> what may be sent to it
        self.consumers: Dict[int, Any] = {}      # handle -> Consumer
        self.services: Dict[int, _RemoteResponder] = {}
        self.tags = itertools.count(1)
        # (handle, what for) with a one-shot callback registered: the next
        # message of a subscription or queue (False), or a full consumer's
        # room (True)
        self.armed: Set[Tuple[int, bool]] = set()
        # the callback a parked frame registered with the router's space signal
        self.waiting: Optional[Any] = None
        self.alive = True


class _WireRequest(PendingRequest):
    """A request from a remote client. Its answer is written straight into
    the requester's session: no reply Message, no callback per request."""

    __slots__ = ("broker", "session", "rid", "born")
    deadline: float   # always one: REQ carries its timeout

    def __init__(self, broker: "Broker", service: _Service, deadline: float,
                 session: _Session, rid: int) -> None:
        # PendingRequest's fields, set here: a Python call less per request
        self.service = service
        self.on_done = _no_callback
        self.deadline = deadline
        self.settled = False   # not _unclaimed: settled on the loop only, by its own methods
        self.broker = broker
        self.session = session
        self.rid = rid
        self.born = broker._now

    # Settled only on the broker loop (answers from other threads are handed
    # to it), so an answer racing the deadline is applied once, never twice.
    def respond(self, msg: Optional[Message], payload: Any, headers: Any) -> None:
        check_reply(payload, headers, self.broker.max_message)   # what the requester reads
        self.broker._call_soon(self._respond, payload, headers)

    def _respond(self, payload: Any, headers: Any) -> None:
        """On the loop (``_on_reps`` calls it directly)."""
        if self.settled:
            self.service.count("late_replies")
            return
        self.settled = True
        broker = self.broker
        broker._answer_time += (broker._now - self.born - broker._answer_time) / 8
        broker._answer(self.session, C.REPLY, self.rid, headers, payload)

    def _settle(self, result: Any) -> bool:   # errors only: fail() and expire()
        broker = self.broker
        if threading.get_ident() != broker._loop_ident:
            return broker._call_soon(self._settle, result)
        if self.settled:
            return False
        self.settled = True
        code = getattr(result, "code", 0) or errors.ServiceError.code
        broker._answer(self.session, C.REPLYERR, self.rid, code, str(result))
        return True


def _no_callback(_: Any) -> None:
    pass


def _unpublished(subject: str, payload: Any, headers: Any) -> int:
    """What ``Reader.route`` steps over a refused run of publishes with."""
    return 0


def _no_consumer(hid: int, tag: int) -> errors.AckError:
    return errors.AckError(f"delivery {tag} on handle {hid} is unknown (no consumer)")


class _RemoteResponder:
    """A remote client's responder, as the router's services see it: it takes
    a request while the client has room (its concurrency) and writes it
    straight into the client's next frame. Requests offered from threads
    other than the broker loop are handed to the loop, in the room they take."""

    __slots__ = ("broker", "session", "hid", "service", "concurrency", "asked", "handed",
                 "closed")

    def __init__(self, broker: "Broker", session: _Session, hid: int, service: _Service,
                 concurrency: int) -> None:
        self.broker = broker
        self.session = session
        self.hid = hid
        self.service = service
        self.concurrency = concurrency
        self.asked: Dict[int, PendingRequest] = {}   # tag -> request sent, unanswered
        # one per request handed to the loop and not offered there yet: its
        # room is taken, so a refill from another thread hands over no more
        # than fits, and the rest keeps its place in the backlog (a deque:
        # appended by any thread, popped by the loop, each atomic)
        self.handed: Deque[None] = collections.deque()
        self.closed = False

    def has_room(self) -> bool:
        return not self.closed and self.session.alive and \
            len(self.asked) + len(self.handed) < self.concurrency

    def _offer(self, payload: Any, headers: Any, pending: PendingRequest) -> bool:
        if not self.has_room():
            return False
        broker = self.broker
        if threading.get_ident() != broker._loop_ident:
            self.handed.append(None)
            if broker._call_soon(self._take_handed, payload, headers, pending):
                return True
            self.handed.pop()   # the broker stopped: the service offers it elsewhere
            return False
        if pending.deadline is None:
            left = MAX_TIMEOUT_MS   # no deadline (docs/protocol.md, Requests)
        else:
            ms = (pending.deadline - broker._now) * 1000
            # a REQ may ask any u64 of ms; past MAX_TIMEOUT_MS it means
            # "forever", and is clamped while still a float
            left = MAX_TIMEOUT_MS if ms > MAX_TIMEOUT_MS else int(ms)
            if left <= 0:
                pending.expire()
                return True
        s = self.session
        tag = next(s.tags)
        self.asked[tag] = pending
        if s.out.rqst(self.hid, tag, left, self.service.name, headers, payload) \
                >= REQUEST_SPLIT and not s.frames:
            # the responder starts on these while we go on (not while its pipe
            # is backed up: MAX_BACKLOG counts frames)
            broker._flush_out(s)
        else:
            broker._dirty.add(s)
        return True

    def _take_handed(self, payload: Any, headers: Any, pending: PendingRequest) -> None:
        """On the loop: a request handed over goes out in the room it took,
        or, the responder gone meanwhile, elsewhere."""
        self.handed.popleft()
        if not self._offer(payload, headers, pending):
            self.service.dispatch(payload, headers, pending)

    def refill(self) -> None:
        """After an answer settled its request: the freed slot goes to the
        backlog (only then, so that nothing a refill meets costs the answer)."""
        if self.service.backlog:
            self.service.refill(self)

    def close(self) -> None:
        """Requests it holds fail (the responder is gone); the backlog goes to
        the other responders. From another thread (``Router.close()``), on
        the loop."""
        self.broker._call_soon(self._close)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.service.responders.remove(self)
        asked, self.asked = self.asked, {}
        for pending in asked.values():
            pending.fail(errors.ServiceError("the responder disconnected"))
        self.service.responder_gone()


class Broker:
    """A ringcast broker. ``run()`` blocks; ``start()`` runs it in a thread.

    ``bind`` endpoints may use port 0 (``tcp://127.0.0.1:0``); ``endpoints``
    reports the real ones once started. Pass ``router`` to serve an existing
    embedded Router, so in-process and remote clients meet.
    """

    def __init__(self, bind: Union[str, Sequence[str]] = (DEFAULT_ENDPOINT,), *,
                 router: Optional[Router] = None, data_dir: Optional[str] = None,
                 fsync: str = "interval", max_capacity: int = DEFAULT_MAX_CAPACITY,
                 max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
                 max_handles: int = DEFAULT_MAX_HANDLES, heartbeat: float = 1.0,
                 max_frame: int = C.DEFAULT_MAX_FRAME, max_message: int = C.DEFAULT_MAX_MESSAGE,
                 max_subject: int = C.DEFAULT_MAX_SUBJECT, window: int = DEFAULT_WINDOW,
                 spin: Optional[float] = DEFAULT_SPIN,
                 context: Optional[zmq.Context] = None) -> None:
        self.bind = [bind] if isinstance(bind, str) else list(bind)
        # the limits first: a broker refused leaves no router (threads, logs) behind
        for name, limit in (("max_frame", max_frame), ("max_message", max_message),
                            ("max_subject", max_subject)):
            check_count(name, limit, 1, MAX_LIMIT)
        if max_buffer_bytes < 0:
            raise errors.LimitExceeded(f"max_buffer_bytes must be >= 0 (0: no bound), "
                                       f"got {max_buffer_bytes}")
        if max_frame < C.max_record(max_message, max_subject):
            raise errors.LimitExceeded(
                f"max_frame {max_frame} cannot hold a record of max_message {max_message}, "
                f"max_subject {max_subject} and {C.MAX_HEADERS} bytes of headers: it must be "
                f"at least {C.max_record(max_message, max_subject)}")
        # data_dir/fsync: where durable queues live (ignored when a router is given)
        self.router = router if router is not None else Router(data_dir=data_dir, fsync=fsync)
        self._owns_router = router is None   # closed with the broker (logs, threads)
        self.max_capacity = max_capacity
        self.max_buffer_bytes = max_buffer_bytes
        self.max_handles = max_handles
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.max_message = max_message
        self.max_subject = max_subject
        self.window = max(window, max_frame)
        # seconds to keep polling without sleeping after input (0: never
        # spin; None: around request traffic, see DEFAULT_SPIN)
        self.spin = None if spin is None else max(0.0, spin)
        self._answer_time = 0.0   # moving average: seconds from a request to its reply
        self._answered = -1.0     # when the last answer to a remote request went out
        self.endpoints: List[str] = []
        self._ctx = context or zmq.Context.instance()
        self._sessions: Dict[bytes, _Session] = {}
        self._ready: Deque[Tuple[_Session, int]] = collections.deque()  # (session, handle)
        self._calls: Deque[Any] = collections.deque()     # callbacks from other threads
        self._retry: Set[bytes] = set()                   # sessions with parked frames to retry
        # remote requests in flight by timeout (ms): those asking one timeout
        # arrive in deadline order (the clock only moves on), so each deque is
        # sorted and a request costs an append, not a heap push. The heap
        # holds (deadline, n, timeout) per deque, at or before its first one's.
        self._timeouts: Dict[int, Deque[_WireRequest]] = {}
        self._deadlines: List[Tuple[float, int, int]] = []
        self._queued = 0         # requests in those deques, answered or not
        self._live = 0           # remote requests not answered yet (to prune the deques)
        self._dirty: Set[_Session] = set()                # sessions with output to send
        self._eager = False      # the frame being applied carried requests or answers
        self._owed: Set[_Session] = set()                 # ... with only credit, held back
        self._seq = itertools.count()
        self._subjects: Dict[str, str] = {}
        self._counts: Dict[str, int] = {}
        self._thread: Optional[threading.Thread] = None
        self._loop_ident: Optional[int] = None
        self._now = time.monotonic()   # the loop's clock for the current pass
        self._started = threading.Event()
        self._stopping = False
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._ended = False   # the loop ran its last calls: see _call_soon
        self._sock: Optional[zmq.Socket] = None
        # the native router itself: no Python call per message (the pure-Python
        # core of RINGCAST_NO_EXTENSIONS=1 is called per message instead)
        self._publish = self.router if USE_EXTENSIONS else self.router.try_publish
        # ... and its path for the commonest requests and replies (the
        # pure-Python core's broker runs _on_reqs and _on_reps throughout)
        self._native = C.RequestPath(self, _RemoteResponder, _WireRequest, REQUEST_SPLIT,
                                     MAX_TIMEOUT_MS) if USE_EXTENSIONS else None
        self.counters: "collections.Counter[str]" = collections.Counter()
        self._start_error: Optional[BaseException] = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "Broker":
        """Run in a daemon thread; returns once the sockets are bound."""
        self._thread = threading.Thread(target=self._run_started, name="ringcast-broker",
                                        daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def _run_started(self) -> None:
        try:
            self.run()
        except BaseException:
            if self._start_error is None:
                raise
            # raised by start() in its caller: not a second time as the thread's

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (from any thread or a signal handler) and wait for it."""
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # the transport refuses oversize frames before allocating them
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame)
        # frames queued to one client; past it sends fail and the session's own
        # backlog (MAX_BACKLOG) fills, then a client that does not read is dropped
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 100000)
        # connections waiting to be accepted (libzmq's default is 100; the kernel
        # caps it at net.core.somaxconn): a burst of clients reconnecting after a
        # restart overflows 100 and waits out TCP's 1 s SYN retry
        sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
        # other threads wake the loop through the ROUTER itself, so the loop
        # waits in a blocking recv on one socket instead of a zmq_poll over two
        # (which costs several syscalls per pass: EVENTS on each, two polls).
        # Connected before any network endpoint exists: no peer can take its id.
        # A name never used before: a closed broker's inproc endpoint is
        # unbound later, by libzmq's reaper (an id() may be reused by then).
        addr = f"inproc://ringcast-broker-{next(_INPROC_IDS)}"
        wake = self._ctx.socket(zmq.DEALER)
        try:
            sock.bind(addr)
            wake.setsockopt(zmq.LINGER, 0)
            wake.setsockopt(zmq.ROUTING_ID, _WAKE_ID)
            wake.connect(addr)
            for ep in self.bind:
                sock.bind(ep)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except BaseException:   # an endpoint taken or refused: leave no socket open
            wake.close(linger=0)
            sock.close(linger=0)
            self.endpoints.clear()
            raise
        self._wake_tx = wake
        self._sock = sock

    def run(self) -> None:
        """Serve until ``stop()``."""
        try:
            self._open()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            raise
        self._loop_ident = threading.get_ident()
        # embedded callbacks and handlers made ready by remote clients run on
        # the router's callback thread: one that blocks must not stall the loop
        self.router._dispatcher.hand_off(self._loop_ident)
        log.info("ringcast broker listening on %s", ", ".join(self.endpoints))
        self._started.set()
        try:
            self._loop()
        finally:
            self.router._dispatcher.hand_off(self._loop_ident, on=False)
            try:
                self._close()   # runs what was handed over, as the loop's
            finally:
                # this thread, or a later one given its ident, is the loop's
                # no more: what it hands over is refused (_ended), not run
                self._loop_ident = None

    def _close(self) -> None:
        # what other threads handed to the loop after its last pass (a request
        # for a remote responder, an embedded handler's answer): run it, or a
        # request without a deadline would wait for good
        self._run_calls()
        for s in list(self._sessions.values()):
            self._flush_out(s, force=True)
        for s in list(self._sessions.values()):
            self._drop(s, "broker stopping", notify=False)
        assert self._sock is not None
        with self._wake_lock:   # other threads hand over and wake under it
            self._ended = True   # nothing is handed over from now on
            self._wake_pending = True   # and no wake-up sent
            self._wake_tx.close(linger=0)
        self._run_calls()   # handed over until then: they now meet closed responders
        if self._owns_router:
            self.router.close()
        self._sock.close(linger=100)
        log.info("ringcast broker stopped")

    def _wake(self) -> None:
        """Interrupt the loop's poll (from another thread)."""
        if threading.get_ident() == self._loop_ident:
            return
        with self._wake_lock:
            self._send_wake()

    def _send_wake(self) -> None:
        """Under _wake_lock: one wake-up until the loop takes it."""
        if self._wake_pending or self._sock is None:
            return
        self._wake_pending = True
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _run_calls(self) -> None:
        """What other threads handed to the loop (on the loop thread: each
        pass, and as it stops): one failing call must not keep the others,
        or the close, from running."""
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("internal error in the broker loop")

    def _call_soon(self, fn: Any, *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop thread. False, and not run, once
        the loop ran its last calls as it stopped: nothing ever would."""
        if threading.get_ident() == self._loop_ident:
            fn(*args)
            return True
        with self._wake_lock:
            if self._ended:
                return False
            self._calls.append((fn, args))
            self._send_wake()
        return True

    # -- the loop -------------------------------------------------------------------------
    def _loop(self) -> None:
        sock = self._sock
        assert sock is not None
        # bytes, as copy=True makes them (typed once: a cast() per message is a call)
        recv = cast(Callable[[], bytes], sock.recv)
        setopt = sock.setsockopt
        rcvtimeo = -1
        next_timer = 0.0
        tick = min(self.heartbeat / 4, 0.25)
        last_input = 0.0
        while not self._stopping:
            first: Optional[_Received] = None
            busy = bool(self._ready or self._calls or self._retry or self._dirty)
            now = time.monotonic()
            spin = self._spin_window()
            if not busy and now - last_input < spin:
                until = last_input + spin
                if self._owed:   # held-back credit is due by CREDIT_DELAY
                    until = min(until, now + CREDIT_DELAY)
                spun = self._spin(sock, until)   # input arrived: no poll, no sleep
                if spun is True or spun is False:
                    busy = spun
                else:
                    first, busy = spun, True
            if not busy:
                timeout = 1 if self._owed else max(0, int((next_timer - now) * 1000) + 1)
                if self._deadlines:
                    timeout = min(timeout, max(0, int((self._deadlines[0][0] - now) * 1000) + 1))
                if timeout > 0:
                    # sleep in the recv of the next message's first part (its
                    # sender's identity): no zmq_poll, no EVENTS check after it
                    if timeout != rcvtimeo:
                        setopt(RCVTIMEO, timeout)
                        rcvtimeo = timeout
                    try:
                        first = zrecv_message(sock, recv())
                    except zmq.Again:
                        pass
            now = self._now = time.monotonic()
            try:
                if now >= next_timer:
                    self._heartbeats(now)
                    next_timer = now + tick
                if self._step(sock, now, first):
                    last_input = now
            except Exception:  # a bug must not take every client's broker down
                self.counters["internal_errors"] += 1
                log.exception("internal error in the broker loop")

    def _spin_window(self) -> float:
        """Seconds to poll without sleeping after input (see DEFAULT_SPIN)."""
        if self.spin is not None:
            return self.spin
        if self._live:
            window = 2 * self._answer_time
            if window <= REQUEST_SPIN:
                return window
        if self._now - self._answered < REQUEST_SPIN:
            return REQUEST_SPIN
        return 0.0   # no request traffic, or answers come too late to wait for

    def _spin(self, sock: zmq.Socket, until: float) -> Union[_Received, bool]:
        """Wait for input without sleeping, until ``until``: a client that
        answers within the window is served with no thread wake-up here.
        Returns the message that ended the spin (read at once, or _step would
        ask EVENTS, a syscall, again before reading it), else whether other
        threads queued work."""
        clock = time.monotonic
        while not zget(sock, EVENTS) & POLLIN:
            if self._wake_pending or self._calls or self._stopping or clock() >= until:
                # _wake_pending: another thread queued work (a ready ring: _mark)
                return bool(self._wake_pending or self._calls)
        return zrecv_message(sock) or False

    def _step(self, sock: zmq.Socket, now: float, first: Optional[_Received] = None) -> int:
        """One pass: read what arrived, apply it, move deliveries, send.
        ``first`` is a message already received. Returns the number of
        frames read."""
        n = 0
        self._now = now
        received = first
        while True:
            if received is None:
                if n >= 512 or not zget(sock, EVENTS) & POLLIN:
                    break
                received = zrecv_message(sock)
                if received is None:
                    break
            # [identity, frame] from a client (a ROUTER always delivers a
            # message's parts at once); more parts are a protocol error
            ident, frame, parts = received
            received = None
            n += 1
            if frame is None or parts != 2:
                self._refuse(ident, errors.ProtocolError(
                    f"a message must be one frame, not {parts - 1}"))
            elif ident == _WAKE_ID:
                n -= 1   # not input: another thread queued work (or stop)
                with self._wake_lock:
                    self._wake_pending = False
            else:
                self._on_frame(ident, frame, now)
                if self._eager:
                    self._eager = False
                    if n == 1:
                        self._flush_first()
        if self._calls:
            self._run_calls()
        if self._retry:
            retry, self._retry = self._retry, set()
            try:
                while retry:
                    s = self._sessions.get(retry.pop())
                    if s is not None:
                        self._resume(s)
            finally:
                # an error in one (counted by the loop) must not strand the
                # others: the space callbacks that listed them fired once
                self._retry |= retry
        if self._ready:
            self._flush_ready()
        if self._deadlines and self._deadlines[0][0] <= now:
            self._expire(now)
        if self._queued > 1024 and self._queued > 2 * self._live:
            # answered requests leave the deadline deques in bulk, once a
            # pass, so that they track the live ones
            self._keep_deadlines(lambda p: not p.settled)
        if self._owed:
            self._dirty |= self._owed
            self._owed.clear()
        self._flush_dirty()
        return n

    def _flush_first(self) -> None:
        """A request or an answer in the pass's first frame leaves now, ahead
        of the EVENTS check for more input (later frames of a busy pass are
        batched): the one session the native path wrote to, if it wrote to
        one only (the sender's own output, such as credit, may wait for the
        pass's flush), else every session with output."""
        sole = self._native.sole() if self._native is not None else None
        if sole is None:
            self._flush_dirty()
        elif sole.alive:
            self._flush_out(sole)
            if not sole.frames:   # a backlog stays dirty, to be retried
                self._dirty.discard(sole)

    def _flush_dirty(self) -> None:
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            for s in dirty:
                if s.alive:
                    self._flush_out(s)

    # -- inbound ----------------------------------------------------------------------------
    def _on_frame(self, ident: bytes, frame: bytes, now: float) -> None:
        s = self._sessions.get(ident)
        if s is None:
            self._hello(ident, frame, now)
            return
        s.last_rx = now
        self._dirty.add(s)
        try:
            if self._native is not None and not s.parked:
                # requests and replies, natively: all of the frame, or up to
                # the first record left for _process
                reader = self._native.frame(frame, s)
                if reader is None:
                    return
            else:
                reader = C.Reader(frame, self.max_message, self.max_subject, self._subjects)
            first = frame[0] if frame else -1   # the first record's command
            if first in _ORDERED:
                if s.parked:
                    s.parked.append((reader, len(frame)))
                    return
                if not self._process(s, reader):
                    s.parked.append((reader, len(frame)))
                    return
                if not s.credit_due:
                    s.credit_since = now
                s.credit_due += len(frame)
            else:
                self._process(s, reader, urgent=True)
        except errors.RingcastError as exc:
            self.counters["protocol_errors"] += 1
            log.warning("client %r sent a bad frame: %s; dropping its session", s.name, exc)
            self._error(s, 0, exc)
            self._drop(s, str(exc))
        except Exception as exc:  # a bug must cost one session, not the broker
            self.counters["internal_errors"] += 1
            log.exception("internal error on a frame from %r; dropping its session", s.name)
            self._error(s, 0, errors.RingcastError(f"internal broker error: {exc}"))
            self._drop(s, "internal error")

    def _refuse(self, ident: bytes, exc: errors.RingcastError) -> None:
        """Answer input that is not a frame at all: ERR, and the session (if
        any) ends, as for a frame that does not decode."""
        self.counters["protocol_errors"] += 1
        s = self._sessions.get(ident)
        if s is None:
            self.counters["refused_frames"] += 1
            w = C.Writer(256)
            w.record(C.ERR, 0, exc.code, str(exc))
            self._send(ident, w.take())
            return
        log.warning("client %r sent a bad message: %s; dropping its session", s.name, exc)
        self._error(s, 0, exc)
        self._drop(s, str(exc))

    def _hello(self, ident: bytes, frame: bytes, now: float) -> None:
        try:
            reader = C.Reader(frame, 4096, self.max_subject)
            rec = reader.next()
            if rec is None or rec[0] != C.HELLO:
                raise errors.ConnectionLost("no session: send HELLO first")
            if reader.peek() != -1:   # read as nothing, the rest would vanish unsaid
                raise errors.ProtocolError(
                    "HELLO must be alone in its frame: send nothing else until WELCOME")
            _, version, hb_ms, name = rec
            if not C.PROTOCOL_VERSION_MIN <= version <= C.PROTOCOL_VERSION:
                raise errors.VersionMismatch(
                    f"protocol version {version} not supported; this broker speaks "
                    f"{C.PROTOCOL_VERSION_MIN} to {C.PROTOCOL_VERSION}")
        except errors.RingcastError as exc:
            # answered, never remembered: a hostile peer costs no broker memory
            self.counters["refused_frames"] += 1
            w = C.Writer(256)
            w.record(C.ERR, 0, exc.code, str(exc))
            self._send(ident, w.take())
            return
        hb = min(max(hb_ms / 1000.0, 0.05), 60.0)
        s = _Session(ident, name, hb, now, version)
        self._sessions[ident] = s
        self._dirty.add(s)
        self.counters["sessions"] += 1
        s.out.record(C.WELCOME, version, int(hb * 1000), self.max_frame,
                     self.max_message, self.max_subject, self.window, f"ringcast-{os.getpid()}")
        log.info("client %r connected", name)

    def _process(self, s: _Session, reader: C.Reader, urgent: bool = False) -> bool:
        """Apply the records of a frame in order. Returns False when a record
        met a full block-policy buffer: the reader stays at that record.
        An ``urgent`` frame is applied on arrival and never parked: an
        ordered record in it is a protocol error."""
        batch_sends = True
        stats_left = MAX_STATS_PER_FRAME
        while True:
            cmd = reader.peek()
            if cmd == -1 or not s.alive:   # a record may drop the session (a flush
                return True                # for its responder, BYE): the rest is void
            if cmd == C.REP:   # replies and requests first: a sync round trip waits
                self._eager = True
                if self._native is not None:
                    self._native.replies(reader, s)
                if s.alive and reader.peek() == C.REP:
                    self._on_reps(s, reader.run(cmd))
                continue
            if urgent and cmd in _ORDERED:
                raise errors.ProtocolError(
                    f"record 0x{cmd:02x} is ordered: it cannot follow an urgent one in a frame")
            if cmd == C.REQ:   # they come in runs (never blocked): one call per run
                self._eager = True
                if self._native is not None:   # the common ones, up to any other
                    self._native.requests(reader, s)
                if s.alive and reader.peek() == C.REQ:
                    self._on_reqs(s, reader.run(cmd))
                continue
            if cmd in _PUBLISH:
                try:
                    reader.route(self._publish, self._counts)
                except errors.Closed as exc:
                    # the router it was given (Broker(router=...)) closed
                    # under it: ERR, not taken for a bad frame (the session
                    # goes on); the rest of the run meets it closed too
                    reader.route(_unpublished)
                    self._error(s, 0, exc)
                    continue
                if len(self._counts) > MAX_COUNTED_SUBJECTS:
                    self._fold_counts()
                if reader.peek() in _PUBLISH:   # a block-policy ring is full
                    return self._park(s, self.router.blocked_ring)
                continue
            if cmd == C.ACK:   # a consumer's acks come in runs: one decode per run
                for hid, tags in reader.acks().items():
                    self._on_acks(s, hid, tags)
                continue
            if cmd == C.STATS:
                rec = reader.next()
                assert rec is not None
                if stats_left:
                    stats_left -= 1
                    self._on_stats(s, rec)
                else:
                    self._error(s, rec[1], errors.LimitExceeded(
                        f"at most {MAX_STATS_PER_FRAME} STATS in one frame"))
                continue
            if cmd == C.SEND and self.router.closed:
                # as a run of publishes: one ERR for the run, the session goes
                # on (a queue that exists would take them, for nobody to consume)
                reader.run(C.SEND)
                self._error(s, 0, errors.Closed("router is closed"))
                continue
            start = reader.offset
            if cmd == C.SEND and batch_sends:   # and a producer's sends to one queue
                queue, payloads = reader.sends()
                if queue is not None:
                    try:
                        q = self._queue(queue)
                        taken = q.try_put_many(payloads, None)
                    except errors.RingcastError:
                        batch_sends = False   # one by one: each refused SEND answered alone
                        reader.seek(start)
                        continue
                    if taken < len(payloads):   # a block-policy queue is full
                        reader.seek(start)
                        reader.skip(taken)
                        return self._park(s, q.ring)
                    continue
            rec = reader.next()
            assert rec is not None
            handler = self._handlers.get(cmd)
            if handler is None:
                raise errors.ProtocolError(f"command 0x{cmd:02x} is not a client command")
            if handler(self, s, rec) is False:
                reader.seek(start)
                return False

    def _fold_counts(self) -> None:
        """Keep the most published half of the subjects counted one by one;
        the others' publishes are counted together (the total stays exact)."""
        counts = self._counts
        other = counts.pop(OTHER_SUBJECTS, 0)
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)
        keep = MAX_COUNTED_SUBJECTS // 2
        self._counts = dict(ranked[:keep])
        self._counts[OTHER_SUBJECTS] = other + sum(n for _, n in ranked[keep:])

    def _park(self, s: _Session, ring: Any) -> bool:
        self.counters["publisher_waits"] += 1
        # a ring has one space callback: wait through the router's space signal,
        # which every waiter arms alike and which wakes them all (other parked
        # sessions, embedded publishers), instead of taking the slot from them
        space = self.router._space
        ident = s.ident

        def wake() -> None:
            self._call_soon(self._wakeup, ident)

        if ring is None or not space.on_ready(wake, lambda: bool(ring.arm_space(space.notify))):
            self._retry.add(ident)
        else:
            s.waiting = wake   # taken back if the session ends first
        return False

    def _wakeup(self, ident: bytes) -> None:
        self._retry.add(ident)

    def _resume(self, s: _Session) -> None:
        """Retry a session's parked frames after room appeared."""
        while s.parked and s.alive:
            reader, size = s.parked[0]
            try:
                if not self._process(s, reader):
                    return
            except errors.RingcastError as exc:
                self._error(s, 0, exc)
                self._drop(s, str(exc))
                return
            s.parked.popleft()
            if not s.credit_due:
                s.credit_since = self._now
            s.credit_due += size
            self._dirty.add(s)

    def _error(self, s: _Session, ref: int, exc: errors.RingcastError) -> None:
        s.out.record(C.ERR, ref, exc.code or errors.RingcastError.code, str(exc))

    def _admit(self, s: _Session, hid: Optional[int], capacity: int,
               max_bytes: int = 0) -> int:
        """Refuse what would let one client take the broker's memory; returns
        the byte bound of the buffer (the broker's when the client set none)."""
        if capacity > self.max_capacity:
            raise errors.LimitExceeded(
                f"capacity {capacity} is over this broker's limit of {self.max_capacity}")
        if self.max_buffer_bytes and max_bytes > self.max_buffer_bytes:
            raise errors.LimitExceeded(
                f"max_bytes {max_bytes} is over this broker's limit of {self.max_buffer_bytes}")
        if hid is not None and hid not in s.subs and hid not in s.consumers \
                and hid not in s.services \
                and len(s.subs) + len(s.consumers) + len(s.services) >= self.max_handles:
            raise errors.LimitExceeded(
                f"a session may hold at most {self.max_handles} subscriptions, "
                f"consumers and responders")
        return max_bytes or self.max_buffer_bytes

    # -- command handlers (return False to leave the record for a retry) -------------------
    def _on_sub(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, pattern, capacity, overflow, window, max_bytes = rec
        try:
            max_bytes = self._admit(s, hid, capacity, max_bytes)
            if overflow >= len(_OVERFLOW):
                raise errors.LimitExceeded(f"unknown overflow policy code {overflow}")
            sub = self.router.subscribe(pattern, capacity=max(1, capacity),
                                        overflow=_OVERFLOW[overflow], max_bytes=max_bytes)
        except errors.RingcastError as exc:
            self._error(s, hid, exc)
            return
        self._close_handle(s, hid)
        s.subs[hid] = sub
        # a version 1 client grants credit only at half its window: holding
        # it to bytes in flight could stop its subscription for good
        s.flows[hid] = _Flow(min(window, MAX_CREDIT), max_bytes if s.version >= 2 else 0)
        self._arm_sub(s, hid)

    def _arm_sub(self, s: _Session, hid: int) -> None:
        if hid in s.subs and not self._arm(s, hid, s.subs[hid].on_ready):
            self._ready.append((s, hid))

    def _arm(self, s: _Session, hid: int, on_ready: Any, room: bool = False) -> bool:
        """Register for the next message of a handle once (or, ``room``, for
        a full consumer's next free slot); False when it is there already.
        The key goes into ``s.armed`` before the callback is registered: it
        may fire at once on another thread (the router's reaper, a publisher
        of an embedded router), and its ``_mark`` must find the key to take
        it out, or the handle would stay "armed" with nothing registered."""
        key = (hid, room)
        if key in s.armed:
            return True
        s.armed.add(key)
        armed = False
        try:
            armed = bool(on_ready(lambda: self._mark(s, hid, key)))
        finally:
            if not armed:   # nothing registered: nothing will take it out
                s.armed.discard(key)
        return armed

    def _mark(self, s: _Session, hid: int, key: Tuple[int, bool]) -> None:
        s.armed.discard(key)
        self._ready.append((s, hid))
        self._wake()

    def _on_credit(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, n = rec
        flow = s.flows.get(hid)
        if flow is not None and flow.granted(n):
            self._ready.append((s, hid))

    def _on_close(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        self._close_handle(s, rec[1])

    def _close_handle(self, s: _Session, hid: int) -> None:
        # a handle id used again must be armed afresh, not inherit the old wait
        s.armed.discard((hid, False))
        s.armed.discard((hid, True))
        sub = s.subs.pop(hid, None)
        if sub is not None:
            s.flows.pop(hid, None)
            sub.close()
        consumer = s.consumers.pop(hid, None)
        if consumer is not None:
            consumer.close()   # unacked messages go back, flagged redelivered
        responder = s.services.pop(hid, None)
        if responder is not None:
            responder.close()

    def _on_declare(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, ref, name, capacity, overflow, bind, options = rec
        try:
            opts = queue_options_from_wire(options)
            opts["max_bytes"] = self._admit(s, None, capacity, opts.get("max_bytes", 0))
            if overflow >= len(_OVERFLOW):
                raise errors.LimitExceeded(f"unknown overflow policy code {overflow}")
            self.router.declare_queue(name, bind=bind, capacity=max(1, capacity),
                                      overflow=_OVERFLOW[overflow], **opts)
        except errors.RingcastError as exc:
            self._error(s, ref, exc)
            return
        s.out.record(C.OK, ref)

    def _queue(self, name: str) -> Queue:
        """A queue a client uses, declared on first use with this broker's
        byte bound (the router's own default has none)."""
        return self.router.ensure_queue(name, max_bytes=self.max_buffer_bytes)

    def _on_send(self, s: _Session, rec: Tuple[Any, ...]) -> Optional[bool]:
        _, queue, headers, payload = rec
        try:
            q = self._queue(queue)
            q.put(payload, headers, 0)
        except errors.WouldBlock:
            return self._park(s, q.ring)
        except errors.RingcastError as exc:
            self._error(s, 0, exc)
        return None

    def _on_consume(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, queue, prefetch = rec
        try:
            self._admit(s, hid, 0)
            self._queue(queue)
            consumer = self.router.consume(queue, prefetch=max(1, prefetch))
        except errors.RingcastError as exc:
            self._error(s, hid, exc)
            return
        self._close_handle(s, hid)
        s.consumers[hid] = consumer
        self._ready.append((s, hid))

    # A consumer's deliveries are settled by tag against the queue's own map
    # of what it owes that consumer: one account of what it holds, which the
    # ack deadline also updates (a delivery taken back frees its room).
    def _on_acks(self, s: _Session, hid: int, tags: List[int]) -> None:
        consumer = s.consumers.get(hid)
        if consumer is None:   # closed, or never a consumer
            for tag in tags:
                self._error(s, 0, _no_consumer(hid, tag))
            return
        # unknown, settled or taken back (the ack deadline passed): reported
        for exc in consumer.ack_tags(tags):
            self._error(s, 0, exc)
        self._ready.append((s, hid))   # room freed

    def _on_nack(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, tag, requeue = rec
        consumer = s.consumers.get(hid)
        try:
            if consumer is None:
                raise _no_consumer(hid, tag)
            consumer.nack_tag(tag, requeue=bool(requeue))
        except errors.AckError as exc:
            self._error(s, 0, exc)
            return
        self._ready.append((s, hid))   # room freed

    def _on_serve(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, name, concurrency = rec
        try:
            self._admit(s, hid, 0)
            responder = self.router.attach_responder(
                name, lambda service: _RemoteResponder(self, s, hid, service, max(1, concurrency)))
        except errors.RingcastError as exc:
            self._error(s, hid, exc)   # a handle it replaces serves on
            return
        self._close_handle(s, hid)
        s.services[hid] = responder   # it took up the service's backlog on joining

    def _on_reqs(self, s: _Session, records: List[Tuple[Any, ...]]) -> None:
        """A run of REQ records (what the native path left; all of them on
        the pure-Python core): one Python call per run, not per request.
        Stops when a request's dispatch dropped the session (a flush for its
        responder, on the same session): the rest is void."""
        services = self.router._services
        timeouts = self._timeouts
        now = self._now
        for _, rid, name, timeout_ms, headers, payload in records:
            service = services.get(name)
            if service is None or not service.responders:
                try:   # the router says why (NoResponders, a bad subject)
                    service = self.router.service(name)
                except errors.RingcastError as exc:
                    s.out.record(C.REPLYERR, rid, exc.code, str(exc))
                    continue
            deadline = now + timeout_ms / 1000.0
            pending = _WireRequest(self, service, deadline, s, rid)
            self._live += 1
            service.submit(payload, headers, pending)
            if not pending.settled:
                queue = timeouts.get(timeout_ms)
                if queue is None:
                    queue = self._deadline_queue(timeout_ms, deadline)
                queue.append(pending)
                self._queued += 1
            if not s.alive:
                return

    def _deadline_queue(self, timeout_ms: int, deadline: float) -> Deque[_WireRequest]:
        """The deque of a timeout no request in flight has (one whose
        ``deadline`` is its first), with its heap entry."""
        queue = self._timeouts[timeout_ms] = collections.deque()
        heapq.heappush(self._deadlines, (deadline, next(self._seq), timeout_ms))
        return queue

    def _answer(self, s: _Session, cmd: int, rid: int, a: Any, b: Any) -> None:
        """Write the answer to a remote request (on the loop thread): REPLY
        with headers and payload, or REPLYERR with code and text."""
        self._live -= 1
        self._answered = self._now
        if s.alive:
            if cmd == C.REPLY:   # the common answer: no argument tuple, no format walk
                s.out.reply(rid, a, b)
            else:
                s.out.record(cmd, rid, a, b)
            self._dirty.add(s)

    def _on_reps(self, s: _Session, records: List[Tuple[Any, ...]]) -> None:
        """A run of REP records (one call per run); stops, as ``_on_reqs``,
        once the session is gone."""
        services = s.services
        for _, hid, tag, headers, payload in records:
            responder = services.get(hid)
            if responder is None:   # answered after its handle was closed
                continue
            pending = responder.asked.pop(tag, None)
            if pending is None:   # ... or with a tag it does not hold
                continue
            if type(pending) is _WireRequest:
                pending._respond(payload, headers)   # we are on the loop
            else:
                pending.respond(None, payload, headers)
            if responder.service.backlog:   # the freed slot goes to a waiting request
                responder.refill()
            if not s.alive:
                return

    def _on_reperr(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        _, hid, tag, code, text = rec
        self._eager = True
        responder = s.services.get(hid)
        if responder is None:   # answered after its handle was closed
            return
        pending = responder.asked.pop(tag, None)
        if pending is not None:
            pending.fail(errors.error_from_code(code, text))
            responder.refill()

    def _on_stats(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        s.out.record(C.STATSREP, rec[1], json.dumps(self.stats(), default=str))

    def _on_hb(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        pass

    def _on_bye(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        self._drop(s, "said goodbye", notify=False)

    def _on_hello(self, s: _Session, rec: Tuple[Any, ...]) -> None:
        # a client starting over on the same socket: forget the old session first
        self._drop(s, "restarted its session", notify=False)
        w = C.Writer(64)
        w.record(*rec)
        self._hello(s.ident, w.take(), time.monotonic())

    _handlers = {
        C.SUB: _on_sub, C.CLOSE: _on_close, C.CREDIT: _on_credit, C.DECLARE: _on_declare,
        C.SEND: _on_send, C.CONSUME: _on_consume, C.NACK: _on_nack,
        C.SERVE: _on_serve, C.REPERR: _on_reperr,
        C.HB: _on_hb, C.BYE: _on_bye, C.HELLO: _on_hello,
    }

    # -- outbound ----------------------------------------------------------------------------
    def _flush_ready(self) -> None:
        # pop only what is there now, never swap the deque: a ``_mark`` on
        # another thread may hold the old one and append to it after the swap
        ready = self._ready
        seen: Set[Tuple[bytes, int]] = set()
        for _ in range(len(ready)):
            s, hid = ready.popleft()
            key = (s.ident, hid)
            if key in seen or not s.alive:
                continue
            seen.add(key)
            self._dirty.add(s)
            if hid in s.subs:
                self._flush_sub(s, hid)
            elif hid in s.consumers:
                self._flush_consumer(s, hid)

    def _flush_sub(self, s: _Session, hid: int) -> None:
        sub = s.subs[hid]
        ring = sub.ring
        flow = s.flows[hid]
        out = s.out
        while True:
            room = flow.room()
            if not room:
                return   # CREDIT from the client re-marks it
            before = len(out)
            # MSGS runs (version 3); what the client would refuse is dropped
            n = out.write_ring(ring, hid, flow.credit, min(before + room, FRAME_TARGET),
                               s.version >= 3, self.max_message)
            flow.wrote(n, len(out) - before)
            if len(out) >= FRAME_TARGET:
                s.frames.append(out.take())
                if len(s.frames) > 8:
                    self._flush_out(s)
                    if not s.alive:   # the flush dropped it (peer gone, not reading)
                        return
                    if len(s.frames) > 8:   # pipe full: come back next loop
                        self._ready.append((s, hid))
                        return
                continue
            if len(ring) == 0:
                if not self._arm(s, hid, sub.on_ready):
                    continue
                return

    def _flush_consumer(self, s: _Session, hid: int) -> None:
        consumer = s.consumers[hid]
        room = consumer.prefetch - consumer.unacked
        if room > 0:
            msgs = consumer.recv_many(room)
            refused = s.out.write_deliveries(hid, msgs, self.max_message)
            if refused:
                self._reject_unreadable(consumer, refused)
            if len(msgs) < room:   # the queue ran dry: until its next message
                if not self._arm(s, hid, consumer.queue.on_ready):
                    self._ready.append((s, hid))
                return
        # at its prefetch limit: until acks come, or the ack deadline takes some back
        if not self._arm(s, hid, consumer.on_room, room=True):
            self._ready.append((s, hid))

    def _reject_unreadable(self, consumer: Consumer, msgs: List[Message]) -> None:
        """Reject (dead-letter, or count as rejected) queue messages no remote
        consumer can read: an in-process ``send`` is not held to the wire's
        limits. Sent to this consumer, they would end its session and come
        back, again and again."""
        for msg in msgs:
            log.warning("queue %r: a message over this broker's limits (max_message %d, "
                        "%d bytes of headers) is rejected, not sent to a remote consumer",
                        consumer.queue.name, self.max_message, C.MAX_HEADERS)
            consumer.nack(msg, requeue=False)

    def _flush_out(self, s: _Session, force: bool = False) -> None:
        if s.credit_due:
            # credit rides with other output (a reply, deliveries) when it can:
            # alone it waits up to CREDIT_DELAY unless it is a large share
            if force or len(s.out) or s.frames or s.credit_due * 4 >= self.window \
                    or self._now - s.credit_since >= CREDIT_DELAY:
                s.out.record(C.PCREDIT, s.credit_due)
                s.credit_due = 0
            else:
                self._owed.add(s)
        frames = s.frames
        if not frames:   # the common case: one frame, sent as it is taken
            if len(s.out):
                frame = s.out.take()
                if not self._send(s.ident, frame):
                    frames.append(frame)
                elif s.alive:
                    s.last_tx = self._now
            return
        if len(s.out):
            frames.append(s.out.take())
        while frames:
            if not self._send(s.ident, frames[0]):
                if len(frames) > MAX_BACKLOG:
                    self._drop(s, "not reading (outbound backlog full)", notify=False)
                return
            if not s.alive:   # the peer is gone (the drop let go of its frames)
                return
            frames.popleft()
            s.last_tx = self._now

    def _send(self, ident: bytes, frame: bytes) -> bool:
        err = zsend_parts(self._sock, ident, frame)  # type: ignore[arg-type]   # open
        if not err:
            return True
        if err == EAGAIN:
            return False
        if err == EHOSTUNREACH:
            s = self._sessions.get(ident)
            if s is not None:
                self._drop(s, "gone", notify=False)
            return True
        raise zmq.ZMQError(err)

    # -- time ---------------------------------------------------------------------------------
    def _heartbeats(self, now: float) -> None:
        for s in list(self._sessions.values()):
            if now - s.last_rx > 3 * s.heartbeat:
                self._drop(s, "heartbeats missed", notify=False)
                continue
            if now - s.last_tx >= s.heartbeat and not len(s.out):
                s.out.record(C.HB)
            if len(s.out) or s.frames or s.credit_due:
                self._dirty.add(s)   # also retries frames a full pipe refused

    def _expire(self, now: float) -> None:
        heap, timeouts = self._deadlines, self._timeouts
        while heap and heap[0][0] <= now:
            timeout = heapq.heappop(heap)[2]
            queue = timeouts[timeout]
            try:
                while queue and queue[0].deadline <= now:
                    pending = queue.popleft()
                    self._queued -= 1
                    if not pending.settled:
                        pending.expire()
            finally:   # an error must not strand the rest of the deque
                if queue:
                    heapq.heappush(heap, (queue[0].deadline, next(self._seq), timeout))
                else:
                    del timeouts[timeout]

    def _keep_deadlines(self, keep: Any) -> None:
        """Keep the requests in flight that ``keep(request)`` accepts, and the
        heap in step (in place: a caller up the stack may hold a deque)."""
        heap, timeouts = self._deadlines, self._timeouts
        heap.clear()
        self._queued = 0
        for timeout, queue in list(timeouts.items()):
            kept = [p for p in queue if keep(p)]
            queue.clear()
            queue.extend(kept)
            if kept:
                heap.append((kept[0].deadline, next(self._seq), timeout))
                self._queued += len(kept)
            else:
                del timeouts[timeout]
        heapq.heapify(heap)

    def _drop(self, s: _Session, why: str, notify: bool = True) -> None:
        """Forget a session: its subscriptions end, its unacked queue
        messages are redelivered, its in-flight requests to it fail."""
        if not s.alive:
            return
        s.alive = False
        if notify:
            self._flush_out(s, force=True)
        self._sessions.pop(s.ident, None)
        for hid in list(s.subs) + list(s.consumers) + list(s.services):
            self._close_handle(s, hid)
        s.parked.clear()
        if s.waiting is not None:   # the buffer may stay full for good
            self.router._space.cancel(s.waiting)
            s.waiting = None
        s.frames.clear()   # never sent now: held only by what still refers to s
        s.out.take()
        # its requests still unanswered are withdrawn: nobody can read their
        # answers, so no responder is handed one any more (every live request
        # is in the deadline deques; a drop is rare enough to scan them). Its
        # requests leave them, answered or not: their deadlines can be far
        # away, and each would hold the session until then.
        withdrawn = 0
        for queue in self._timeouts.values():
            for pending in queue:
                if pending.session is s and not pending.settled:
                    pending.settled = True
                    withdrawn += 1
        self._keep_deadlines(lambda p: p.session is not s)
        if withdrawn:
            self._live -= withdrawn
            self.counters["requests_withdrawn"] += withdrawn
        self.counters["sessions_dropped"] += 1
        log.info("client %r disconnected: %s", s.name, why)

    # -- introspection ------------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """Router counts, per-subject publish counts (of the most published
        subjects, see MAX_COUNTED_SUBJECTS), drops, clients, memory,
        and which core routes (``native``, or ``python`` under
        RINGCAST_NO_EXTENSIONS=1)."""
        rs = self.router.stats()
        subs = rs.get("subscriptions", [])
        return {
            "clients": len(self._sessions),
            "client_names": sorted(s.name for s in self._sessions.values()),
            "published": rs.get("published"),
            "delivered": rs.get("delivered"),
            "subjects": dict(self._counts),
            "dropped": rs.get("dropped", 0),   # closed subscriptions' drops too
            # payload bytes waiting in subscription and queue buffers here
            "buffered_bytes": sum(int(x.get("bytes", 0)) for x in subs)
            + sum(int(q.get("bytes", 0)) + int(q.get("unacked_bytes", 0))
                  for q in rs.get("queues", {}).values()),
            "subscriptions": subs,
            "queues": rs.get("queues", {}),
            "services": rs.get("services", {}),
            "service_totals": rs.get("service_totals", {}),   # forgotten services' too
            "counters": dict(self.counters),
            "memory_rss": _rss(),
            "endpoints": list(self.endpoints),
            "core": "native" if USE_EXTENSIONS else "python",
        }


def _rss() -> int:
    """Resident set size of this process in bytes (0 where unknown).

    Exact on Linux (/proc) and wherever psutil is installed; otherwise the
    peak RSS from getrusage (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import psutil
        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        import resource
    except ImportError:  # Windows without psutil
        return 0
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024
