"""Pure-Python twin of ``_ring`` (selected by RINGCAST_NO_EXTENSIONS=1).

Same behaviour, same API, written for obviousness rather than speed; the
test suite runs against both implementations.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import LimitExceeded, RingcastError

RC_BLOCK, RC_DROP_OLDEST, RC_DROP_NEWEST = 0, 1, 2
MAX_CAPACITY = 1 << 26
_POLICY_BY_NAME = {"block": RC_BLOCK, "drop_oldest": RC_DROP_OLDEST, "drop_newest": RC_DROP_NEWEST}
_POLICY_NAMES = {v: k for k, v in _POLICY_BY_NAME.items()}
# a slot: (seq, stamp, subject, payload, headers, payload bytes)
_Slot = Tuple[int, int, str, Any, Any, int]


def payload_size(payload: Any) -> int:
    """Bytes of a bytes-like payload, as a byte bound counts them (0 for
    other objects: the ring itself carries anything)."""
    if type(payload) is bytes:
        return len(payload)
    try:
        view = memoryview(payload)
    except TypeError:
        return 0
    with view:
        return view.nbytes


def policy_code(name: Any) -> int:
    try:
        return _POLICY_BY_NAME[name]
    except (KeyError, TypeError):
        raise LimitExceeded(
            f"unknown overflow policy {name!r}; expected one of {sorted(_POLICY_BY_NAME)}"
        ) from None


def hand_out(ready: Any, limit: int, owner: Any, tag: int, unacked: Dict[int, Any],
             ttl_header: str) -> Tuple[List[Any], int]:
    """Queue deliveries for one consumer, off the left of ``ready``, up to
    the first one the queue must look at itself; returns (messages, next tag)."""
    out: List[Any] = []
    while len(out) < limit and ready:
        m = ready[0]
        if m.redelivered or (m.headers and ttl_header in m.headers):
            break
        ready.popleft()
        m._owner = owner
        m._tag = tag
        unacked[tag] = m
        tag += 1
        out.append(m)
    return out, tag


def settle(tags: List[int], unacked: Dict[int, Any],
           inflight: Dict[int, Any]) -> Tuple[List[int], List[int]]:
    """Take the deliveries of ``tags`` out of ``unacked`` and ``inflight``;
    returns (tags held by nobody, log ids of the durable ones settled)."""
    missing: List[int] = []
    ids: List[int] = []
    for tag in tags:
        m = unacked.pop(tag, None)
        if m is None:
            missing.append(tag)
            continue
        inflight.pop(tag, None)
        if m._id:
            ids.append(m._id)
    return missing, ids


class Message:
    __slots__ = ("subject", "payload", "headers", "seq", "redelivered", "delivery_count",
                 "timestamp_ns", "_owner", "_tag", "_id")

    def __init__(self, subject: str, payload: Any, headers: Optional[Dict[str, str]] = None,
                 seq: int = 0, redelivered: bool = False, delivery_count: int = 1,
                 timestamp_ns: int = 0) -> None:
        if type(subject) is not str:
            raise TypeError("subject must be str")
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.seq = seq
        self.redelivered = bool(redelivered)
        self.delivery_count = delivery_count
        self.timestamp_ns = timestamp_ns
        self._owner: Any = None
        self._tag = 0
        self._id = 0

    @property
    def timestamp(self) -> Optional[float]:
        return self.timestamp_ns / 1e9 if self.timestamp_ns else None

    @property
    def data(self) -> Any:
        return self.payload

    @property
    def size(self) -> int:
        return payload_size(self.payload)

    def _settlement(self) -> Any:
        if self._owner is None:
            raise RingcastError(
                "this message was not delivered by a queue consumer or a responder; "
                "there is nothing to ack, nack or respond to"
            )
        return self._owner

    def ack(self) -> None:
        self._settlement().ack(self)

    def nack(self, requeue: bool = True) -> None:
        self._settlement().nack(self, requeue)

    def respond(self, payload: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self._settlement().respond(self, payload, headers)

    def __repr__(self) -> str:
        p = self.payload
        if isinstance(p, (bytes, bytearray)) and len(p) > 32:
            p = bytes(p[:32]) + b"..."
        extra = ", redelivered" if self.redelivered else ""
        return f"Message({self.subject!r}, {p!r}, seq={self.seq}{extra})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.subject, self.payload, self.headers, self.seq) == (
            other.subject, other.payload, other.headers, other.seq)

    __hash__ = None  # type: ignore[assignment]


class Ring:
    def __init__(self, capacity: int = 8192, policy: Any = "block", stamped: bool = False,
                 max_bytes: int = 0) -> None:
        if isinstance(policy, str):
            policy = policy_code(policy)
        if policy not in (RC_BLOCK, RC_DROP_OLDEST, RC_DROP_NEWEST):
            raise LimitExceeded(f"unknown overflow policy code {policy!r}")
        if type(capacity) is not int or capacity < 1 or capacity > MAX_CAPACITY:
            raise LimitExceeded(
                f"ring capacity must be an int in 1..{MAX_CAPACITY}, got {capacity!r}")
        if type(max_bytes) is not int or max_bytes < 0 or max_bytes >= 1 << 63:
            raise LimitExceeded(f"max_bytes must be an int >= 0 (0: no bound), got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.capacity = 1 << (capacity - 1).bit_length()
        self.policy = policy
        self._slots: List[Optional[_Slot]] = [None] * self.capacity
        self._wpos = self._rpos = 0
        self._next_seq = 1
        self.dropped = 0
        self.offered = 0
        self.closed = False
        self.stamped = bool(stamped)
        self.hooked = False
        self.on_ready: Optional[Callable[[], None]] = None
        self.on_space: Optional[Callable[[], None]] = None

    policy_name = property(lambda self: _POLICY_NAMES[self.policy])
    last_seq = property(lambda self: self._next_seq - 1)

    @property
    def free(self) -> int:
        if self.max_bytes and self.nbytes >= self.max_bytes:
            return 0
        return self.capacity - (self._wpos - self._rpos)

    def __len__(self) -> int:
        return self._wpos - self._rpos

    @property
    def first_seq(self) -> int:
        if self._wpos == self._rpos:
            return self._next_seq
        slot = self._slots[self._rpos % self.capacity]
        assert slot is not None
        return slot[0]

    def peek_after(self, seq: int) -> List[Message]:
        out: List[Message] = []
        for pos in range(self._rpos, self._wpos):
            slot = self._slots[pos % self.capacity]
            assert slot is not None
            if slot[0] > seq:
                s, stamp, subject, payload, headers, _ = slot
                out.append(Message(subject, payload, headers, s, timestamp_ns=stamp))
        return out

    def full(self) -> bool:
        return (self._wpos - self._rpos >= self.capacity
                or bool(self.max_bytes and self.nbytes >= self.max_bytes))

    def push(self, subject: str, payload: Any, headers: Any) -> int:
        size = payload_size(payload)
        if self.full():
            if self.policy == RC_BLOCK:
                return -1
            self.offered += 1
            if self.policy == RC_DROP_NEWEST:
                self.dropped += 1
                self._next_seq += 1
                return 0
            while self.full():
                self._take()
                self.dropped += 1
        else:
            self.offered += 1
        stamp = time.time_ns() if self.stamped else 0
        self._slots[self._wpos % self.capacity] = (
            self._next_seq, stamp, subject, payload, headers, size)
        self.nbytes += size
        self._next_seq += 1
        self._wpos += 1
        return 1

    def room(self, items: List[Any], n: int) -> int:
        """How many of ``items[:n]`` a block-policy publish can store now."""
        n = min(n, self.capacity - (self._wpos - self._rpos))
        if not self.max_bytes:
            return n
        held = self.nbytes
        for i in range(n):
            if held >= self.max_bytes:
                return i
            held += payload_size(items[i])
        return n

    def _take(self) -> Optional[_Slot]:
        if self._rpos == self._wpos:
            return None
        i = self._rpos % self.capacity
        slot, self._slots[i] = self._slots[i], None
        self._rpos += 1
        assert slot is not None
        self.nbytes -= slot[5]
        return slot

    def fire_ready(self) -> None:
        cb = self.on_ready
        if not self.hooked:
            self.on_ready = None
        if cb is not None:
            cb()

    def fire_space(self) -> None:
        cb, self.on_space = self.on_space, None
        if cb is not None:
            cb()

    def set_hook(self, callback: Optional[Callable[[], None]]) -> None:
        self.on_ready = callback
        self.hooked = callback is not None

    def arm_ready(self, callback: Callable[[], None]) -> bool:
        if self.hooked:
            raise RingcastError("this ring has a persistent hook; wait on its owner instead")
        if self._wpos != self._rpos:
            return False
        self.on_ready = callback
        return True

    def arm_space(self, callback: Callable[[], None]) -> bool:
        if not self.full():
            return False
        self.on_space = callback
        return True

    def disarm(self) -> None:
        if not self.hooked:
            self.on_ready = None
        self.on_space = None

    def put(self, subject: str, payload: Any, headers: Any = None) -> int:
        rc = self.push(subject, payload, headers)
        if rc == 1:
            self.fire_ready()
        return rc

    def put_many(self, subject: str, payloads: Any, headers: Any = None) -> int:
        items = list(payloads)
        n = len(items)
        for i, p in enumerate(items):
            if self.push(subject, p, headers) < 0:
                n = i
                break
        if len(self):
            self.fire_ready()
        return n

    def _after_pop(self, n: int) -> None:
        if n and self.on_space is not None:
            self.fire_space()

    def pop(self) -> Optional[Message]:
        slot = self._take()
        if slot is None:
            return None
        seq, stamp, subject, payload, headers, _ = slot
        self._after_pop(1)
        return Message(subject, payload, headers, seq, timestamp_ns=stamp)

    def pop_many(self, max_count: int = 1 << 30, max_bytes: int = 0) -> List[Message]:
        out: List[Message] = []
        taken = 0
        while len(out) < max_count and (not max_bytes or taken < max_bytes):
            slot = self._take()
            if slot is None:
                break
            seq, stamp, subject, payload, headers, size = slot
            taken += size
            out.append(Message(subject, payload, headers, seq, timestamp_ns=stamp))
        self._after_pop(len(out))
        return out

    def pop_payloads(self, max_count: int = 1 << 30) -> List[Any]:
        out: List[Any] = []
        while len(out) < max_count:
            slot = self._take()
            if slot is None:
                break
            out.append(slot[3])
        self._after_pop(len(out))
        return out

    def clear(self) -> int:
        n = 0
        while self._take() is not None:
            n += 1
        self._after_pop(n)
        return n

    def close(self) -> None:
        self.closed = True
        if not self.hooked:
            self.fire_ready()
        self.fire_space()

    def __repr__(self) -> str:
        bound = f" bytes={self.nbytes}/{self.max_bytes}" if self.max_bytes else ""
        return (f"<Ring {len(self)}/{self.capacity}{bound} policy={self.policy_name} "
                f"dropped={self.dropped}>")
