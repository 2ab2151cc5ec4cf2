# cython: freethreading_compatible=False
"""Native ring buffer and the Message it delivers.

One consumer per ring; producers are the router. A slot holds owned
references to the subject, payload and headers objects, so fan-out to N
rings costs N reference increments, never a copy of the payload. All state
changes happen with the GIL held and without calling back into Python
halfway, which is what makes concurrent publishers safe.
"""
cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_XINCREF, Py_DECREF, Py_XDECREF
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

from ringcast.errors import RingcastError, LimitExceeded

_POLICY_BY_NAME = {"block": RC_BLOCK, "drop_oldest": RC_DROP_OLDEST, "drop_newest": RC_DROP_NEWEST}
_POLICY_NAMES = {v: k for k, v in _POLICY_BY_NAME.items()}


def policy_code(name):
    """Map an overflow policy name to its native code (ValueError if unknown)."""
    try:
        return _POLICY_BY_NAME[name]
    except (KeyError, TypeError):
        raise LimitExceeded(
            f"unknown overflow policy {name!r}; expected one of {sorted(_POLICY_BY_NAME)}"
        ) from None


def hand_out(object ready, Py_ssize_t limit, object owner, uint64_t tag, dict unacked,
             object ttl_header):
    """Queue deliveries in one native loop: pop up to ``limit`` messages off
    the left of ``ready`` (a deque) for one consumer, each given ``owner``
    and the next tag from ``tag`` and kept in ``unacked`` by tag. Stops at
    the first one the queue must look at itself (redelivered, or with a
    ``ttl_header``), leaving it there. Returns (messages, next tag)."""
    cdef list out = []
    cdef Message m
    popleft = ready.popleft
    while len(out) < limit and ready:
        x = ready[0]
        if type(x) is not Message:
            break
        m = <Message>x
        if m.redelivered or (m.headers and ttl_header in m.headers):
            break
        popleft()
        m.owner = owner
        if owner is not None and not PyObject_GC_IsTracked(m):
            PyObject_GC_Track(<void *>m)   # as ``_owner`` does: it may now be in a cycle
        m._tag = tag
        unacked[tag] = m
        tag += 1
        out.append(m)
    return out, tag


def settle(list tags, dict unacked, object inflight):
    """Take the deliveries of ``tags`` out of ``unacked`` (and ``inflight``,
    the ack deadlines). Returns (tags held by nobody, log ids of the durable
    messages settled)."""
    cdef list missing = [], ids = []
    cdef Message m
    for tag in tags:
        x = unacked.pop(tag, None)
        if x is None:
            missing.append(tag)
            continue
        if inflight:
            inflight.pop(tag, None)
        if type(x) is Message:
            m = <Message>x
            if m._id:
                ids.append(m._id)
        elif x._id:
            ids.append(x._id)
    return missing, ids


@cython.freelist(4096)
cdef class Message:
    """One delivered message.

    ``payload`` is the very object the publisher passed (zero-copy); treat it
    as read-only. ``seq`` is the subscription's sequence number: a jump of
    more than one means the subscription dropped messages by policy.
    """

    def __init__(self, str subject not None, payload, headers=None, uint64_t seq=0,
                 bint redelivered=False, unsigned int delivery_count=1,
                 uint64_t timestamp_ns=0):
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.seq = seq
        self.redelivered = redelivered
        self.delivery_count = delivery_count
        self.timestamp_ns = timestamp_ns

    @property
    def timestamp(self):
        """Enqueue time in seconds since the epoch (queues only; else None)."""
        return self.timestamp_ns / 1e9 if self.timestamp_ns else None

    @property
    def data(self):
        """Alias of ``payload``."""
        return self.payload

    @property
    def size(self):
        """Payload bytes, as byte bounds and stats count them."""
        return payload_size(self.payload)

    def ack(self):
        """Settle a queue delivery: the message is done and will not return."""
        self._settlement().ack(self)

    def nack(self, requeue=True):
        """Give a queue delivery back (``requeue=True``) or reject it for good."""
        self._settlement().nack(self, requeue)

    def respond(self, payload, headers=None):
        """Answer a request received through ``serve``."""
        self._settlement().respond(self, payload, headers)

    @property
    def _owner(self):
        return self.owner

    @_owner.setter
    def _owner(self, value):
        self.owner = value
        if value is not None and not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(<void *>self)   # it may now be part of a cycle

    cdef object _settlement(self):
        if self.owner is None:
            raise RingcastError(
                "this message was not delivered by a queue consumer or a responder; "
                "there is nothing to ack, nack or respond to"
            )
        return self.owner

    def __repr__(self):
        p = self.payload
        if isinstance(p, (bytes, bytearray)) and len(p) > 32:
            p = bytes(p[:32]) + b"..."
        extra = ", redelivered" if self.redelivered else ""
        return f"Message({self.subject!r}, {p!r}, seq={self.seq}{extra})"

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        cdef Message o = other
        return (self.subject == o.subject and self.payload == o.payload
                and self.headers == o.headers and self.seq == o.seq)

    __hash__ = None


