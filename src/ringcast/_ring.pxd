# Declarations of the native ring, shared with _router.pyx and _codec.pyx
# so that routing and wire encoding touch slots without Python objects.
from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_FULL_RO
from cpython.bytes cimport PyBytes_GET_SIZE
from libc.stdint cimport uint64_t

cdef extern from "rc_ring.h":
    ctypedef struct rc_slot:
        uint64_t seq
        uint64_t stamp
        void *subject
        void *payload
        void *headers
        uint64_t size
    enum:
        RC_BLOCK
        RC_DROP_OLDEST
        RC_DROP_NEWEST
    uint64_t RC_RING_MAX_CAPACITY
    uint64_t rc_ring_round_capacity(uint64_t n)

cdef extern from "rc_clock.h":
    uint64_t rc_now_ns() nogil


cdef class Message:
    cdef readonly str subject
    cdef readonly object payload
    cdef readonly object headers
    cdef readonly uint64_t seq
    cdef readonly bint redelivered
    cdef readonly unsigned int delivery_count
    cdef readonly uint64_t timestamp_ns
    # settlement handle: the queue consumer for acks, the reply slot for
    # requests (Python sees it as ``_owner``)
    cdef object owner
    cdef public uint64_t _tag
    # id of the record in a durable queue's log (0: not durable)
    cdef public uint64_t _id

    cdef object _settlement(self)


cdef inline uint64_t payload_size(object payload) except? 0:
    """Bytes of a bytes-like payload, as a byte bound counts them (0 for
    other objects: the ring itself carries anything)."""
    if type(payload) is bytes:
        return <uint64_t>PyBytes_GET_SIZE(payload)
    if not PyObject_CheckBuffer(payload):
        return 0
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_FULL_RO)
    cdef uint64_t n = <uint64_t>view.len
    PyBuffer_Release(&view)
    return n


cdef extern from *:   # the CPython API, already included
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_UnTrack(void *o)
    void PyObject_GC_Track(void *o)


cdef inline Message untracked(Message m):
    """Take ``m`` out of the cyclic garbage collector when nothing it holds
    can lead back to it (str subject, untracked payload, no headers, no
    owner), as CPython does for tuples of atomic values: a batch of received
    messages then costs the collector nothing."""
    if m.headers is None and m.owner is None and not PyObject_GC_IsTracked(m.payload):
        PyObject_GC_UnTrack(<void *>m)
    return m


cdef class Ring:
    cdef rc_slot *slots
    cdef readonly uint64_t capacity
    cdef uint64_t mask
    cdef uint64_t wpos          # next position to write
    cdef uint64_t rpos          # next position to read
    cdef uint64_t next_seq      # sequence number of the next offered message
    cdef readonly int policy
    cdef readonly uint64_t max_bytes   # bound on payload bytes held (0: none)
    cdef readonly uint64_t nbytes      # payload bytes held
    cdef readonly uint64_t dropped
    cdef readonly uint64_t offered
    cdef readonly bint closed
    cdef readonly bint stamped     # stamp slots with the enqueue time
    cdef bint hooked               # on_ready is a persistent hook, not one-shot
    # one-shot callbacks: called once when data arrives / room appears
    cdef object on_ready
    cdef object on_space

    # Full in slots, or holding at least max_bytes: the next message is
    # refused, dropped or makes room, by policy. The byte bound is soft (a
    # message is admitted while the ring is below it), so a ring never holds
    # more than max_bytes plus one message, and never refuses a lone message.
    cdef inline bint full(self):
        return (self.wpos - self.rpos >= self.capacity
                or (self.max_bytes != 0 and self.nbytes >= self.max_bytes))

    cdef inline uint64_t used(self):
        return self.wpos - self.rpos

    # Store one message (new references taken). Returns 1 when stored,
    # 0 when dropped by drop_newest, -1 when refused (block policy, full).
    cdef int push(self, object subject, object payload, object headers) except -2
    # Move the oldest slot into *out (references transferred to the caller).
    # Returns 0 when empty.
    cdef int take(self, rc_slot *out) noexcept
    # How many of items[:n] a block-policy publish can store now.
    cdef Py_ssize_t room(self, list items, Py_ssize_t n) except -1
    # Fire on_ready if armed (call after a push, outside any slot update).
    cdef object fire_ready(self)
    cdef object fire_space(self)
    cdef Message slot_message(self, rc_slot *slot)
    cdef Message make_message(self, rc_slot *slot)
