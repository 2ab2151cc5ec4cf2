"""Synchronous client: ``ringcast.connect(url)``.

The methods mirror the embedded :class:`~ringcast.router.Router`. One I/O
thread per client owns the ZeroMQ socket (sockets are not thread-safe) and
drives the shared :class:`~ringcast.protocol.ClientProtocol`; application
threads buffer into the protocol under its lock and wait on a condition.
Subscription callbacks run on a thread of their own; ``serve`` handlers run
on the I/O thread unless ``threaded=True`` (see ``serve``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import zmq

from . import _codec as C
from . import errors
from ._args import check_request_timeout, check_timeout
from ._impl import Message
from ._waiting import Receiving, _deadline
from ._zsock import EAGAIN, NOBLOCK, RCVTIMEO, SNDMORE, zrecv_message, zsend, zsend_parts
from .protocol import (
    ClientProtocol,
    Headers,
    RemoteConsumer,
    RemoteService,
    RemoteSubscription,
    _Handle,
)

log = logging.getLogger("ringcast.client")

_get_ident = threading.get_ident

#: the routing ids the I/O thread's ROUTER gives its two peers: the broker
#: (CONNECT_ROUTING_ID) and the inproc DEALER other threads wake it with
_BROKER_ID = b"\x00broker"
_KICK_ID = b"\x00kick"
#: numbers the clients' inproc wake endpoints, unique within the process (a
#: closed socket's endpoint is unbound later, by libzmq's reaper)
_INPROC_IDS = itertools.count(1)
_EHOSTUNREACH = zmq.EHOSTUNREACH

Handler = Callable[[Message], Any]


def _to_broker(sock: zmq.Socket, frame: bytes) -> None:
    """Send ``frame`` from the I/O thread's ROUTER to the broker, as
    [_BROKER_ID, frame]: one native call (``zsend_parts``, which does not
    block). A socket with no room for it (EAGAIN; not with its SNDHWM of 0)
    is waited on, as pyzmq's blocking send would; EHOSTUNREACH raises (see
    ``_socket``)."""
    err = zsend_parts(sock, _BROKER_ID, frame)
    if err == EAGAIN:   # nothing was sent: the same, blocking
        zsend(sock, _BROKER_ID, SNDMORE)
        zsend(sock, frame)
    elif err:
        raise zmq.ZMQError(err)


class Client:
    """A connection to a ringcast broker (see module docstring).

    ``publish(subject, payload, headers=None, timeout=None)`` buffers one
    message; frames leave when full or after ``linger`` seconds (``flush()``
    sends at once). When the broker's publish credit is used up it waits up
    to ``timeout`` (None: forever) and then raises ``WouldBlock``.
    ``publish_many(subject, payloads, headers=None, timeout=None)`` buffers a
    batch under one subject in one native call. ``send(queue, payload,
    headers=None, timeout=None)`` puts one message on a queue (declared on
    first use) the way ``publish`` buffers one.
    """

    publish: Callable[..., None]
    publish_many: Callable[..., None]
    send: Callable[..., None]

    def __init__(self, url: str = "tcp://127.0.0.1:7450", *, name: Optional[str] = None,
                 heartbeat: float = 1.0, linger: float = 0.002, timeout: float = 5.0,
                 context: Optional[zmq.Context] = None) -> None:
        self.url = url
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.proto = ClientProtocol(name or f"py-{os.getpid()}", heartbeat=heartbeat,
                                    linger=linger, lock=self._lock)
        self.proto.kick = self._kick
        self.proto.on_credit = self._cond.notify_all
        self.proto.on_deliver = self._delivered
        self._ctx = context or zmq.Context.instance()
        outbox = self.proto.outbox
        outbox.wait = self._wait_credit
        # bound straight to the native fast path: no Python frame per publish
        self.publish = outbox.publish
        self.publish_many = outbox.publish_many
        self.send = outbox.send
        self._callbacks: Dict[int, Handler] = {}      # handle id -> callback / handler
        # handle id -> handler run on the I/O thread, as the frame is decoded
        self._inline: Dict[int, Handler] = self.proto.inline
        self._notify = False
        self._closing = False
        self._wake_pending = False
        # kicks from other threads: a frame from this inproc DEALER to the I/O
        # thread's ROUTER, sent under the lock (see _socket)
        self._wake: Optional[zmq.Socket] = None
        self._io = threading.Thread(target=self._run, name="ringcast-client-io", daemon=True)
        self._io_ident: Optional[int] = None   # the I/O thread's get_ident(), once it runs
        self._workers: List[threading.Thread] = []    # one per threaded callback/handler
        self._direct = threading.local()               # each thread's _DirectRequester
        self._requesters: List["_DirectRequester"] = []
        # the first socket is made here, so that an endpoint ZeroMQ refuses
        # raises in the caller (as in the asyncio client), not in the I/O
        # thread; the thread's start hands it over (a full memory barrier)
        self._first: Optional[zmq.Socket] = self._socket()
        self._io.start()
        if timeout:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.close()   # no broker: leave no thread or socket behind
                raise

    # -- lifecycle ----------------------------------------------------------------------
    def wait_ready(self, timeout: Optional[float] = 5.0) -> None:
        """Wait until the broker has welcomed this client (ConnectionLost if not)."""
        deadline = _deadline(timeout)
        with self._cond:
            while not self.proto.ready:
                left = None if deadline is None else deadline - time.monotonic()
                if self._closing:
                    raise errors.Closed("client is closed")
                if left is not None and left <= 0:
                    raise errors.ConnectionLost(f"no broker answered at {self.url}")
                self._cond.wait(left)

    @property
    def connected(self) -> bool:
        return self.proto.ready

    @property
    def sessions(self) -> int:
        """Handshakes completed so far (more than 1 after a reconnection)."""
        return self.proto.sessions

    def close(self, timeout: float = 5.0) -> None:
        """Flush (waiting up to ``timeout`` for the broker to confirm), say
        goodbye and stop. Waiters get ``Closed``."""
        if self._closing:
            return
        if self.proto.ready and threading.current_thread() is not self._io:
            try:
                self.flush(timeout)
            except errors.RingcastError:
                log.warning("closing with messages the broker has not confirmed")
        elif self.proto.unsent():
            log.warning("closing with messages buffered and no broker to send them to")
        self._closing = True
        self._kick_now()
        if threading.current_thread() is not self._io:   # an inline handler runs on it
            self._io.join(5)
        with self._cond:
            for h in list(self.proto.handles.values()):
                h.closed = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(5)
        for direct in self._requesters:
            direct.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the I/O thread ---------------------------------------------------------------
    def _kick(self) -> None:
        # called with the lock held, from any thread (the urgent records the
        # I/O thread writes, such as inline handlers' replies, ask none)
        if self._wake_pending or threading.get_ident() == self._io_ident:
            return
        self._wake_pending = True
        self._kick_now()

    def _kick_now(self) -> None:
        with self._lock:   # the wake socket is used and replaced under it
            if self._wake is not None:
                try:
                    zsend(self._wake, b"", NOBLOCK)
                except zmq.ZMQError:   # its ROUTER is being replaced (_socket)
                    pass

    def _dealer(self) -> zmq.Socket:
        """A DEALER connected to the broker (``_DirectRequester``'s)."""
        return self._connect(self._ctx.socket(zmq.DEALER))

    def _connect(self, sock: zmq.Socket) -> zmq.Socket:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)   # bounded by publish credit, not by the HWM
        sock.setsockopt(zmq.RCVHWM, 0)   # bounded by subscription credit
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            sock.connect(self.url)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    def _socket(self) -> zmq.Socket:
        """The I/O thread's socket, a ROUTER: the broker is its peer
        ``_BROKER_ID`` (frames go out as [_BROKER_ID, frame]), and a DEALER
        on an inproc endpoint of its own, ``_KICK_ID``, is how other threads
        wake it (``_kick``), so that the thread sleeps in a blocking recv (a
        DEALER blocked in recv could not be woken; a poll over it and a wake
        socket costs ~10 us a round trip more). Installs that DEALER as
        ``_wake``, closing the previous socket's.

        The pipe to the broker is attached at connect(), before TCP is up:
        what is sent meanwhile is queued. ROUTER_MANDATORY: if libzmq drops
        that pipe for good (the handshake with a peer of a socket type that
        may not talk to it fails) a send raises EHOSTUNREACH, and _run opens
        a new socket, where a DEALER's send would block for ever."""
        sock = self._ctx.socket(zmq.ROUTER)
        wake = self._ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            addr = f"inproc://ringcast-client-{next(_INPROC_IDS)}"
            sock.bind(addr)   # a name never used before, as the broker's
            wake.setsockopt(zmq.LINGER, 0)
            wake.setsockopt(zmq.ROUTING_ID, _KICK_ID)
            wake.connect(addr)
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, _BROKER_ID)
            self._connect(sock)   # closes sock if the URL is refused
        except BaseException:
            wake.close(linger=0)
            sock.close(linger=0)
            raise
        with self._lock:
            old, self._wake = self._wake, wake
            # a kick sent to the socket this one replaces was lost with it
            self._wake_pending = False
            if old is not None:
                old.close(linger=0)
        return sock

    def _run(self) -> None:
        self._io_ident = self.proto.urgent.sender = threading.get_ident()
        proto = self.proto
        outbox = proto.outbox
        sock, self._first = cast(zmq.Socket, self._first), None
        due = 0.0       # when the timer wants its next call
        ms = 0          # how long the next recv may sleep
        rcvtimeo = -1   # the socket's RCVTIMEO
        proto.connection_made(time.monotonic())
        try:
            while True:
                try:
                    # sleep in the recv of the next message's first part (its
                    # peer's routing id): no poll, no EVENTS check before it.
                    # RCVTIMEO is set again only when it would wake too early,
                    # or later than 1/16 of the wait (heartbeats' bookkeeping
                    # tolerates that; a linger of a few ms is exact)
                    if not ms <= rcvtimeo <= ms + (ms >> 4):
                        sock.setsockopt(RCVTIMEO, ms)
                        rcvtimeo = ms
                    try:
                        ident = sock.recv()
                    except zmq.Again:
                        received = False
                    else:
                        # input first: the frame is read and answered before
                        # the timer and the sends of other threads' work
                        same = sock
                        sock, received = self._receive(sock, ident)
                        if sock is not same:
                            rcvtimeo = -1
                    now = time.monotonic()
                    # after a frame was applied and what it produced was
                    # sent (_receive), nothing is due before the timer's time
                    # unless a handler left a partial frame (its linger starts
                    # now): other threads' work kicks the wake socket, and a
                    # stream of input cannot hold the timer off past ``due``
                    if not (received and now < due and not outbox.buffered):
                        lost, wait = proto.timer(now)
                        if lost:
                            sock = self._reconnect(sock, errors.ConnectionLost(
                                "the broker stopped answering heartbeats"))
                            ms, rcvtimeo = 0, -1
                            continue
                        due = now + wait
                        for frame in proto.data_to_send(now):
                            _to_broker(sock, frame)
                    if self._closing:
                        break
                    ms = max(1, int((due - now) * 1000))
                except zmq.ZMQError as exc:
                    if exc.errno != _EHOSTUNREACH or self._closing:
                        raise
                    # libzmq dropped the pipe to the broker for good (see _socket)
                    sock = self._reconnect(sock, errors.ConnectionLost(
                        "the connection to the broker failed"))
                    ms, rcvtimeo = 0, -1
            for frame in proto.bye():
                _to_broker(sock, frame)
        except zmq.ZMQError as exc:
            if not self._closing:
                log.error("client I/O stopped: %s", exc)
        finally:
            self._io_ident = None   # idents are reused once a thread ends
            self.proto.urgent.sender = 0
            sock.close(linger=200)
            with self._cond:
                wake, self._wake = self._wake, None   # kicks stop here
                if wake is not None:
                    wake.close(linger=0)
                self.proto.mark_closed()
                # nothing in flight is confirmed any more (a waiting flush
                # raises), and what waits for an answer gets Closed now
                self.proto.connection_lost(errors.Closed("client is closed"))
                self._cond.notify_all()

    def _receive(self, sock: zmq.Socket, ident: bytes) -> Tuple[zmq.Socket, bool]:
        """Apply one message; ``ident`` is its first part (the peer's routing
        id), its frame is next. Returns the socket to use from now on, and
        whether it was a frame from the broker (not a kick). What the frame
        produced (replies of inline handlers, credit) leaves at once; more
        input is read by the loop's next recv, with no EVENTS check here (a
        syscall between the reply and the sleep costs ~3-5 us a round trip)."""
        proto = self.proto
        try:
            # a ROUTER delivers a message's parts at once: the rest of it,
            # natively (parts past the frame are dropped and counted; the
            # frame is None for a message of one part). No typing.cast here:
            # its Tuple[...] would be built per message
            routed = zrecv_message(sock, ident)
            assert routed is not None   # with its first part given, never
            _, frame, parts = routed
            if frame is None or parts != 2:   # one frame per message (docs/protocol.md)
                if ident != _BROKER_ID:
                    return sock, False
                log.warning("session ended: the broker sent a message of %d parts", parts - 1)
                return self._reconnect(sock, errors.ConnectionLost(
                    f"protocol error: a message of {parts - 1} parts")), False
            if ident != _BROKER_ID:   # a kick: other threads' work waits for the timer's pass
                with self._lock:
                    self._wake_pending = False
                return sock, False
            now = time.monotonic()
            # a request alone in its frame, for an inline handler: answered
            # natively, and its reply taken with what else is urgent
            frames = proto.urgent.answer_request(frame, now)
            if frames is None:
                err = proto.frame_received(frame, now)
                if err is not None:
                    log.warning("session ended by the broker: %s", err)
                    return self._reconnect(sock, errors.ConnectionLost(str(err))), False
                if self._notify:   # tested here: a Python call less per frame
                    self._wake_waiters()
                frames = proto.data_to_send(now)
            elif not frames:   # answered, with publishes waiting or no reply
                frames = proto.data_to_send(now)
            for out in frames:   # _to_broker's common case, inline
                if zsend_parts(sock, _BROKER_ID, out):
                    _to_broker(sock, out)   # nothing was sent: the rare cases there
        except zmq.ZMQError:
            raise
        except Exception as exc:  # never let the I/O thread die: start a clean session
            log.exception("error applying a frame from the broker")
            return self._reconnect(sock, errors.ConnectionLost(
                f"client error: {exc}")), False
        finally:
            if self._notify:
                self._wake_waiters()
        return sock, True

    def _wake_waiters(self) -> None:
        """Threads waiting in recv: messages arrived for them (``_delivered``)."""
        if self._notify:
            with self._cond:
                self._notify = False
                self._cond.notify_all()

    def _reconnect(self, sock: zmq.Socket, exc: errors.RingcastError) -> zmq.Socket:
        """A new socket and a new session; handles are re-declared on WELCOME."""
        self.proto.connection_lost(exc)
        sock.close(linger=0)
        sock = self._socket()
        self.proto.connection_made(time.monotonic())
        with self._cond:
            self._cond.notify_all()
        return sock

    def _delivered(self, h: _Handle) -> None:
        # called by the protocol on the I/O thread, lock held. Requests for
        # inline handlers are answered as they are decoded; they come here
        # only when the client closed under a handler of their frame
        handler = self._inline.get(h.id)
        if handler is not None and h.error is None:
            for msg in h.take(1 << 30):
                if h.closed:   # closed by a handler of this batch: the broker
                    break      # fails the rest when the CLOSE arrives
                msg._owner.answer(msg, handler)
        else:
            self._notify = True   # wake the threads waiting on the condition

    # -- callbacks and handlers --------------------------------------------------------
    def _start_worker(self, h: _Handle, fn: Handler) -> None:
        """A thread of its own for one callback or handler, so handlers may
        block, or wait on each other, without stalling anything else."""
        t = threading.Thread(target=self._work, args=(h, fn), daemon=True,
                             name=f"ringcast-client-{h.kind}-{h.id}")
        self._workers.append(t)
        t.start()

    def _work(self, h: _Handle, fn: Handler) -> None:
        while True:
            try:
                msgs = self._take(h, 1 << 30, None)
            except errors.RingcastError:
                return   # closed
            for msg in msgs:
                if isinstance(h, RemoteService):
                    msg._owner.answer(msg, fn)   # as an inline handler is run
                else:
                    try:
                        fn(msg)
                    except Exception:
                        log.exception("callback for handle %d raised", h.id)

    # -- waiting -----------------------------------------------------------------------------
    def _no_wait_on_io(self, what: str) -> None:
        """A handler running on the I/O thread must not wait for that thread."""
        if threading.get_ident() == self._io_ident:
            raise errors.RingcastError(
                f"{what} inside an inline handler would wait on itself; "
                "serve(..., threaded=True) runs handlers on their own thread")

    def _take(self, h: _Handle, max_count: int, timeout: Optional[float],
              payloads: bool = False) -> List[Any]:
        self._no_wait_on_io("recv")
        deadline = _deadline(timeout)
        with self._cond:
            while True:
                msgs = h.take(max_count, payloads)
                if msgs:
                    return msgs
                if self.proto.closed:
                    raise errors.Closed("client is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise errors.Timeout("timed out waiting for a message")
                self._cond.wait(left)

    # -- pub/sub ------------------------------------------------------------------------------
    def _wait_credit(self, timeout: Optional[float]) -> None:
        self._no_wait_on_io("publish with a full buffer")
        deadline = _deadline(timeout)
        with self._cond:
            while not self.proto.can_publish():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise errors.WouldBlock("the broker has not granted publish credit in time")
                self._cond.wait(left)

    def flush(self, timeout: Optional[float] = 5.0) -> None:
        """Send everything buffered now and wait until the broker has applied
        it (routed every publish, registered every subscription): the
        publisher confirm. For a durable queue, applied means logged per its
        fsync policy. Raises ConnectionLost if a session ended with anything
        unconfirmed since the last flush (it may not have been applied), else
        the broker's error if it refused publishes or sends since then (ERR
        ref 0: a closed router, a SEND over a limit), once."""
        self.proto.flush()
        self._no_wait_on_io("flush")
        deadline = _deadline(timeout)
        with self._cond:
            while not self.proto.applied() and not self.proto.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise errors.Timeout("flush timed out (no credit from the broker)")
                self._cond.wait(left)
        self.proto.take_loss()

    def subscribe(self, pattern: str, *, capacity: int = 8192, overflow: str = "block",
                  window: Optional[int] = None, callback: Optional[Handler] = None,
                  max_bytes: int = 0) -> "Subscription":
        """Receive messages on subjects matching ``pattern``. ``capacity``,
        ``max_bytes`` (payload bytes; 0: the broker's bound, which is also
        the most it grants) and ``overflow`` configure the buffer held for
        you at the broker; ``window`` bounds messages in flight to this
        process (default: the capacity, up to 65536), and ``max_bytes`` the
        bytes."""
        h = self.proto.subscribe(pattern, capacity, overflow, window, max_bytes)
        if callback is not None:
            self._callbacks[h.id] = callback
            self._start_worker(h, callback)
        return Subscription(self, h)

    # -- queues -------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, bind: Union[str, Sequence[str]] = (),
                      capacity: int = 65536, overflow: str = "block",
                      timeout: float = 5.0, **options: Any) -> None:
        """Create a queue at the broker (idempotent), bound to ``bind`` patterns.
        ``options`` are those of ``Router.declare_queue`` (``durable``,
        ``max_deliver``, ``ttl``, ``dead_letter``...)."""
        binds = [bind] if isinstance(bind, str) else list(bind)
        done = threading.Event()
        box: List[Any] = []

        def settle(result: Any) -> None:
            box.append(result)
            done.set()

        self.proto.declare_queue(name, binds, capacity, overflow, options, settle)
        if not done.wait(check_timeout(timeout)):
            raise errors.Timeout(f"declare_queue({name!r}) got no answer")
        if isinstance(box[0], BaseException):
            raise box[0]

    def send_many(self, queue: str, payloads: Sequence[Any], headers: Headers = None, *,
                  timeout: Optional[float] = None) -> None:
        """Put many messages on a queue in one native call: all of them, or
        none when one is refused (``publish_many`` for queues)."""
        self.proto.outbox.send_many(queue, payloads, headers, timeout)

    def consume(self, queue: str, *, prefetch: int = 64) -> "Consumer":
        """A competing consumer; at most ``prefetch`` unacked messages at a time."""
        return Consumer(self, self.proto.consume(queue, prefetch))

    # -- request/reply ---------------------------------------------------------------------------
    def request(self, service: str, payload: Any, headers: Headers = None, *,
                timeout: Optional[float] = 5.0) -> Message:
        """Ask ``service`` and wait for the reply (``Timeout``, ``NoResponders``);
        ``timeout`` None (or infinity) sets no deadline, as embedded.

        Each calling thread sends and reads its requests on a socket and
        session of its own (``_DirectRequester``): the reply reaches the
        waiting thread with no hand-off through the I/O thread."""
        if _get_ident() == self._io_ident:   # _no_wait_on_io, inline: a frame less per request
            self._no_wait_on_io("request")      # it would stall this client's deliveries
        direct = getattr(self._direct, "requester", None)
        if direct is None:
            if self._closing:
                raise errors.Closed("client is closed")
            direct = self._direct.requester = _DirectRequester(self)
            self._requesters.append(direct)
        return direct.request(service, payload, headers, timeout)

    def serve(self, name: str, handler: Optional[Handler] = None, *, concurrency: int = 16,
              threaded: bool = False) -> "Responder":
        """Answer requests to ``name``: ``handler(msg)`` returns the reply
        payload; without one, iterate the responder and ``msg.respond(...)``.

        Handlers run on the client's I/O thread (no thread hand-off: the
        lowest latency); keep them short, as heartbeats wait for them. Pass
        ``threaded=True`` for handlers that block or call this client's
        ``request``/``recv``/``flush`` (those raise on the I/O thread)."""
        with self._lock:   # its handler is known before its first request can arrive
            h = self.proto.serve(name, concurrency)
            if handler is not None:
                self._callbacks[h.id] = handler
                if not threaded:
                    self._inline[h.id] = handler
        if handler is not None and threaded:
            self._start_worker(h, handler)
        return Responder(self, h)

    def stats(self, timeout: float = 5.0) -> Dict[str, Any]:
        """The broker's statistics (``Broker.stats()``)."""
        done = threading.Event()
        box: List[Any] = []

        def settle(result: Any) -> None:
            box.append(result)
            done.set()

        self.proto.stats(settle)
        if not done.wait(check_timeout(timeout)):
            raise errors.Timeout("stats request timed out")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]  # type: ignore[no-any-return]