cdef class Ring:
    """Fixed-capacity, sequence-numbered ring with a per-ring overflow policy,
    optionally also bounded in payload bytes (``max_bytes``, 0: unbounded):
    slots bound how many messages wait, bytes bound what they weigh."""

    def __cinit__(self, capacity=8192, policy="block", stamped=False, max_bytes=0):
        if isinstance(policy, str):
            policy = policy_code(policy)
        if policy not in (RC_BLOCK, RC_DROP_OLDEST, RC_DROP_NEWEST):
            raise LimitExceeded(f"unknown overflow policy code {policy!r}")
        if type(capacity) is not int or capacity < 1 or capacity > RC_RING_MAX_CAPACITY:
            raise LimitExceeded(
                f"ring capacity must be an int in 1..{RC_RING_MAX_CAPACITY}, got {capacity!r}"
            )
        if type(max_bytes) is not int or max_bytes < 0 or max_bytes >= 1 << 63:
            raise LimitExceeded(f"max_bytes must be an int >= 0 (0: no bound), got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.capacity = rc_ring_round_capacity(capacity)
        self.mask = self.capacity - 1
        self.slots = <rc_slot *>calloc(self.capacity, sizeof(rc_slot))
        if self.slots == NULL:
            raise MemoryError()
        self.policy = policy
        self.next_seq = 1
        self.stamped = stamped

    def __dealloc__(self):
        cdef rc_slot s
        if self.slots != NULL:
            while self.take(&s):
                Py_XDECREF(<PyObject *>s.subject)
                Py_XDECREF(<PyObject *>s.payload)
                Py_XDECREF(<PyObject *>s.headers)
            free(self.slots)
            self.slots = NULL

    @property
    def policy_name(self):
        return _POLICY_NAMES[self.policy]

    @property
    def last_seq(self):
        """Sequence number given to the most recently offered message (0: none)."""
        return self.next_seq - 1

    def __len__(self):
        return self.wpos - self.rpos

    @property
    def free(self):
        """Free slots; 0 while the byte bound is reached (below it, a slot
        takes a message of any size: the bound is soft)."""
        if self.max_bytes != 0 and self.nbytes >= self.max_bytes:
            return 0
        return self.capacity - (self.wpos - self.rpos)

    @property
    def first_seq(self):
        """Sequence number of the oldest unread message (the next one to be
        given when the ring is empty)."""
        if self.wpos == self.rpos:
            return self.next_seq
        return self.slots[self.rpos & self.mask].seq

    def peek_after(self, uint64_t seq):
        """The unread messages whose sequence number is above ``seq``, oldest
        first, left in the ring (a durable queue logs them this way while the
        ring stays the bounded buffer)."""
        cdef uint64_t pos = self.wpos
        cdef list out = []
        while pos != self.rpos and self.slots[(pos - 1) & self.mask].seq > seq:
            pos -= 1
        while pos != self.wpos:
            out.append(untracked(self.slot_message(&self.slots[pos & self.mask])))
            pos += 1
        return out

    cdef int push(self, object subject, object payload, object headers) except -2:
        cdef rc_slot *slot
        cdef rc_slot old
        cdef uint64_t size = payload_size(payload)
        if self.full():
            if self.policy == RC_BLOCK:
                return -1
            if self.policy == RC_DROP_NEWEST:
                self.offered += 1
                self.next_seq += 1
                self.dropped += 1
                return 0
            # drop_oldest: evict until there is room (slots and bytes). Each
            # release may run arbitrary code, which may push here too: the
            # ring is consistent at each one and room is checked again after.
            while self.full():
                self.take(&old)
                self.dropped += 1
                Py_XDECREF(<PyObject *>old.subject)
                Py_XDECREF(<PyObject *>old.payload)
                Py_XDECREF(<PyObject *>old.headers)
        self.offered += 1
        slot = &self.slots[self.wpos & self.mask]
        slot.seq = self.next_seq
        slot.size = size
        self.nbytes += size
        slot.stamp = rc_now_ns() if self.stamped else 0
        Py_INCREF(subject)
        Py_INCREF(payload)
        slot.subject = <PyObject *>subject
        slot.payload = <PyObject *>payload
        if headers is None:
            slot.headers = NULL
        else:
            Py_INCREF(headers)
            slot.headers = <PyObject *>headers
        self.next_seq += 1
        self.wpos += 1
        return 1

    cdef int take(self, rc_slot *out) noexcept:
        if self.rpos == self.wpos:
            return 0
        out[0] = self.slots[self.rpos & self.mask]
        self.rpos += 1
        self.nbytes -= out.size
        return 1

    cdef Py_ssize_t room(self, list items, Py_ssize_t n) except -1:
        cdef Py_ssize_t i, slots = <Py_ssize_t>(self.capacity - (self.wpos - self.rpos))
        cdef uint64_t held = self.nbytes
        if n > slots:
            n = slots
        if self.max_bytes == 0:
            return n
        for i in range(n):
            if held >= self.max_bytes:
                return i
            held += payload_size(items[i])
        return n

    cdef Message slot_message(self, rc_slot *slot):
        """A Message of a slot's contents; the slot keeps its references."""
        cdef Message m = Message.__new__(Message)
        m.subject = <str>slot.subject
        m.payload = <object>slot.payload
        m.headers = <object>slot.headers if slot.headers != NULL else None
        m.seq = slot.seq
        m.timestamp_ns = slot.stamp
        m.delivery_count = 1
        return m

    cdef Message make_message(self, rc_slot *slot):
        """Build a Message from a taken slot, consuming the slot's references."""
        cdef Message m = self.slot_message(slot)
        Py_DECREF(<object>slot.subject)
        Py_DECREF(<object>slot.payload)
        Py_XDECREF(<PyObject *>slot.headers)
        return untracked(m)

    cdef object fire_ready(self):
        cb = self.on_ready
        if cb is not None:
            if not self.hooked:
                self.on_ready = None
            cb()

    cdef object fire_space(self):
        cb = self.on_space
        if cb is not None:
            self.on_space = None
            cb()

    def set_hook(self, callback):
        """Make ``callback()`` run after every push that stores a message, in
        the pushing thread, before the publish returns (durable queues log
        their messages this way). One-shot ``arm_ready`` is then refused."""
        self.on_ready = callback
        self.hooked = callback is not None

    def arm_ready(self, callback):
        """Call ``callback()`` once, when a message is next stored.

        Returns False without arming when messages are already waiting, so a
        consumer checks and arms in one step with no lost wake-up.
        """
        if self.hooked:
            raise RingcastError("this ring has a persistent hook; wait on its owner instead")
        if self.wpos != self.rpos:
            return False
        self.on_ready = callback
        return True

    def arm_space(self, callback):
        """Call ``callback()`` once, when room next appears; False if there is room now."""
        if not self.full():
            return False
        self.on_space = callback
        return True

    def disarm(self):
        if not self.hooked:
            self.on_ready = None
        self.on_space = None

    def put(self, str subject, payload, headers=None):
        """Offer one message. Returns 1 stored, 0 dropped by policy, -1 refused (block, full)."""
        cdef int rc = self.push(subject, payload, headers)
        if rc == 1:
            self.fire_ready()
        return rc

    def put_many(self, str subject, payloads, headers=None):
        """Offer many payloads under one subject; returns how many were consumed
        (stored or dropped). Under ``block`` it stops at the first refusal."""
        cdef Py_ssize_t i, n
        cdef list items = payloads if type(payloads) is list else list(payloads)
        n = len(items)
        for i in range(n):
            if self.push(subject, items[i], headers) < 0:
                n = i
                break
        if self.wpos != self.rpos:
            self.fire_ready()
        return n

    def pop(self):
        """The oldest message, or None when empty."""
        cdef rc_slot s
        if not self.take(&s):
            return None
        m = self.make_message(&s)
        if self.on_space is not None:
            self.fire_space()
        return m

    def pop_many(self, Py_ssize_t max_count=1 << 30, uint64_t max_bytes=0):
        """Up to ``max_count`` oldest messages, as a list; with ``max_bytes``,
        stop once that many payload bytes were taken."""
        cdef rc_slot s
        cdef list out = []
        cdef Py_ssize_t i = 0
        cdef uint64_t taken = 0
        while i < max_count and (max_bytes == 0 or taken < max_bytes) and self.take(&s):
            taken += s.size
            out.append(self.make_message(&s))
            i += 1
        if i and self.on_space is not None:
            self.fire_space()
        return out

    def pop_payloads(self, Py_ssize_t max_count=1 << 30):
        """Up to ``max_count`` payloads, without building Message objects.

        The batch fast path: the list holds the publishers' payload objects.
        """
        cdef rc_slot s
        cdef Py_ssize_t i, n = self.wpos - self.rpos
        if n > max_count:
            n = max_count
        if n < 0:
            n = 0
        cdef list out = [None] * n
        for i in range(n):
            self.take(&s)
            # the list takes over the slot's payload reference
            out[i] = <object>s.payload
            Py_DECREF(<object>s.payload)
            Py_DECREF(<object>s.subject)
            Py_XDECREF(<PyObject *>s.headers)
        if n and self.on_space is not None:
            self.fire_space()
        return out

    def clear(self):
        """Discard everything unread; returns how many were discarded."""
        cdef rc_slot s
        cdef Py_ssize_t n = 0
        while self.take(&s):
            Py_XDECREF(<PyObject *>s.subject)
            Py_XDECREF(<PyObject *>s.payload)
            Py_XDECREF(<PyObject *>s.headers)
            n += 1
        if n and self.on_space is not None:
            self.fire_space()
        return n

    def close(self):
        """Stop accepting messages; wakes any armed waiter so it can notice."""
        self.closed = True
        if not self.hooked:
            self.fire_ready()
        self.fire_space()

    def __repr__(self):
        bound = f" bytes={self.nbytes}/{self.max_bytes}" if self.max_bytes else ""
        return (f"<Ring {self.wpos - self.rpos}/{self.capacity}{bound} "
                f"policy={self.policy_name} dropped={self.dropped}>")
