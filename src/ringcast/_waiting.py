"""Waiting without polling: how consumers, tasks and callbacks learn of work.

Native rings have one one-shot callback slot each; these helpers are what
gets armed there, and they fan the wake-up out to every thread, asyncio
task and callback waiting on the same source.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Iterator, List, Optional, Set, Tuple, TypeVar

from . import errors
from ._args import check_timeout
from ._impl import Message

T = TypeVar("T")
log = logging.getLogger("ringcast")


def _deadline(timeout: Optional[float]) -> Optional[float]:
    seconds = check_timeout(timeout)
    return None if seconds is None else time.monotonic() + seconds


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else deadline - time.monotonic()


class _Signal:
    """Wakes every thread and every asyncio task waiting on one source.

    A ring's ready/space callback is one-shot and single-slot; this object is
    what gets armed, and it fans the wake-up out to all current waiters, so
    several consumers (sync or async, any thread) can wait on one queue.
    """

    __slots__ = ("_cond", "_futures", "_callbacks", "_sleepers")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._futures: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []
        self._callbacks: List[Callable[[], None]] = []
        # Every waiter registers here BEFORE it checks for work (arm), so a
        # producer that adds work and then sees nobody registered may skip
        # the lock: anyone who registers later will see the work.
        self._sleepers = 0

    def notify(self) -> None:
        if not (self._sleepers or self._futures or self._callbacks):
            return
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
                self._sleepers += 1
                try:
                    if not arm():
                        continue
                    remaining = _remaining(deadline)
                    if remaining is not None and remaining <= 0:
                        raise errors.Timeout("timed out waiting")
                    self._cond.wait(remaining)
                finally:
                    self._sleepers -= 1

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
                await _await(fut, remaining)   # expired: the loop raises Timeout
            finally:
                self._forget(fut)

    def on_ready(self, callback: Callable[[], None], arm: Callable[[], bool]) -> bool:
        """Register a one-shot ``callback()`` for the next wake-up; False (not
        registered) when ``arm()`` says something is already waiting."""
        with self._cond:
            self._callbacks.append(callback)
            if arm():
                return True
            self._callbacks.remove(callback)
            return False

    def cancel(self, callback: Callable[[], None]) -> None:
        """Take back a callback ``on_ready`` registered (gone already: nothing)."""
        with self._cond:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def _forget(self, fut: "asyncio.Future[None]") -> None:
        with self._cond:
            self._futures = [(lp, f) for lp, f in self._futures if f is not fut]


def _resolve(fut: "asyncio.Future[Any]", value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


#: what ``_await`` gives when the time ran out
EXPIRED: Any = object()


async def _await(fut: "asyncio.Future[T]", timeout: Optional[float],
                 expired: Any = None) -> T:
    """``await fut``; after ``timeout`` seconds (None: never) ``fut`` gets
    ``expired`` as its result. Not ``asyncio.wait_for``: before Python 3.12
    it returns the result of a future already done when its task is
    cancelled, so a wait woken in the loop tick it was cancelled in carried
    on as if it had not been (the cancellation was swallowed)."""
    if timeout is None:
        return await fut
    timer = asyncio.get_running_loop().call_later(max(0.0, timeout), _resolve, fut, expired)
    try:
        return await fut
    finally:
        timer.cancel()


class _Dispatcher:
    """Runs callbacks of ready sources, one thread at a time: the thread that
    made one ready runs it (and any made ready meanwhile), in order. A thread
    that must never run them -- a broker's loop, where one slow handler would
    stall every remote client -- hands them to a worker thread instead."""

    def __init__(self) -> None:
        self._ready: Deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self.owner: Optional[int] = None  # thread running callbacks now
        self._handing_off: Set[int] = set()   # threads that never run callbacks
        self._cond = threading.Condition()
        self._kicked = False
        self._closed = False
        self._worker: Optional[threading.Thread] = None

    def schedule(self, run: Callable[[], None]) -> None:
        self._ready.append(run)
        if self._handing_off and threading.get_ident() in self._handing_off:
            self._kick()
        else:
            self._drain()

    def _drain(self, worker: bool = False) -> None:
        while self._lock.acquire(blocking=False):
            self.owner = threading.get_ident()
            try:
                while self._ready:
                    run = self._ready.popleft()
                    if not worker:
                        run()
                        continue
                    try:
                        run()
                    except Exception:   # what a publisher would have seen
                        log.exception("a callback on the router's callback thread raised")
            finally:
                self.owner = None
                self._lock.release()
            if not self._ready:
                return

    def hand_off(self, ident: int, on: bool = True) -> None:
        """Thread ``ident`` hands callbacks to the worker (``on``) or runs
        them itself again."""
        if on:
            self._handing_off.add(ident)
        else:
            self._handing_off.discard(ident)

    def _kick(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._kicked = True
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, daemon=True,
                                                name="ringcast-callbacks")
                self._worker.start()
            self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._kicked and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._kicked = False
            self._drain(worker=True)

    def close(self) -> None:
        """Stop the worker (if any) once the callback it runs returns."""
        with self._cond:
            self._closed = True
            self._cond.notify()


class Receiving:
    """Iteration and the context manager over ``recv()`` and ``close()``:
    shared by the embedded sources below and the remote client's inboxes."""

    def recv(self, timeout: Optional[float] = None) -> Message:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, until the source is closed."""
        while True:
            try:
                yield self.recv()
            except errors.Closed:
                return

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Source(Receiving):
    """What one receives from: a subscription, a queue consumer, a responder.

    Subclasses provide ``_signal``, ``_poll()`` (take the next message or
    None; raise Closed when closed and empty), ``_arm()`` (see
    ``_Signal.wait``) and ``close()``; receiving, iteration and the context
    manager are the same for all of them (and ``ringcast.aio`` awaits the
    same three hooks).
    """

    _signal: _Signal

    def _poll(self) -> Optional[Message]:
        raise NotImplementedError

    def _arm(self) -> bool:
        raise NotImplementedError

    def recv(self, timeout: Optional[float] = None) -> Message:
        """Next message; waits up to ``timeout`` seconds (None: forever),
        then raises Timeout."""
        msg = self._poll()  # fast path: no deadline, no waiting machinery
        if msg is not None:
            return msg
        return self._signal.wait(self._poll, self._arm, _deadline(timeout))

    def on_ready(self, callback: Callable[[], None]) -> bool:
        """Arm a one-shot ``callback()`` for when the next message is there.

        Returns False (not armed) when one is there already. This is how an
        event loop (the broker's) learns there is work without a call per
        message.
        """
        return self._signal.on_ready(callback, self._arm)