#: the longest one recv of a sync request waits: how soon a request in
#: progress notices that its client is closing (only a waiting request wakes
#: up for it); module constants, as the request's fast path reads them
_SLICE = 0.1
_SLICE_MS = int(_SLICE * 1000)   # as _drive sets RCVTIMEO for a whole slice
_monotonic = time.monotonic


class _DirectRequester:
    """One thread's request path: its own DEALER socket and protocol session,
    driven by that thread while it waits, so a sync request costs no thread
    hand-off. The session idles between requests with a long heartbeat; if
    the broker forgot it meanwhile (restart, idle timeout) the broker answers
    "no session" without applying the request, and it is sent again once."""

    HEARTBEAT = 60.0

    def __init__(self, client: Client) -> None:
        self._client = client
        self._name = f"{client.proto.name}/req-{threading.get_ident()}"
        self._sock: Optional[zmq.Socket] = None
        self._rcvtimeo = -1
        self.proto = ClientProtocol(self._name, heartbeat=self.HEARTBEAT, linger=0)
        # held by the owning thread while it requests, and by close(): a
        # ZeroMQ socket closed under a thread blocked on it aborts the process
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> zmq.Socket:
        if self._sock is not None:
            self._sock.close(linger=0)
        self.proto = ClientProtocol(self._name, heartbeat=self.HEARTBEAT, linger=0)
        self.proto.outbox.kick = None   # this thread sends what it buffers itself
        # the broker's limit, known before this session's WELCOME: a request it
        # would refuse (ending the session) is refused here
        self.proto.max_message = self.proto.outbox.max_message = self._client.proto.max_message
        self._sock = self._client._dealer()
        self._rcvtimeo = -1   # the socket's RCVTIMEO (ms; -1: none)
        self.proto.connection_made(time.monotonic())
        return self._sock

    def request(self, service: str, payload: Any, headers: Headers,
                timeout: Optional[float]) -> Message:
        """One request. The common case runs here and natively: the REQ's
        frame from ``proto.request`` (the session is ready, nothing else is
        waiting to be sent), one blocking recv, and the answer read from a
        frame that holds it and at most PCREDIT (``Reader.answer``); all
        else (a timeout slice, another record, no frame to send, a session
        to start or restart) goes the generic way, ``_finish``."""
        now = _monotonic()
        deadline = now + check_request_timeout(timeout)
        losses = self._client.proto.losses
        lock = self._lock
        lock.acquire()   # not `with`: finding and calling __enter__/__exit__ costs ~1k more
        try:
            if self._closed or self._client._closing:
                raise errors.Closed("client is closed")
            sock = self._sock or self._open()
            proto = self.proto
            box: List[Any] = []
            rid, frame = proto.request(service, payload, headers, timeout, box.append, now)
            if frame is not None and self._rcvtimeo == _SLICE_MS and deadline - now > _SLICE:
                # the first wait is a whole slice, as _drive would set it
                zsend(sock, frame)
                try:
                    frame = sock.recv()
                except zmq.Again:
                    frame = None
                else:
                    answer = proto.answer(frame, rid, _monotonic())
                    if answer is not None:
                        if isinstance(answer, BaseException):
                            raise answer
                        return answer  # type: ignore[no-any-return]
            elif frame is not None:
                zsend(sock, frame)
                frame = None
            return self._finish(service, payload, headers, timeout, deadline, losses,
                                sock, now, box, rid, frame)
        finally:
            lock.release()

    def _finish(self, service: str, payload: Any, headers: Headers, timeout: Optional[float],
                deadline: float, losses: int, sock: zmq.Socket, now: float, box: List[Any],
                rid: int, frame: Optional[bytes]) -> Message:
        """The rest of ``request`` (the lock held) once its REQ is sent or
        buffered: ``_drive`` until the answer or the deadline (``frame``:
        one received already), and the request sent once more, on a new
        session, when the broker did not know this one."""
        for retried in (False, True):
            try:
                lost = self._drive(sock, box, deadline, losses, now, frame)
            except (errors.Closed, errors.ConnectionLost):
                self.proto.forget_request(rid)
                raise
            if lost is None or retried:
                break
            sock = self._open()   # the broker did not know this session: nothing was applied
            now = _monotonic()
            box = []
            # a fresh socket's RCVTIMEO is unset: never the one-slice path of request
            rid, frame = self.proto.request(service, payload, headers, timeout, box.append, now)
            if frame is not None:
                zsend(sock, frame)
                frame = None
        if not box:
            self.proto.forget_request(rid)
            raise errors.Timeout(f"request to {service!r} timed out after {timeout}s")
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def _drive(self, sock: zmq.Socket, box: List[Any], deadline: float, losses: int,
               sent: float, frame: Optional[bytes]) -> Optional[errors.RingcastError]:
        """Send and read until the reply is in ``box`` or the deadline; returns
        the error when the broker says it has no session for us. ``frame``:
        one received already, to apply first; ``sent``: when this session
        last sent.

        It waits in a blocking ``recv`` bounded by RCVTIMEO, as a REQ socket
        would: ``Socket.poll`` builds a Poller per call and adds a zmq_poll
        and the EVENTS checks of a non-blocking read to every round trip.

        A request that waits sends HB every client heartbeat: it keeps the
        session alive, and a broker that took the place of ours answers it
        "no session", which fails the request with ``ConnectionLost`` (it was
        in flight at a broker that is gone). A broker that is gone for good
        shows as the client's own session lost twice (``losses``)."""
        proto = self.proto
        recv = sock.recv
        clock = time.monotonic
        client = self._client.proto
        probe_every = client.heartbeat
        probed = False
        while True:
            if frame is None:
                now = clock()
                if proto.ready and now - sent >= probe_every:
                    proto.urgent.record(C.HB)
                    probed = True
                frames = proto.data_to_send(now, eager=True)
                for out in frames:
                    zsend(sock, out)
                if frames:
                    sent = now
                left = deadline - now
                if left <= 0:
                    return None
                if self._client._closing:
                    raise errors.Closed("client closed while the request waited")
                if client.losses - losses >= 2:
                    raise errors.ConnectionLost("no broker answers this client any more")
                ms = max(1, int(min(left, _SLICE) * 1000))
                # reset only when it would wait past the deadline (by more than
                # the 1 ms rounding) or time out early: usually once per timeout
                if not ms <= self._rcvtimeo <= ms + 1:
                    sock.setsockopt(RCVTIMEO, ms)
                    self._rcvtimeo = ms
                try:
                    frame = recv()
                except zmq.Again:   # RCVTIMEO passed: the deadline check above
                    continue
            err = proto.frame_received(frame, clock())
            frame = None
            if err is not None:
                if probed:   # refused after it was sent: in flight at a broker now gone
                    raise errors.ConnectionLost(
                        f"the broker holding the request was replaced: {err}")
                if box:   # the request was refused with the session: retry it
                    box.clear()
                return err
            if box:
                return None

    def close(self) -> None:
        """From Client.close(), on any thread: waits for a request in progress
        on the owning thread to notice (within _SLICE) and let go of the socket."""
        if not self._lock.acquire(timeout=5):
            log.warning("a request did not stop in time; its socket is left open")
            return
        try:
            self._closed = True
            if self._sock is not None:
                if self.proto.ready:
                    for frame in self.proto.bye():
                        self._sock.send(frame, zmq.NOBLOCK)
                self._sock.close(linger=100)
                self._sock = None
        finally:
            self._lock.release()


class _Receiver(Receiving):
    """What subscriptions, consumers and responders share: an inbox to wait on."""

    def __init__(self, client: Client, handle: Any) -> None:
        self._client = client
        self._h = handle

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message; waits up to ``timeout`` seconds (None: forever)."""
        return self._client._take(self._h, 1, timeout)[0]

    def recv_nowait(self) -> Message:
        with self._client._lock:
            msgs = self._h.take(1)
        if not msgs:
            raise errors.WouldBlock("no message waiting")
        return msgs[0]

    def recv_many(self, max_count: int = 1024, timeout: Optional[float] = 0.0) -> List[Message]:
        """Up to ``max_count`` messages; waits up to ``timeout`` for the first."""
        if timeout == 0:
            with self._client._lock:
                return self._h.take(max_count)  # type: ignore[no-any-return]
        return self._client._take(self._h, max_count, timeout)

    @property
    def pending(self) -> int:
        return int(self._h.pending)

    @property
    def closed(self) -> bool:
        return bool(self._h.ended)

    def close(self) -> None:
        with self._client._lock:   # the I/O thread reads both in _delivered, under it
            self._client._inline.pop(self._h.id, None)
            self._client._callbacks.pop(self._h.id, None)
        self._client.proto.close_handle(self._h)
        with self._client._cond:
            self._client._cond.notify_all()


class Subscription(_Receiver):
    """A remote subscription. ``dropped`` counts the broker's policy drops
    seen as sequence gaps."""

    _h: RemoteSubscription

    @property
    def pattern(self) -> str:
        return self._h.pattern

    @property
    def dropped(self) -> int:
        return self._h.dropped

    def recv_payloads(self, max_count: int = 1 << 30,
                      timeout: Optional[float] = 0.0) -> List[Any]:
        """Up to ``max_count`` payloads without building Message objects (the
        batch fast path); waits up to ``timeout`` for the first (0: not at all)."""
        if timeout == 0:
            with self._client._lock:
                return self._h.take(max_count, payloads=True)  # type: ignore[no-any-return]
        return self._client._take(self._h, max_count, timeout, payloads=True)


class Consumer(_Receiver):
    """A remote queue consumer; ``msg.ack()`` / ``msg.nack()`` settle."""

    _h: RemoteConsumer


class Responder(_Receiver):
    """A remote responder; answer with ``msg.respond(payload)``."""

    _h: RemoteService


def connect(url: str = "tcp://127.0.0.1:7450", **kwargs: Any) -> Client:
    """Connect to a broker and wait for its welcome (``timeout=`` seconds)."""
    return Client(url, **kwargs)
