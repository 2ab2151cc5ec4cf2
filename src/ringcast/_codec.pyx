# cython: freethreading_compatible=False
"""Batched wire codec of the ringcast protocol (docs/protocol.md).

Many records travel in one ZeroMQ frame; encoding and decoding them here,
in one native loop per frame, is what lets a Python publish loop and the
broker move millions of small messages per second. The broker routes
publish records straight from a frame into the native router and encodes
deliveries straight out of subscription rings, so no Message object is
built on its hot path; payload objects are shared by reference across
fan-out.
"""
cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE,
                            PyBytes_CheckExact)
from cpython.dict cimport PyDict_DelItem, PyDict_GetItem, PyDict_SetItem
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp
from collections import deque
from gc import disable as _gc_disable, enable as _gc_enable, isenabled as _gc_isenabled

from ringcast._ring cimport Ring, Message, rc_slot, untracked, payload_size
from ringcast._router cimport CoreRouter, _check_payload

from ringcast._args import TIMEOUT_MAX as _TIMEOUT_MAX, check_request_timeout as _check_timeout
from ringcast.errors import (AckError, Closed, LimitExceeded, ProtocolError, RingcastError,
                             UnknownCommand, WrongType, error_from_code as _error_from_code)

cdef extern from "rc_codec.h":
    int RC_PROTO_VERSION
    int RC_PROTO_VERSION_MIN
    int RC_REC_HDR
    int RC_UVARINT_MAX
    void rc_u32le_put(unsigned char *p, uint32_t v) nogil
    uint32_t rc_u32le_get(const unsigned char *p) nogil
    size_t rc_uvarint_len(uint64_t v) nogil
    size_t rc_uvarint_put(unsigned char *p, uint64_t v) nogil
    size_t rc_uvarint_get(const unsigned char *p, size_t avail, uint64_t *out) nogil
    enum:
        RC_HELLO
        RC_PUB
        RC_SUB
        RC_CLOSE
        RC_CREDIT
        RC_DECLARE
        RC_SEND
        RC_CONSUME
        RC_ACK
        RC_NACK
        RC_SERVE
        RC_REQ
        RC_REP
        RC_REPERR
        RC_STATS
        RC_HB
        RC_BYE
        RC_WELCOME
        RC_OK
        RC_ERR
        RC_MSG
        RC_QMSG
        RC_RQST
        RC_REPLY
        RC_REPLYERR
        RC_PCREDIT
        RC_STATSREP
        RC_MSGS
        RC_PUBS

PROTOCOL_VERSION = RC_PROTO_VERSION
PROTOCOL_VERSION_MIN = RC_PROTO_VERSION_MIN

# Command bytes, for Python code (the record loops here use the C names)
HELLO = RC_HELLO
PUB = RC_PUB
SUB = RC_SUB
CLOSE = RC_CLOSE
CREDIT = RC_CREDIT
DECLARE = RC_DECLARE
SEND = RC_SEND
CONSUME = RC_CONSUME
ACK = RC_ACK
NACK = RC_NACK
SERVE = RC_SERVE
REQ = RC_REQ
REP = RC_REP
REPERR = RC_REPERR
STATS = RC_STATS
HB = RC_HB
BYE = RC_BYE
WELCOME = RC_WELCOME
OK = RC_OK
ERR = RC_ERR
MSG = RC_MSG
QMSG = RC_QMSG
RQST = RC_RQST
REPLY = RC_REPLY
REPLYERR = RC_REPLYERR
PCREDIT = RC_PCREDIT
STATSREP = RC_STATSREP
MSGS = RC_MSGS
PUBS = RC_PUBS

#: Body layout per command: u varint, s string, l list of strings,
#: h headers, p payload (the rest of the body), o a varint that a newer
#: protocol version added at the end (absent: 0), r payloads (the rest of
#: the body: one or more of u length + bytes). Shared by both directions.
FORMATS = {
    HELLO: "uus", PUB: "shp", SUB: "usuuuo", CLOSE: "u", CREDIT: "uu",
    DECLARE: "usuulh", SEND: "shp", CONSUME: "usu", ACK: "uu", NACK: "uuu",
    SERVE: "usu", REQ: "usuhp", REP: "uuhp", REPERR: "uuus", STATS: "u",
    HB: "", BYE: "",
    WELCOME: "uuuuuus", OK: "u", ERR: "uus", MSG: "uushp", QMSG: "uuuushp",
    RQST: "uuushp", REPLY: "uhp", REPLYERR: "uus", PCREDIT: "u", STATSREP: "us",
    MSGS: "uusr", PUBS: "sr",
}

# Format strings indexed by command byte, for the decoder's inner loop.
cdef object _FMT_BY_BYTE = [None] * 256
cdef bint _KNOWN_CMD[256]      # the same, as a plain C test for the record loop
cdef Py_ssize_t _LEAST_FIELDS[256]   # fields a writer needs (trailing ``o`` may be left out)
for _c, _f in FORMATS.items():
    _FMT_BY_BYTE[_c] = _f.encode()
    _KNOWN_CMD[_c] = True
    _LEAST_FIELDS[_c] = len(_f.rstrip("o"))

DEFAULT_MAX_FRAME = 4 << 20
cdef enum:
    _ROUTE_RUN = 512   # most messages Reader.route hands a native router at once
DEFAULT_MAX_MESSAGE = 1 << 20
DEFAULT_MAX_SUBJECT = 1024
cdef size_t RC_MAX_HEADERS = 64 << 10   # what a reader refuses past (C: no global lookup)
MAX_HEADERS = RC_MAX_HEADERS


def max_record(Py_ssize_t max_message, Py_ssize_t max_subject):
    """The largest record a reader with these limits accepts (payload,
    subject, headers and fields): a peer's max_frame must hold one."""
    return _max_record(max_message, max_subject)


cdef inline size_t _max_record(size_t max_message, size_t max_subject):
    return max_message + max_subject + RC_MAX_HEADERS + 64

#: a client that has taken this many bytes of MSG records of a subscription
#: since its last CREDIT grants one as soon as it holds none of them
#: (docs/protocol.md, "Flow"): what lets a broker bound bytes in flight
CREDIT_BYTES = 64 << 10

cdef Py_ssize_t _payload_len(object payload) except -1:
    """Bytes of a bytes-like payload (``len`` counts a memoryview's items);
    WrongType before the buffer protocol's own TypeError, which would not say
    what was wrong."""
    _check_payload(payload)
    return <Py_ssize_t>payload_size(payload)


cdef inline void _set_item(tuple t, Py_ssize_t i, object x):
    """Fill item ``i`` of a new tuple (PyTuple_SET_ITEM steals a reference)."""
    Py_INCREF(x)
    PyTuple_SET_ITEM(t, i, x)


cdef inline tuple _pop_request(dict requests, object rid):
    """A client's ``(service, settle, deadline)`` of request ``rid``, taken
    out of ``requests``; None if it is not there (given up on)."""
    cdef PyObject *o = PyDict_GetItem(requests, rid)
    if o == NULL:
        return None
    cdef tuple entry = <tuple>o
    PyDict_DelItem(requests, rid)
    return entry


cdef inline Message _reply_message(tuple entry, object headers, object payload):
    """The Message a client's request ``entry`` (``_pop_request``) is answered with."""
    cdef Message m = Message.__new__(Message)
    m.subject = entry[0]
    m.headers = headers
    m.payload = payload
    m.delivery_count = 1
    return m


cdef inline const char *_utf8(object s, Py_ssize_t *n) except NULL:
    if type(s) is not str:
        raise WrongType(f"expected str, not {type(s).__name__}")
    return PyUnicode_AsUTF8AndSize(s, n)


@cython.final
cdef class Writer:
    """A growing frame of records; ``take()`` hands the frame over as bytes."""
    cdef unsigned char *buf
    cdef size_t length
    cdef size_t cap
    #: records written since the last take()
    cdef readonly Py_ssize_t records
    # the last subject written by _message and its encoding (varint length +
    # UTF-8): a loop publishing one subject encodes it once
    cdef object memo_subject
    cdef bytes memo_field
    # the PUBS record _pub_run may extend: it is the last one while the
    # frame ends at run_end (0: none)
    cdef size_t run_start
    cdef size_t run_end

    def __cinit__(self, size_t initial=65536):
        self.cap = initial if initial > 64 else 64
        self.buf = <unsigned char *>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.buf)

    def __len__(self):
        return self.length

    cdef int _room(self, size_t extra) except -1:
        cdef size_t need = self.length + extra
        cdef size_t cap = self.cap
        cdef unsigned char *nb
        if need <= cap:
            return 0
        while cap < need:
            cap *= 2
        nb = <unsigned char *>realloc(self.buf, cap)
        if nb == NULL:
            raise MemoryError()
        self.buf = nb
        self.cap = cap
        return 0

    cdef inline size_t _begin(self, int cmd) except? 0:
        cdef size_t start
        self._room(RC_REC_HDR)
        start = self.length
        self.buf[start] = <unsigned char>cmd
        self.length += RC_REC_HDR
        return start

    cdef inline int _end(self, size_t start) except -1:
        rc_u32le_put(self.buf + start + 1, <uint32_t>(self.length - start - RC_REC_HDR))
        self.records += 1
        return 0

    cdef inline int _uv(self, uint64_t v) except -1:
        self._room(RC_UVARINT_MAX)
        self.length += rc_uvarint_put(self.buf + self.length, v)
        return 0

    cdef inline int _raw(self, const char *p, size_t n) except -1:
        self._room(n)
        memcpy(self.buf + self.length, p, n)
        self.length += n
        return 0

    cdef inline int _str(self, object s) except -1:
        cdef Py_ssize_t n
        cdef const char *p = _utf8(s, &n)
        self._uv(<uint64_t>n)
        self._raw(p, <size_t>n)
        return 0

    cdef int _headers(self, object headers) except -1:
        if headers is None:
            return self._uv(0)
        if type(headers) is not dict:
            raise WrongType(f"headers must be a dict of str to str, not {type(headers).__name__}")
        self._uv(len(<dict>headers))
        cdef size_t start = self.length
        for k, v in (<dict>headers).items():
            if type(k) is not str or type(v) is not str:
                raise WrongType("headers must be a dict of str to str")
            self._str(k)
            self._str(v)
        if self.length - start > RC_MAX_HEADERS:   # what a reader refuses
            raise LimitExceeded(f"headers exceed the limit of {MAX_HEADERS} bytes")
        return 0

    cdef int _sized(self, object payload) except -1:
        """A payload inside a run: its length, then its bytes."""
        self._uv(<uint64_t>_payload_len(payload))
        return self._payload(payload)

    cdef int _payload(self, object payload) except -1:
        cdef Py_buffer view
        if type(payload) is bytes:
            return self._raw(PyBytes_AS_STRING(payload), <size_t>PyBytes_GET_SIZE(payload))
        _check_payload(payload)
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self._raw(<const char *>view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int _memo(self, object subject) except -1:
        cdef unsigned char hv[16]   # RC_UVARINT_MAX bytes at most
        cdef Py_ssize_t sn
        cdef const char *sp = _utf8(subject, &sn)
        cdef size_t hn = rc_uvarint_put(hv, <uint64_t>sn)
        self.memo_field = PyBytes_FromStringAndSize(<char *>hv, <Py_ssize_t>hn) \
            + PyBytes_FromStringAndSize(sp, sn)
        self.memo_subject = subject
        return 0

    cdef int _pub_run(self, object subject, bytes payload) except -1:
        """Append a header-less message to the PUBS record that ends the
        frame when it has this subject, else start one (version 3)."""
        cdef size_t start, fn, k, pn = <size_t>PyBytes_GET_SIZE(payload)
        cdef unsigned char *q
        if subject is not self.memo_subject and type(subject) is str \
                and type(self.memo_subject) is str and subject == self.memo_subject:
            self.memo_subject = subject   # an equal str built anew for each call
        if self.run_end != 0 and self.run_end == self.length and subject is self.memo_subject:
            self._room(RC_UVARINT_MAX + pn)
            q = self.buf + self.length
            k = rc_uvarint_put(q, <uint64_t>pn)
            memcpy(q + k, PyBytes_AS_STRING(payload), pn)
            self.length += k + pn
            rc_u32le_put(self.buf + self.run_start + 1,
                         <uint32_t>(self.length - self.run_start - RC_REC_HDR))
            self.run_end = self.length
            return 0
        if subject is not self.memo_subject:
            self._memo(subject)
        fn = <size_t>PyBytes_GET_SIZE(self.memo_field)
        self._room(RC_REC_HDR + fn + RC_UVARINT_MAX + pn)
        start = self.length
        q = self.buf + start
        q[0] = RC_PUBS
        memcpy(q + RC_REC_HDR, PyBytes_AS_STRING(self.memo_field), fn)
        k = RC_REC_HDR + fn
        k += rc_uvarint_put(q + k, <uint64_t>pn)
        memcpy(q + k, PyBytes_AS_STRING(payload), pn)
        self.length = start + k + pn
        rc_u32le_put(q + 1, <uint32_t>(self.length - start - RC_REC_HDR))
        self.records += 1
        self.run_start, self.run_end = start, self.length
        return 0

    cdef inline int _stream(self, int cmd, object subject, object payload,
                            object headers) except -1:
        """What an outbox appends: a header-less bytes publish joins a PUBS
        run (version 3); anything else is a record of its own."""
        if cmd == RC_PUB and headers is None and type(payload) is bytes:
            return self._pub_run(subject, payload)
        return self._message(cmd, subject, payload, headers)

    cdef int _message(self, int cmd, object subject, object payload,
                      object headers) except -1:
        """Append one PUB or SEND record (one layout), or nothing at all if a
        field is refused."""
        cdef size_t start, fn, pn
        cdef unsigned char *q
        if headers is None and type(payload) is bytes:
            # the common record, written in one piece
            if subject is not self.memo_subject:
                self._memo(subject)
            fn = <size_t>PyBytes_GET_SIZE(self.memo_field)
            pn = <size_t>PyBytes_GET_SIZE(payload)
            self._room(RC_REC_HDR + fn + 1 + pn)
            start = self.length
            q = self.buf + start
            q[0] = <unsigned char>cmd
            rc_u32le_put(q + 1, <uint32_t>(fn + 1 + pn))
            memcpy(q + RC_REC_HDR, PyBytes_AS_STRING(self.memo_field), fn)
            q[RC_REC_HDR + fn] = 0   # no headers
            memcpy(q + RC_REC_HDR + fn + 1, PyBytes_AS_STRING(payload), pn)
            self.length = start + RC_REC_HDR + fn + 1 + pn
            self.records += 1
            return 0
        start = self._begin(cmd)
        try:
            self._str(subject)
            self._headers(headers)
            self._payload(payload)
        except BaseException:
            self.length = start
            raise
        return self._end(start)

    cdef int _record(self, int cmd, tuple fields) except -1:
        fmt = _FMT_BY_BYTE[cmd & 0xff] if 0 <= cmd < 256 else None
        if fmt is None:
            raise UnknownCommand(f"unknown command 0x{cmd:02x}")
        cdef bytes f = fmt
        cdef Py_ssize_t nf = len(f), least = _LEAST_FIELDS[cmd]
        if not least <= len(fields) <= nf:   # trailing o fields may be left out
            raise ValueError(f"command 0x{cmd:02x} takes {nf} fields, got {len(fields)}")
        cdef size_t start = self._begin(cmd)
        cdef Py_ssize_t i
        try:
            for i in range(len(fields)):
                c = f[i]
                x = fields[i]
                if c == 117 or c == 111:    # u, o
                    self._uv(<uint64_t>x)
                elif c == 115:  # s
                    self._str(x)
                elif c == 104:  # h
                    self._headers(x)
                elif c == 112:  # p
                    self._payload(x)
                elif c == 114:  # r
                    if not x:
                        raise ValueError("a run of payloads holds at least one")
                    for item in x:
                        self._sized(item)
                else:           # l
                    self._uv(len(x))
                    for item in x:
                        self._str(item)
        except BaseException:
            self.length = start
            raise
        return self._end(start)

    def pub(self, str subject, payload, headers=None):
        """Append a PUB record; returns the frame's size so far."""
        self._message(RC_PUB, subject, payload, headers)
        return self.length

    def pub_many(self, str subject, payloads, headers=None):
        """Append one PUB record per payload under one subject."""
        for payload in payloads:
            self._message(RC_PUB, subject, payload, headers)
        return self.length

    def record(self, int cmd, *fields):
        """Append any record; ``fields`` follow ``FORMATS[cmd]``."""
        self._record(cmd, fields)
        return self.length

    def ack(self, uint64_t handle, uint64_t tag):
        """Append an ACK record: a consumer acks every message, so this one
        skips ``record``'s argument tuple and format walk."""
        self._ack(handle, tag)
        return self.length

    cdef inline int _ack(self, uint64_t handle, uint64_t tag) except -1:
        cdef size_t start = self._begin(RC_ACK)
        self._uv(handle)
        self._uv(tag)
        self._end(start)
        return 0

    def rqst(self, uint64_t handle, uint64_t tag, uint64_t timeout_ms, service, headers,
             payload):
        """Append an RQST record, as ``ack`` (the broker writes one per
        request); returns the frame's size so far."""
        self._rqst(handle, tag, timeout_ms, service, headers, payload)
        return self.length

    cdef int _rqst(self, uint64_t handle, uint64_t tag, uint64_t timeout_ms, object service,
                   object headers, object payload) except -1:
        cdef size_t start = self._begin(RC_RQST)
        try:
            self._uv(handle)
            self._uv(tag)
            self._uv(timeout_ms)
            self._str(service)
            self._headers(headers)
            self._payload(payload)
        except BaseException:
            self.length = start
            raise
        return self._end(start)

    def reply(self, uint64_t rid, headers, payload):
        """Append a REPLY record, as ``ack`` (the broker writes one per answer)."""
        self._reply(rid, headers, payload)
        return self.length

    cdef int _reply(self, uint64_t rid, object headers, object payload) except -1:
        cdef size_t start = self._begin(RC_REPLY)
        try:
            self._uv(rid)
            self._headers(headers)
            self._payload(payload)
        except BaseException:
            self.length = start
            raise
        return self._end(start)

    cdef int _req(self, uint64_t rid, object service, uint64_t timeout_ms, object headers,
                  object payload) except -1:
        """A REQ record, as ``_reply`` (a client writes one per request)."""
        cdef size_t start = self._begin(RC_REQ)
        try:
            self._uv(rid)
            self._str(service)
            self._uv(timeout_ms)
            self._headers(headers)
            self._payload(payload)
        except BaseException:
            self.length = start
            raise
        return self._end(start)

    def write_deliveries(self, uint64_t handle, list msgs, size_t max_message=0):
        """QMSG records for queue deliveries, one native loop for a batch
        (the broker's consumer flush): tag, redelivered flag, delivery count.
        Returns the messages its reader would refuse, not written: a payload
        over ``max_message`` (0: no limit) or headers over MAX_HEADERS (an
        in-process sender is not held to the wire's limits). The pure-Python
        core's messages take the generic record path."""
        cdef Message m
        cdef size_t start
        cdef list refused = []
        for x in msgs:
            if max_message and payload_size(x.payload) > max_message:
                refused.append(x)
                continue
            if not isinstance(x, Message):
                try:
                    self._record(RC_QMSG, (handle, x._tag, 1 if x.redelivered else 0,
                                           x.delivery_count, x.subject, x.headers, x.payload))
                except LimitExceeded:   # headers over MAX_HEADERS
                    refused.append(x)
                continue
            m = <Message>x
            start = self._begin(RC_QMSG)
            try:
                self._uv(handle)
                self._uv(m._tag)
                self._uv(1 if m.redelivered else 0)
                self._uv(m.delivery_count)
                self._str(m.subject)
                self._headers(m.headers)
                self._payload(m.payload)
            except LimitExceeded:
                self.length = start
                refused.append(x)
                continue
            except BaseException:
                self.length = start
                raise
            self._end(start)
        return refused

    def write_ring(self, ring, uint64_t handle, Py_ssize_t max_count, size_t max_bytes,
                   bint runs=False, size_t max_message=0):
        """Move up to ``max_count`` messages out of ``ring`` as MSG records,
        stopping once the frame reaches ``max_bytes``; returns how many. With
        ``runs`` (a version 3 peer), consecutive header-less messages of one
        subject go as one MSGS record. A message its reader would refuse (a
        payload over ``max_message``, 0: no limit; headers over MAX_HEADERS:
        an in-process publisher is not held to them) is taken out and counted
        as the ring's drop instead, a gap in seq. A native Ring is read slot
        by slot (no Python object per message); any other ring (the
        pure-Python core's) a Message at a time, by ``pop()``."""
        if not isinstance(ring, Ring):
            return self._write_popped(ring, handle, max_count, max_bytes, max_message)
        cdef Ring native = <Ring>ring
        cdef rc_slot s
        cdef Py_ssize_t n = 0
        cdef size_t start, k, pn
        cdef size_t run_start = 0   # the open MSGS record (runs only)
        cdef bint in_run = False
        cdef uint64_t next_seq = 0
        cdef unsigned char *q
        cdef unsigned char hv[16]   # the handle as a varint (RC_UVARINT_MAX bytes at most)
        cdef size_t hn = rc_uvarint_put(hv, handle)
        # the last subject and its UTF-8, held so that its address stays its own
        cdef object last = None
        cdef const char *sp = NULL
        cdef Py_ssize_t sn = 0
        cdef bint same
        cdef bint took = False
        try:
            while n < max_count and self.length < max_bytes and native.take(&s):
                took = True
                try:
                    if max_message and s.size > max_message:
                        native.dropped += 1
                        continue
                    n += 1
                    same = s.subject == <PyObject *>last
                    if not same:
                        last = <object>s.subject
                        sp = _utf8(last, &sn)
                    if s.headers == NULL and PyBytes_CheckExact(<object>s.payload):
                        pn = <size_t>PyBytes_GET_SIZE(<object>s.payload)
                        if in_run and same and s.seq == next_seq:
                            # the next message of the open run: its length and bytes
                            self._room(RC_UVARINT_MAX + pn)
                            q = self.buf + self.length
                            k = rc_uvarint_put(q, <uint64_t>pn)
                            memcpy(q + k, PyBytes_AS_STRING(<object>s.payload), pn)
                            self.length += k + pn
                            next_seq += 1
                            continue
                        if in_run:
                            self._end(run_start)
                            in_run = False
                        # the common record, written in one piece
                        self._room(RC_REC_HDR + hn + 3 * RC_UVARINT_MAX + <size_t>sn + 1 + pn)
                        start = self.length
                        q = self.buf + start
                        q[0] = RC_MSGS if runs else RC_MSG
                        k = RC_REC_HDR + rc_uvarint_put(q + RC_REC_HDR, handle)   # no memcpy call
                        k += rc_uvarint_put(q + k, s.seq)
                        k += rc_uvarint_put(q + k, <uint64_t>sn)
                        memcpy(q + k, sp, <size_t>sn)
                        k += <size_t>sn
                        if runs:
                            k += rc_uvarint_put(q + k, <uint64_t>pn)
                        else:
                            q[k] = 0   # no headers
                            k += 1
                        memcpy(q + k, PyBytes_AS_STRING(<object>s.payload), pn)
                        self.length = start + k + pn
                        if runs:   # left open for the messages that follow
                            run_start, in_run, next_seq = start, True, s.seq + 1
                        else:
                            self._end(start)
                    else:
                        if in_run:
                            self._end(run_start)
                            in_run = False
                        start = self._begin(RC_MSG)
                        try:
                            self._raw(<const char *>hv, hn)
                            self._uv(s.seq)
                            self._uv(<uint64_t>sn)
                            self._raw(sp, <size_t>sn)
                            self._headers(<object>s.headers if s.headers != NULL else None)
                            self._payload(<object>s.payload)
                        except LimitExceeded:   # headers over MAX_HEADERS
                            self.length = start
                            native.dropped += 1
                            n -= 1
                            continue
                        except BaseException:   # no partial record
                            self.length = start
                            raise
                        self._end(start)
                finally:
                    Py_XDECREF(<PyObject *>s.subject)
                    Py_XDECREF(<PyObject *>s.payload)
                    Py_XDECREF(<PyObject *>s.headers)
        finally:   # also when a record failed: the open run is whole, and
            if in_run:   # what was taken (dropped ones too) made room
                self._end(run_start)
            if took:
                native.fire_space()
        return n

    cdef Py_ssize_t _write_popped(self, object ring, uint64_t handle, Py_ssize_t max_count,
                                  size_t max_bytes, size_t max_message) except -1:
        cdef Py_ssize_t n = 0
        while n < max_count and self.length < max_bytes:
            m = ring.pop()
            if m is None:
                break
            if max_message and payload_size(m.payload) > max_message:
                ring.dropped += 1
                continue
            try:
                self._record(RC_MSG, (handle, m.seq, m.subject, m.headers, m.payload))
            except LimitExceeded:   # headers over MAX_HEADERS
                ring.dropped += 1
                continue
            n += 1
        return n

    def take(self):
        """The frame as bytes; the writer starts over empty."""
        return self._take()

    cdef bytes _take(self):
        out = PyBytes_FromStringAndSize(<char *>self.buf, <Py_ssize_t>self.length)
        self.length = 0
        self.records = 0
        self.run_end = 0
        return out

    def clear(self):
        self.length = 0
        self.records = 0
        self.run_end = 0


@cython.final
cdef class NoLock:
    """A context manager that does nothing, in C: the "lock" of a client
    protocol driven by one thread only (asyncio, a per-thread requester),
    at a third of ``contextlib.nullcontext``'s cost per ``with``."""

    def __enter__(self):
        return None

    def __exit__(self, exc_type, exc, tb):
        return None


@cython.final
cdef class Urgent:
    """A client's urgent records (acks, replies, credit, control): sent
    ahead of its ordered stream and never held for publish credit. They are
    cut into frames at ``frame_target`` so that none passes the broker's
    max_frame. ``put`` writes under ``lock`` (the client protocol's, any
    context manager; a ``NoLock`` is skipped) while ``ready`` (a session is
    welcomed) and asks ``owner.kick()`` to send; ``record`` writes at once,
    for a caller that holds the lock (HELLO, HB)."""

    cdef Writer w
    cdef list frames
    cdef public Py_ssize_t frame_target
    cdef public bint ready
    #: the thread whose writes need no kick (the sync client's I/O thread,
    #: which sends what they write before it sleeps); 0: none
    cdef public unsigned long sender
    cdef object owner       # its ``kick`` is looked up per call: drivers rebind it
    cdef object _lock
    cdef object _enter, _exit

    def __cinit__(self, owner, lock, Py_ssize_t frame_target=65536):
        self.w = Writer(4096)
        self.frames = []
        self.frame_target = frame_target
        self.owner = owner
        self.lock = lock

    @property
    def lock(self):
        return self._lock

    @lock.setter
    def lock(self, value):
        self._lock = value
        if isinstance(value, NoLock):
            self._enter = self._exit = None
        else:
            self._enter, self._exit = value.__enter__, value.__exit__

    def __len__(self):
        """Bytes written and not yet cut into a frame."""
        return self.w.length

    cdef inline int _acquire(self) except -1:
        if self._enter is not None:
            self._enter()
        return 0

    cdef inline int _release(self) except -1:
        if self._exit is not None:
            self._exit(None, None, None)
        return 0

    cdef inline int _written(self, bint kick) except -1:
        if self.w.length >= <size_t>self.frame_target:
            self.frames.append(self.w._take())
        if kick and (self.sender == 0 or
                     <unsigned long>PyThread_get_thread_ident() != self.sender):
            self.owner.kick()
        return 0

    def record(self, int cmd, *fields):
        self.w._record(cmd, fields)
        self._written(False)

    def put(self, int cmd, *fields):
        """One record, when a session is up (else dropped: a new session
        starts over), and a kick."""
        self._acquire()
        try:
            if self.ready:
                self.w._record(cmd, fields)
                self._written(True)
        finally:
            self._release()

    def answer_request(self, frame, double now):
        """The sync client's I/O thread's fast path for the frame a request
        comes in alone: one RQST for a handler ``owner.inline`` runs, with a
        live owner that writes here (as ``Reader.events`` would answer it;
        its reply is written under the lock held already). Under the lock it
        does what ``frame_received`` and then ``data_to_send`` would:
        ``owner.last_rx = now``, the handler runs and its reply is written
        (``Settler.answer``), and, when the outbox holds nothing (so that
        nothing else is to go), the frames are taken and returned
        (``owner.last_tx = now`` if any). Returns [] when the request was
        answered but the outbox holds records, or nothing was taken (no
        reply yet, a session not ready): ``data_to_send`` sends what there
        is. Returns None, having done nothing, for any other frame or one
        that does not decode (``frame_received`` applies it)."""
        cdef object proto = self.owner
        cdef Reader r = Reader(frame, proto.max_message, 1 << 20, proto.subjects)
        cdef PyObject *f
        cdef PyObject *o
        cdef Message m
        cdef Outbox outbox
        cdef list out
        cdef uint64_t tag
        try:
            if r._open() != RC_RQST or r.e != r.n:
                return None
            handle = r._uv()
            tag = r._uv()
            r._uv()   # the timeout: the broker's
            subject = r._subject()
            headers = r._headers()
            payload = r._payload()
        except RingcastError:
            return None
        self._acquire()
        try:
            # looked up under the lock, as frame_received does: a close() on
            # another thread takes the handler out under it
            f = PyDict_GetItem(<dict?>proto.inline, handle)
            if f == NULL:
                return None
            handler = <object>f   # held: the handler may close its handle
            o = PyDict_GetItem(<dict?>proto.owners, handle)
            if o == NULL or not isinstance(<object>o, Settler) or (<Settler>o).urgent is not self \
                    or (<Settler>o).handle.closed:
                return None
            settler = <object>o
            m = Message.__new__(Message)
            m._tag = tag
            m.delivery_count = 1
            m.subject = subject
            m.headers = headers
            m.payload = payload
            m.owner = settler
            proto.last_rx = now
            (<Settler>settler)._answer(m, handler, True)   # the lock is held: not again
            outbox = proto.outbox
            if outbox.w.length or outbox.queued:
                return []
            out = self.take()
            if out:
                proto.last_tx = now
            return out
        finally:
            self._release()

    def take(self):
        """Every frame, the partial one last; the buffer starts over empty."""
        cdef list out = self.frames
        self.frames = []
        if self.w.length:
            out.append(self.w._take())
        return out

    def clear(self):
        self.w.clear()
        self.frames = []


cdef class Settler:
    """The ``_owner`` of one remote handle's queue deliveries or requests
    for one session: their acks and replies become urgent records. The end
    of its session (or closing its consumer) makes it ``stale``: the broker
    redelivers what it held, so settling it then is an error. Subclassed by
    the protocol for the rarer nack, fail and the checks of respond."""

    cdef readonly object handle
    cdef readonly uint64_t hid
    cdef public bint stale
    cdef Urgent urgent

    def __init__(self, handle, uint64_t hid, Urgent urgent not None):
        self.handle = handle
        self.hid = hid
        self.urgent = urgent

    def live(self):
        """AckError once ``stale`` (the protocol's checks, and ours)."""
        self._live()

    cdef inline int _live(self) except -1:
        if self.stale:
            raise AckError("delivered in a session that has ended, or to a consumer since "
                           "closed: the broker redelivers it")
        return 0

    def ack(self, Message msg not None):
        """An ACK record; only the first of a batch kicks (the rest ride
        on the send it asks for). A delivery is settled once: its tag is
        cleared (broker tags start at 1), and settling it again raises
        AckError here, as an embedded consumer does."""
        cdef Urgent u = self.urgent
        cdef bint first
        u._acquire()
        try:
            self._live()   # under the lock: a reconnect may have just made it so
            self.settling(msg)
            if u.ready:
                first = u.w.length == 0
                u.w._ack(self.hid, msg._tag)
                msg._tag = 0   # written: settled, even if the kick raises
                u._written(first)
            else:
                msg._tag = 0
        finally:
            u._release()

    cpdef settling(self, Message msg):
        """AckError if ``msg`` was acked or nacked already (see ``ack``)."""
        if msg._tag == 0:
            raise AckError("this delivery is already settled (acked or nacked)")

    def respond(self, Message msg not None, payload, headers=None):
        """A REP record: AckError once stale; then the reply is checked
        before anything is written (bytes-like and headers as the writer
        checks them, and the size against ``handle.proto.max_message``, the
        broker's limit: a larger reply would end the session that reads it).
        Natively, as every request is answered here."""
        self._respond(msg, payload, headers)

    def answer(self, Message msg not None, handler):
        """Run an inline ``handler(msg)`` and reply with its result (None:
        no reply). The rare outcomes go to the subclass: an exception from
        the handler to ``handler_raised(msg, exc)``, a ringcast error from
        the reply (a result that cannot be one, a session that has ended)
        to ``not_replied(msg, exc)``. ``Reader.events`` calls it natively."""
        self._answer(msg, handler)

    cdef int _answer(self, Message msg, handler, bint locked=False) except -1:
        try:
            result = handler(msg)
        except Exception as exc:
            self.handler_raised(msg, exc)
            return 0
        if result is not None:
            try:
                self._respond(msg, result, None, locked)
            except RingcastError as exc:
                self.not_replied(msg, exc)
        return 0

    cdef int _respond(self, Message msg, payload, headers, bint locked=False) except -1:
        # ``locked``: the caller holds the urgent lock (Urgent.answer_request):
        # no second, reentrant, acquire and release
        self._live()
        cdef Py_ssize_t limit = self.handle.proto.max_message
        cdef Py_ssize_t size = _payload_len(payload)
        if size > limit:
            raise LimitExceeded(f"reply of {size} bytes exceeds the broker's limit of {limit}")
        cdef Urgent u = self.urgent
        if not locked:
            u._acquire()
        try:
            self._live()   # again, under the lock: a reconnect may have just made it so
            if u.ready:
                u.w._record(RC_REP, (self.hid, msg._tag, headers, payload))
                u._written(True)
        finally:
            if not locked:
                u._release()
        return 0


@cython.final
cdef class Outbox:
    """A client's ordered stream: records batched into frames, and frames
    waiting for publish credit (docs/protocol.md, "Ordered frames").

    ``publish`` is the hot path of a client's publish loop, native end to end:
    a cached subject check, a size check, a busy flag, one record appended.
    The client's I/O thread cuts and sends frames while application threads
    append. Every method holds the GIL, so testing and setting the flag is
    atomic; the flag covers the rare case where the GIL changes hands inside
    a method (a garbage collection running a finaliser). A real lock here
    costs a clock read per call on CPython 3.11 (its timed-acquire path).
    """
    cdef Writer w
    cdef bint busy
    #: frames cut and waiting for credit (a collections.deque of bytes)
    cdef readonly object frames
    #: bytes in ``frames``
    cdef readonly Py_ssize_t queued
    #: monotonic time the oldest record not yet in a frame was added
    cdef readonly double first
    cdef public Py_ssize_t frame_target
    cdef public Py_ssize_t queued_limit
    cdef public Py_ssize_t max_message
    #: called (no lock held) when the stream starts filling or a frame is cut
    cdef public object kick
    #: called as ``wait(timeout)`` before adding to a stream over its limit
    cdef public object wait
    #: set when its client closed: publish and send raise Closed
    cdef public bint closed
    cdef dict valid
    cdef object last_subject   # the last subject that passed the check
    cdef object check_subject
    cdef object clock

    def __cinit__(self, check_subject, clock, Py_ssize_t frame_target=65536,
                  Py_ssize_t queued_limit=1 << 20, Py_ssize_t max_message=DEFAULT_MAX_MESSAGE):
        self.w = Writer(frame_target + 4096)
        self.frames = deque()
        self.frame_target = frame_target
        self.queued_limit = queued_limit
        self.max_message = max_message
        self.valid = {}
        self.check_subject = check_subject
        self.clock = clock
        self.kick = None
        self.wait = None

    cdef inline void _lock(self):
        while self.busy:
            with nogil:   # hand the GIL to the holder so that it can finish
                pass
        self.busy = True

    cdef inline void _unlock(self):
        self.busy = False

    cdef inline void _cut(self):
        cdef bytes frame = self.w._take()
        self.frames.append(frame)
        self.queued += PyBytes_GET_SIZE(frame)

    cdef int _admit(self, object timeout) except -1:
        if self.closed:
            raise Closed("client is closed")
        if self.queued >= self.queued_limit and self.wait is not None:
            self.wait(timeout)
        if self.w.length == 0:
            self.first = self.clock()
        return 0

    cdef int _after(self, bint started, bint cut) except -1:
        if (started or cut) and self.kick is not None:
            self.kick()
        return 0

    def publish(self, subject, payload, headers=None, timeout=None):
        """Buffer one PUB record (see ``Client.publish``)."""
        return self._one(RC_PUB, subject, payload, headers, timeout)

    def send(self, queue, payload, headers=None, timeout=None):
        """Buffer one SEND record (see ``Client.send``)."""
        return self._one(RC_SEND, queue, payload, headers, timeout)

    cdef inline int _check_subject(self, object subject) except -1:
        if subject is not self.last_subject:   # a loop publishes one subject: no lookup
            if type(subject) is not str or PyDict_GetItem(self.valid, subject) == NULL:
                self.check_subject(subject)
                if len(self.valid) < 4096:
                    self.valid[subject] = True
            self.last_subject = subject
        return 0

    cdef int _one(self, int cmd, object subject, object payload, object headers,
                  object timeout) except -1:
        cdef bint started, cut
        self._check_subject(subject)
        self._check_size(payload)
        self._admit(timeout)
        self._lock()
        try:
            started = self.w.length == 0
            self.w._stream(cmd, subject, payload, headers)
            cut = self.w.length >= <size_t>self.frame_target
            if cut:
                self._cut()
        finally:
            self._unlock()
        return self._after(started, cut)

    cdef int _check_size(self, object payload) except -1:
        cdef Py_ssize_t size = (PyBytes_GET_SIZE(payload) if type(payload) is bytes
                                else _payload_len(payload))
        if size > self.max_message:
            raise LimitExceeded(
                f"message of {size} bytes exceeds the broker's limit of {self.max_message}")
        return 0

    def publish_many(self, subject, payloads, headers=None, timeout=None):
        """Buffer one PUB record per payload under one subject: all of them,
        or none when one is refused."""
        self._many(RC_PUB, subject, payloads, headers, timeout)

    def send_many(self, queue, payloads, headers=None, timeout=None):
        """``publish_many`` for a queue: SEND records."""
        self._many(RC_SEND, queue, payloads, headers, timeout)

    cdef int _many(self, int cmd, object subject, object payloads, object headers,
                   object timeout) except -1:
        cdef bint started, cut = False
        cdef list items = payloads if type(payloads) is list else list(payloads)
        self.check_subject(subject)
        for payload in items:
            self._check_size(payload)
        self._admit(timeout)
        self._lock()
        try:
            started = self.w.length == 0
            for payload in items:
                self.w._stream(cmd, subject, payload, headers)
                if self.w.length >= <size_t>self.frame_target:
                    self._cut()
                    cut = True
        finally:
            self._unlock()
        return self._after(started, cut)

    def record(self, int cmd, *fields):
        """Buffer any ordered record; control records are not held to the limit."""
        return self._ordered(cmd, fields)

    def request(self, uint64_t rid, service, payload, headers, timeout, double grace,
                Py_ssize_t credit=-1, now=None):
        """Buffer a REQ record after the checks of ``request()``, in its order
        (closed, service name, timeout, payload size); returns the local
        deadline, ``grace`` after the request's own, and None. Native: one
        call per request where a pipelining client spent ~1 us in Python
        checks. With ``credit`` >= 0 (a driver that sends at once), a REQ
        written to an empty outbox whose frame fits in ``credit`` bytes is
        not buffered: that frame comes back in place of the None. ``now``:
        the caller's clock reading, just taken, used instead of reading the
        clock (once, for the deadline and the partial frame's age)."""
        cdef double seconds, t
        cdef bint started, cut
        cdef bint alone = credit >= 0 and self.w.length == 0 and not self.frames
        if self.closed:
            raise Closed("client is closed")
        self._check_subject(service)
        if ((type(timeout) is float or type(timeout) is int)
                and 0 <= timeout < _TIMEOUT_MAX):   # NaN fails too
            seconds = timeout
        else:   # None, infinity or more (no deadline), or a bad value: its error
            seconds = _check_timeout(timeout)
        self._check_size(payload)
        cdef double ms = seconds * 1000   # at most TIMEOUT_MAX s: fits the u64
        t = self.clock() if now is None else now
        if self.w.length == 0:
            self.first = t
        self._lock()
        try:   # as _ordered, with REQ's own writer instead of the format walk
            started = self.w.length == 0
            self.w._req(rid, service, <uint64_t>ms if ms >= 1 else 1, headers, payload)
            cut = self.w.length >= <size_t>self.frame_target
            if cut:
                self._cut()
        finally:
            self._unlock()
        self._after(started, cut)
        deadline = t + seconds + grace
        frame = None
        if alone:
            self._lock()
            try:   # nothing was queued before the REQ: it leaves first
                if not self.frames:
                    if 0 < self.w.length <= <size_t>credit:
                        frame = self.w._take()
                elif len(self.frames) == 1 and self.queued <= credit:   # cut at frame_target
                    frame = self.frames.popleft()
                    self.queued = 0
            finally:
                self._unlock()
        return deadline, frame

    cdef int _ordered(self, int cmd, tuple fields) except -1:
        """Buffer one record."""
        cdef bint started, cut
        if self.w.length == 0:
            self.first = self.clock()
        self._lock()
        try:
            started = self.w.length == 0
            self.w._record(cmd, fields)
            cut = self.w.length >= <size_t>self.frame_target
            if cut:
                self._cut()
        finally:
            self._unlock()
        return self._after(started, cut)

    def cut(self, double now=0.0, double linger=0.0, bint force=True):
        """Close the partial frame if ``force`` or it is ``linger`` old."""
        self._lock()
        try:
            if self.w.length and (force or now - self.first >= linger):
                self._cut()
        finally:
            self._unlock()

    def take_frames(self, Py_ssize_t credit):
        """Frames that fit in ``credit`` bytes, oldest first, as (list, bytes used)."""
        cdef list out = []
        cdef Py_ssize_t used = 0, n
        self._lock()
        try:
            while self.frames:
                n = PyBytes_GET_SIZE(self.frames[0])
                if used + n > credit:
                    break
                out.append(self.frames.popleft())
                used += n
            self.queued -= used
        finally:
            self._unlock()
        return out, used

    def clear(self):
        self._lock()
        try:
            self.w.clear()
            self.frames.clear()
            self.queued = 0
        finally:
            self._unlock()

    def can_publish(self):
        return self.queued < self.queued_limit

    @property
    def unsent(self):
        """Bytes not yet handed to the socket."""
        return <Py_ssize_t>self.w.length + self.queued

    @property
    def buffered(self):
        """Bytes in the partial frame."""
        return self.w.length



@cython.final
cdef class Reader:
    """Walks the records of one received frame, checking every length
    against the limits before building anything from it."""
    cdef Py_buffer view
    cdef bint has_view
    cdef const unsigned char *p
    cdef size_t n
    cdef size_t pos
    cdef size_t max_message
    cdef size_t max_subject
    cdef size_t max_record
    cdef dict subjects
    # current record body [b, e)
    cdef size_t b
    cdef size_t e
    # last decoded subject, to skip the decode for runs of one subject
    cdef object last_subject
    cdef const unsigned char *last_raw
    cdef size_t last_len
    # _next_pub: the PUBS record being read (pubs_read -1: none) and the
    # message it decoded, with where it came from (m_idx -1: a PUB record)
    cdef size_t pubs_at
    cdef Py_ssize_t pubs_read
    cdef Py_ssize_t resume_skip   # payloads of the PUBS record at pos applied before a block
    cdef object pubs_subject
    cdef object m_subject, m_headers, m_payload
    cdef size_t m_at
    cdef Py_ssize_t m_idx

    def __cinit__(self, frame, size_t max_message=DEFAULT_MAX_MESSAGE,
                  size_t max_subject=DEFAULT_MAX_SUBJECT, dict subjects=None):
        PyObject_GetBuffer(frame, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.p = <const unsigned char *>self.view.buf
        self.n = <size_t>self.view.len
        self.max_message = max_message
        self.max_subject = max_subject
        self.max_record = _max_record(max_message, max_subject)   # per frame: no Python call
        self.subjects = subjects if subjects is not None else {}
        self.pubs_read = -1

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    @property
    def offset(self):
        """Position of the next unread record."""
        return self.pos

    def seek(self, size_t pos):
        """Go back to a record start seen earlier (to retry a refused record)."""
        if pos > self.n:
            raise ValueError("offset past the end of the frame")
        self.pos = pos

    @property
    def size(self):
        return self.n

    def at_end(self):
        return self.pos >= self.n

    cpdef int peek(self) except -2:
        """Command byte of the next record, -1 at the end of the frame."""
        if self.pos >= self.n:
            return -1
        return self.p[self.pos]

    # _open and _uv run several times per record: their common case is inline
    # (one branch), the checks that fail and their messages are out of line.
    cdef inline int _open(self) except -1:
        """Validate the record at pos; set [b, e) to its body; returns its cmd."""
        cdef size_t avail = self.n - self.pos
        cdef uint32_t ln
        cdef int cmd
        if avail < <size_t>RC_REC_HDR:
            return self._bad_record(avail, 0)
        cmd = self.p[self.pos]
        ln = rc_u32le_get(self.p + self.pos + 1)
        if ln > self.max_record or ln > avail - RC_REC_HDR or not _KNOWN_CMD[cmd]:
            return self._bad_record(avail, ln)
        self.b = self.pos + RC_REC_HDR
        self.e = self.b + ln
        return cmd

    cdef int _bad_record(self, size_t avail, uint32_t ln) except -1:
        if avail < <size_t>RC_REC_HDR:
            raise ProtocolError(f"truncated record header at offset {self.pos}")
        if ln > self.max_record:
            raise LimitExceeded(f"record of {ln} bytes exceeds the limit of {self.max_record}")
        if ln > avail - RC_REC_HDR:
            raise ProtocolError(f"record at offset {self.pos} runs past the end of the frame")
        cmd = self.p[self.pos]
        raise UnknownCommand(f"unknown command 0x{cmd:02x} at offset {self.pos}")

    cdef inline uint64_t _uv(self) except? 0xFFFFFFFFFFFFFFFF:
        cdef uint64_t v = 0
        cdef size_t k = rc_uvarint_get(self.p + self.b, self.e - self.b, &v)
        if k == 0:
            return self._bad_varint()
        self.b += k
        return v

    cdef uint64_t _bad_varint(self) except? 0xFFFFFFFFFFFFFFFF:
        raise ProtocolError("bad or truncated varint")

    cdef const unsigned char *_span(self, size_t limit, size_t *out_len) except NULL:
        cdef uint64_t ln = self._uv()
        cdef const unsigned char *s
        if ln > limit:
            raise LimitExceeded(f"field of {ln} bytes exceeds the limit of {limit}")
        if ln > self.e - self.b:
            raise ProtocolError("string runs past the end of its record")
        s = self.p + self.b
        self.b += <size_t>ln
        out_len[0] = <size_t>ln
        return s

    cdef object _str(self, size_t limit):
        cdef size_t ln
        cdef const unsigned char *s = self._span(limit, &ln)
        try:
            return PyUnicode_DecodeUTF8(<const char *>s, <Py_ssize_t>ln, NULL)
        except UnicodeDecodeError:
            raise ProtocolError("string is not valid UTF-8") from None

    cdef object _subject(self):
        """Decode a subject, reusing the str of the previous or a known one."""
        cdef size_t ln
        cdef const unsigned char *s = self._span(self.max_subject, &ln)
        cdef PyObject *hit
        if self.last_subject is not None and ln == self.last_len \
                and memcmp(s, self.last_raw, ln) == 0:
            return self.last_subject
        try:
            subj = PyUnicode_DecodeUTF8(<const char *>s, <Py_ssize_t>ln, NULL)
        except UnicodeDecodeError:
            raise ProtocolError("subject is not valid UTF-8") from None
        hit = PyDict_GetItem(self.subjects, subj)
        if hit != NULL:
            subj = <object>hit
        else:
            if len(self.subjects) >= 65536:
                self.subjects.clear()
            PyDict_SetItem(self.subjects, subj, subj)
        self.last_subject = subj
        self.last_raw = s
        self.last_len = ln
        return subj

    cdef object _headers(self):
        cdef uint64_t count = self._uv()
        cdef uint64_t i
        cdef size_t start = self.b
        if count == 0:
            return None
        if count > (self.e - self.b) // 2:
            raise ProtocolError("header count runs past the end of its record")
        cdef dict h = {}
        for i in range(count):
            k = self._str(MAX_HEADERS)
            h[k] = self._str(MAX_HEADERS)
            if self.b - start > <size_t>MAX_HEADERS:
                raise LimitExceeded(f"headers exceed the limit of {MAX_HEADERS} bytes")
        return h

    cdef inline size_t _sized_span(self) except? 0:
        """Length of the next payload of a run (MSGS), checked; b at its bytes."""
        cdef size_t b = self.b
        cdef size_t ln
        if b < self.e and self.p[b] < 0x80:   # under 128 bytes: inline
            ln = self.p[b]
            if ln < self.e - b and ln <= self.max_message:
                self.b = b + 1
                return ln
        return self._sized_span_any()

    cdef size_t _sized_span_any(self) except? 0:
        cdef uint64_t ln = self._uv()
        if ln > self.max_message:
            raise LimitExceeded(f"message of {ln} bytes exceeds the limit of {self.max_message}")
        if ln > self.e - self.b:
            raise ProtocolError("payload runs past the end of its record")
        return <size_t>ln

    cdef object _sized(self):
        cdef size_t ln = self._sized_span()
        out = PyBytes_FromStringAndSize(<const char *>(self.p + self.b), <Py_ssize_t>ln)
        self.b += ln
        return out

    cdef object _payload(self):
        cdef size_t ln = self.e - self.b
        if ln > self.max_message:
            raise LimitExceeded(
                f"message of {ln} bytes exceeds the limit of {self.max_message}")
        out = PyBytes_FromStringAndSize(<const char *>(self.p + self.b), <Py_ssize_t>ln)
        self.b = self.e
        return out

    cdef object _fields(self, int cmd):
        """The record's ``(cmd, *fields)``, built in place (no list first:
        the broker decodes a REQ and a REP per request)."""
        cdef bytes f = _FMT_BY_BYTE[cmd]
        cdef Py_ssize_t i, nf = len(f)
        cdef tuple out = PyTuple_New(nf + 1)   # unset items are NULL: freed safely
        cdef uint64_t cnt
        _set_item(out, 0, cmd)
        for i in range(nf):
            c = f[i]
            if c == 117:
                x = self._uv()
            elif c == 111:   # absent when an older peer wrote the record
                x = self._uv() if self.b != self.e else 0
            elif c == 115:
                x = self._str(self.max_message)
            elif c == 104:
                x = self._headers()
            elif c == 112:
                x = self._payload()
            elif c == 114:
                x = [self._sized()]
                while self.b != self.e:
                    x.append(self._sized())
            else:
                cnt = self._uv()
                if cnt > self.e - self.b:
                    raise ProtocolError("list count runs past the end of its record")
                x = [self._str(self.max_subject) for _ in range(cnt)]
            _set_item(out, i + 1, x)
        if self.b != self.e:
            raise ProtocolError(f"record 0x{cmd:02x} has {self.e - self.b} unexpected trailing bytes")
        return out

    def next(self):
        """The next record as ``(cmd, *fields)``, or None at the end."""
        if self.pos >= self.n:
            return None
        cdef int cmd = self._open()
        rec = self._fields(cmd)
        self.pos = self.e
        return rec

    def run(self, int cmd):
        """The next records while their command is ``cmd``, as ``next()``
        returns them: one call for a run of requests or of replies. A record
        that does not decode ends the run; the next call raises its error."""
        cdef list out = []
        while self.pos < self.n and self.p[self.pos] == cmd:
            try:
                rec = self._fields(self._open())
            except RingcastError:
                if out:
                    break   # apply what came before it first, as next() would
                raise
            out.append(rec)
            self.pos = self.e
        return out

    def sends(self):
        """Decode a run of SEND records to one queue that carry no headers
        (the common case of a producer loop): ``(queue, [payload, ...])``.
        Returns ``(None, [])`` and reads nothing when the next record is not
        such a SEND; records with headers take the one-by-one path."""
        cdef list payloads = []
        cdef object queue = None
        cdef const unsigned char *name = NULL
        cdef const unsigned char *s
        cdef size_t name_len = 0, ln, at
        while self.pos < self.n and self.p[self.pos] == RC_SEND:
            at = self.pos
            self._open()
            if queue is None:
                queue = self._subject()
                name, name_len = self.last_raw, self.last_len
            else:
                s = self._span(self.max_subject, &ln)
                if ln != name_len or memcmp(s, name, ln) != 0:
                    self.pos = at
                    break
            if self._uv() != 0:   # headers: not for this path
                self.pos = at
                break
            payloads.append(self._payload())
            self.pos = self.e
        return (queue if payloads else None), payloads

    def skip(self, Py_ssize_t count):
        """Step over ``count`` records (to retry from the first one refused)."""
        cdef Py_ssize_t i
        for i in range(count):
            if self.pos >= self.n:
                raise ProtocolError("skipped past the end of the frame")
            self._open()
            self.pos = self.e

    def acks(self):
        """Decode consecutive ACK records: ``{handle: [tag, ...]}`` in the
        order they came, so a run of acks is settled in one call per handle."""
        cdef dict out = {}
        cdef uint64_t handle, tag
        cdef PyObject *tags
        while self.pos < self.n and self.p[self.pos] == RC_ACK:
            self._open()
            handle = self._uv()
            tag = self._uv()
            if self.b != self.e:
                raise ProtocolError(f"record 0x{RC_ACK:02x} has {self.e - self.b} unexpected "
                                    f"trailing bytes")
            self.pos = self.e
            tags = PyDict_GetItem(out, handle)
            if tags == NULL:
                out[handle] = [tag]
            else:
                (<list>tags).append(tag)
        return out

    cdef bint _next_pub(self) except -1:
        """Decode the next message of a PUB or PUBS record (m_subject,
        m_headers, m_payload, and m_at/m_idx to come back to it); False at
        the first other record or the end of the frame."""
        cdef size_t ln
        cdef Py_ssize_t i
        while True:
            if self.pubs_read >= 0:
                if self.b != self.e:
                    self.m_at, self.m_idx = self.pubs_at, self.pubs_read
                    self.pubs_read += 1
                    self.m_subject, self.m_headers = self.pubs_subject, None
                    self.m_payload = self._sized()
                    return True
                self.pubs_read = -1
                self.pos = self.e
            if self.pos >= self.n:
                return False
            if self.p[self.pos] == RC_PUB:
                self.m_at, self.m_idx = self.pos, -1
                self._open()
                self.m_subject = self._subject()
                self.m_headers = self._headers()
                self.m_payload = self._payload()
                self.pos = self.e
                return True
            if self.p[self.pos] != RC_PUBS:
                return False
            self.pubs_at = self.pos
            self._open()
            self.pubs_subject = self._subject()
            self.pubs_read = 0
            if not self.b < self.e:
                raise ProtocolError("a PUBS record holds no payload")
            for i in range(self.resume_skip):   # applied before a full block ring
                ln = self._sized_span()
                self.b += ln
            self.pubs_read = self.resume_skip
            self.resume_skip = 0

    cdef inline void _back_to(self, size_t at, Py_ssize_t idx):
        """Leave the message at (at, idx) unread: the next route starts there."""
        self.pos = at
        self.resume_skip = idx if idx > 0 else 0
        self.pubs_read = -1

    def route(self, publish, dict counts=None):
        """Publish the messages of consecutive PUB and PUBS records through
        ``publish``: a native CoreRouter (called without a Python call per
        message) or any ``publish(subject, payload, headers)`` callable.
        Stops at the first other record, the end of the frame, or when
        publishing returns -1 (a full ``block`` ring; that message and the
        rest stay unread, even inside a PUBS record). Returns how many were
        published. ``counts`` accumulates messages per subject."""
        cdef Py_ssize_t done = 0
        cdef int rc
        if isinstance(publish, CoreRouter):
            return self._route_runs(<CoreRouter>publish, counts)
        while self._next_pub():
            rc = publish(self.m_subject, self.m_payload, self.m_headers)
            if rc == -1:
                self._back_to(self.m_at, self.m_idx)
                break
            done += 1
            _bump_taken(counts, self.m_subject, 1)
        return done

    cdef Py_ssize_t _route_runs(self, CoreRouter core, dict counts) except -1:
        """``route`` into a native router: consecutive header-less messages of
        one subject (a publisher's loop) go in as one ``publish_many`` -- one
        match, one room check per buffer -- of up to _ROUTE_RUN messages."""
        cdef Py_ssize_t done = 0, k, taken
        cdef size_t starts[_ROUTE_RUN]        # where each message of the run is:
        cdef Py_ssize_t idxs[_ROUTE_RUN]      # its record, its index in a PUBS
        cdef list payloads = []
        cdef object subject, run_subject = None
        cdef bint more
        cdef int rc
        while True:
            try:
                more = self._next_pub()
            except BaseException:
                if payloads:   # the messages before a bad record are applied, as one by one
                    _bump_taken(counts, run_subject,
                                core._publish_many(run_subject, payloads, None))
                raise
            subject = self.m_subject if more else None
            if payloads and (not more or subject is not run_subject
                             or self.m_headers is not None or len(payloads) == _ROUTE_RUN):
                k = len(payloads)
                taken = core._publish_many(run_subject, payloads, None)
                done += taken
                _bump_taken(counts, run_subject, taken)
                if taken < k:   # a full block ring: the rest stays unread
                    self._back_to(starts[taken], idxs[taken])
                    return done
                payloads = []
            if not more:
                return done
            if self.m_headers is None:
                starts[len(payloads)] = self.m_at
                idxs[len(payloads)] = self.m_idx
                payloads.append(self.m_payload)
                run_subject = subject
            else:
                rc = core._publish(subject, self.m_payload, self.m_headers)
                if rc == -1:
                    self._back_to(self.m_at, self.m_idx)
                    return done
                done += 1
                _bump_taken(counts, subject, 1)

    def events(self, dict owners=None, dict requests=None, list settles=None,
               dict inline=None):
        """Decode a broker frame for a client: a list of tuples ``(cmd, ...)``.

        Deliveries become Message objects, and consecutive ones for one
        handle are grouped as ``(MSG|QMSG, handle, [Message, ...])``; a
        request for a responder is ``(RQST, handle, Message, timeout_ms)``.
        ``owners`` maps handle -> the object that settles its messages.
        With ``requests`` (rid -> ``(service, settle, deadline)``) and
        ``settles``, a REPLY is no event: its request is popped and
        ``(settle, Message)`` appended to ``settles`` (a reply to a request
        not there, given up on, is dropped): a pipelined requester's hot
        path, without a tuple and a Python pass per reply. A REPLYERR is
        settled alike, ``(settle, error)``, so that answers settle in the
        order the broker wrote them.

        ``inline`` maps a responder's handle -> the handler its client runs on
        the I/O thread: a request for it with a live owner is no event, its
        handler runs right here and the reply is written (``Settler.answer``),
        the fewest frames between a request's arrival and its reply. It runs
        before the records after it in the frame are applied: as if they had
        come in the next frame, which the broker could as well have sent.
        """
        cdef list out = []
        cdef object rid, headers, payload
        cdef tuple entry
        if requests is not None and settles is None:
            raise TypeError("events() takes settles with requests")
        cdef list batch = None
        cdef Deliveries run = None
        cdef int cmd, batch_cmd = -1
        cdef uint64_t handle, batch_handle = 0, flags, timeout_ms = 0, seq
        cdef size_t k, sn
        cdef Message m
        cdef PyObject *o
        cdef PyObject *f
        cdef object handler
        while self.pos < self.n:
            cmd = self._open()
            if cmd == RC_MSG or cmd == RC_MSGS:
                # pub/sub deliveries stay encoded until the application takes them
                batch = None
                handle = self._uv()
                seq = self._uv()
                k = 1
                if cmd == RC_MSGS:   # count its payloads (checking their bounds)
                    self._span(self.max_subject, &sn)
                    self.b += self._sized_span()
                    while self.b != self.e:
                        self.b += self._sized_span()
                        k += 1
                if run is None or batch_handle != handle:
                    run = Deliveries.__new__(Deliveries)
                    run.r = Reader(<object>self.view.obj, self.max_message, self.max_subject,
                                   self.subjects)
                    run.r.pos = self.pos
                    run.first_seq = seq
                    batch_handle = handle
                    out.append((RC_MSG, handle, run))
                run.count += k
                run.last_seq = seq + k - 1
                run.end = self.e
                self.pos = self.e
            elif cmd == RC_QMSG or cmd == RC_RQST:
                run = None
                m = Message.__new__(Message)
                handle = self._uv()
                if cmd == RC_QMSG:
                    m._tag = self._uv()
                    flags = self._uv()
                    m.redelivered = (flags & 1) != 0
                    m.delivery_count = <unsigned int>self._uv()
                else:
                    m._tag = self._uv()
                    timeout_ms = self._uv()
                    m.delivery_count = 1
                m.subject = self._subject()
                m.headers = self._headers()
                m.payload = self._payload()
                o = NULL
                if owners is not None:
                    o = PyDict_GetItem(owners, handle)
                    if o != NULL:
                        m.owner = <object>o
                self.pos = self.e
                if cmd == RC_RQST:
                    batch = None
                    if inline is not None and o != NULL:
                        f = PyDict_GetItem(inline, handle)
                        if f != NULL and isinstance(<object>o, Settler) and not (
                                <Settler>o).handle.closed:
                            handler = <object>f   # held: the handler may close its handle
                            (<Settler>m.owner)._answer(m, handler)
                            continue
                    out.append((RC_RQST, handle, m, timeout_ms))
                    continue
                if batch is None or batch_handle != handle:
                    batch = []
                    batch_cmd = cmd
                    batch_handle = handle
                    out.append((cmd, handle, batch))
                batch.append(m)
            elif cmd == RC_REPLY and requests is not None:
                # it ends a run as an event would: a MSG run is decoded later
                # from its bytes, which must be MSG and MSGS records only
                batch = None
                run = None
                rid = self._uv()
                headers = self._headers()
                payload = self._payload()   # the rest of the record
                self.pos = self.e
                entry = _pop_request(requests, rid)
                if entry is not None:
                    settles.append((entry[1], _reply_message(entry, headers, payload)))
            elif cmd == RC_REPLYERR and requests is not None:
                batch = None
                run = None
                rid = self._uv()
                code = self._uv()
                text = self._str(self.max_message)
                if self.b != self.e:
                    raise ProtocolError(
                        f"record 0x{cmd:02x} has {self.e - self.b} unexpected trailing bytes")
                self.pos = self.e
                entry = _pop_request(requests, rid)
                if entry is not None:
                    settles.append((entry[1], _error_from_code(code, text)))
            else:
                batch = None
                run = None
                out.append(self._fields(cmd))
                self.pos = self.e
        return out

    def answer(self, dict requests not None, rid):
        """A waiting requester's fast path: when the frame holds the answer
        to ``rid`` (REPLY or REPLYERR) and nothing but PCREDIT besides, pops
        ``rid`` from ``requests`` (as ``events`` would) and returns
        ``(Message or error, credit returned)``. Anything else -- another
        record, a second answer, ``rid`` given up on, a record that does
        not decode -- returns None with nothing changed: ``events`` then
        applies the frame (and reports its errors) the generic way."""
        cdef uint64_t want = rid   # ``rid`` itself is the key: no int made for it
        cdef uint64_t credit = 0
        cdef int cmd, got = -1
        cdef uint64_t code = 0
        cdef object headers = None, payload = None, text = None
        try:
            while self.pos < self.n:
                cmd = self._open()
                if cmd == RC_PCREDIT:
                    credit += self._uv()
                elif (cmd == RC_REPLY or cmd == RC_REPLYERR) and got < 0 and self._uv() == want:
                    got = cmd
                    if cmd == RC_REPLY:
                        headers = self._headers()
                        payload = self._payload()
                    else:
                        code = self._uv()
                        text = self._str(self.max_message)
                else:
                    return None
                if self.b != self.e:
                    return None
                self.pos = self.e
        except RingcastError:
            return None
        if got < 0:
            return None
        cdef tuple entry = _pop_request(requests, rid)
        if entry is None:
            return None
        if got == RC_REPLYERR:
            return _error_from_code(code, text), credit
        return _reply_message(entry, headers, payload), credit


@cython.final
cdef class Deliveries:
    """A run of MSG and MSGS records for one subscription in one received frame,
    decoded only when the application takes them: the client's I/O thread
    just finds the run's bounds, and ``take_payloads`` builds no Message."""
    cdef Reader r
    #: records not taken yet
    cdef readonly Py_ssize_t count
    cdef readonly uint64_t first_seq
    cdef readonly uint64_t last_seq
    cdef size_t end     # where the run's last record ends in the frame
    # inside a MSGS record: r.b is at the next payload's length
    cdef bint in_msgs
    cdef object msgs_subject
    cdef uint64_t msgs_seq   # the next payload's sequence number

    @property
    def nbytes(self):
        """Encoded bytes of the records not taken yet."""
        if not self.count:
            return 0
        return self.end - (self.r.b if self.in_msgs else self.r.pos)

    cdef inline bint _next(self) except -1:
        """Move to the next message: True when it is a payload of a MSGS
        record, False when it is a MSG record (r.b at its seq)."""
        cdef Reader r = self.r
        if self.in_msgs:
            if r.b != r.e:
                return True
            r.pos = r.e
            self.in_msgs = False
        if r._open() == RC_MSGS:
            r._uv()   # handle
            self.msgs_seq = r._uv()
            self.msgs_subject = r._subject()
            self.in_msgs = True
            return True
        r._uv()   # handle
        return False

    def take(self, Py_ssize_t max_count=1 << 30):
        """Up to ``max_count`` Messages, oldest first."""
        cdef Reader r = self.r
        cdef Py_ssize_t n = min(max_count, self.count), i
        cdef list out = [None] * n
        cdef Message m
        # Each Message allocated counts towards a young-generation collection
        # (one per ~700), and each collection walks the lists being filled:
        # a batch pauses the collector and lets it run at most once after.
        cdef bint collecting = _gc_isenabled()
        if collecting:
            _gc_disable()
        try:
            for i in range(n):
                m = Message.__new__(Message)   # headers None
                m.delivery_count = 1
                if self._next():
                    m.seq = self.msgs_seq
                    self.msgs_seq += 1
                    m.subject = self.msgs_subject
                    m.payload = r._sized()
                else:
                    m.seq = r._uv()
                    m.subject = r._subject()
                    m.headers = r._headers()
                    m.payload = r._payload()
                    r.pos = r.e
                self.count -= 1
                out[i] = untracked(m)
        finally:
            if collecting:
                _gc_enable()
        return out

    def take_payloads(self, Py_ssize_t max_count=1 << 30):
        """Up to ``max_count`` payloads, oldest first, without Message objects."""
        cdef Reader r = self.r
        cdef Py_ssize_t n = min(max_count, self.count), i
        cdef size_t ln
        cdef list out = [None] * n
        for i in range(n):
            if self._next():
                self.msgs_seq += 1
                out[i] = r._sized()
            else:
                r._uv()                       # seq
                r._span(r.max_subject, &ln)   # subject
                r._headers()
                out[i] = r._payload()
                r.pos = r.e
            self.count -= 1
        return out


@cython.final
cdef class RequestPath:
    """The broker's native path for its commonest requests (native core
    only): REQ records for a service whose one responder is remote and has
    room, and REP records answering remote requesters. Both stop, leaving
    it unread, at the first record they do not take; the broker's Python
    path (``_on_reqs``, ``_on_reps``) handles that one and every other case
    the same way, so this path only has to be right for the case it takes."""

    cdef object broker, remote, wire
    # the one session a frame's runs wrote to (requests or answers), while
    # frame() runs; wrote_many: more than one, or others may have been
    # written to on the way; sole_written: what sole() hands out
    cdef object wrote, sole_written
    cdef bint wrote_many
    cdef size_t split
    cdef double max_timeout_ms

    def __cinit__(self, broker, remote, wire, size_t split, double max_timeout_ms):
        self.broker = broker
        self.remote = remote   # the broker's remote responder class
        self.wire = wire       # ... and its remote request class
        self.split = split
        self.max_timeout_ms = max_timeout_ms

    def frame(self, frame, session):
        """A frame of ``session`` (none of its frames parked), read here as
        long as its records are requests and replies this path takes: the
        commonest frame of request traffic costs the broker one call.
        Returns None when that was all of it (an ordered frame's credit is
        then counted, as ``_on_frame`` would); else the Reader, at the first
        record left for the broker's Python path. ``sole()`` then tells the
        one session the frame wrote to, if it wrote to one only."""
        broker = self.broker
        self.wrote = self.sole_written = None
        self.wrote_many = False
        cdef Reader r = Reader(frame, broker.max_message, broker.max_subject, broker._subjects)
        cdef int first = r.peek()
        cdef int cmd = first
        if cmd != RC_REQ and cmd != RC_REP:
            return r
        broker._eager = True   # the answer or the request leaves at once (_step)
        while True:
            if cmd == -1 or not session.alive:   # the rest of a dropped session's is void
                break
            if cmd == RC_REQ:
                # an ordered record after an urgent first one is the Python
                # path's protocol error to raise
                if first != RC_REQ or not self._requests(r, session):
                    return self._left(r)
            elif cmd == RC_REP:
                if not self._replies(r, session):
                    return self._left(r)
            else:
                return self._left(r)
            cmd = r.peek()
        if first == RC_REQ:   # an ordered frame: its bytes are credit to give back
            if not session.credit_due:
                session.credit_since = broker._now
            session.credit_due += r.n
        if not self.wrote_many:
            self.sole_written = self.wrote
        self.wrote = None
        return None

    cdef inline Reader _left(self, Reader r):
        self.wrote = None   # the Python path may write anywhere: no sole session
        return r

    def sole(self):
        """The one session the last ``frame()`` wrote to, when it took all
        of the frame and wrote to one session only (a refill, a flush or an
        expiry on the way may write to others: then None); once."""
        session, self.sole_written = self.sole_written, None
        return session

    cdef inline void _note_wrote(self, session):
        if self.wrote is None:
            self.wrote = session
        elif self.wrote is not session:
            self.wrote_many = True

    def requests(self, Reader r not None, session):
        """REQ records of ``session`` while each goes straight to a lone
        remote responder with room, as ``_offer`` would write it; returns
        how many."""
        try:
            return self._requests(r, session)
        finally:
            self.wrote = None   # for frame() only: no session kept alive here

    cdef Py_ssize_t _requests(self, Reader r, session) except -1:
        broker = self.broker
        cdef double now = broker._now, deadline, ms
        cdef dict services = broker.router._services
        cdef dict timeouts = broker._timeouts
        cdef set dirty = broker._dirty
        cdef Py_ssize_t done = 0, live = 0, queued = 0, room = 0
        cdef size_t at
        cdef uint64_t rid, timeout_ms, hid = 0
        cdef PyObject *hit
        cdef dict asked = None
        cdef Writer out = None
        cdef bint marked = False
        last = rs = tags = handed = None   # the last responder and its fixed fields
        try:
            while r.pos < r.n and r.p[r.pos] == RC_REQ:
                at = r.pos
                try:
                    r._open()
                    rid = r._uv()
                    name = r._subject()
                    timeout_ms = r._uv()
                    headers = r._headers()
                    payload = r._payload()   # the rest of the record
                except RingcastError:   # the Python path reports it
                    r.pos = at
                    break
                hit = PyDict_GetItem(services, name)
                if hit == NULL:
                    r.pos = at
                    break
                service = <object>hit
                responders = service.responders
                if len(responders) != 1 or service.backlog:
                    r.pos = at
                    break
                responder = responders[0]
                if responder is not last:
                    # what follows is fixed while it is open, and only the loop
                    # closes it or ends its session: a flush here (then looked at again)
                    if type(responder) is not self.remote or responder.closed \
                            or not responder.session.alive:
                        r.pos = at
                        break
                    last, rs, asked = responder, responder.session, responder.asked
                    hid, tags, out = responder.hid, rs.tags, rs.out
                    handed = responder.handed   # room other threads' hand-overs took
                    room = min(responder.concurrency, PY_SSIZE_T_MAX)
                    marked = False   # rs in dirty
                deadline = now + <double>timeout_ms / 1000.0
                ms = (deadline - now) * 1000
                if len(asked) + len(handed) >= room or not 1 <= ms <= self.max_timeout_ms:
                    r.pos = at   # full; or due already, or clamped: _offer's cases
                    break
                r.pos = r.e
                pending = self.wire(broker, service, deadline, session, rid)
                live += 1
                service.requests += 1
                tag = next(tags)
                asked[tag] = pending
                out._rqst(hid, tag, <uint64_t>ms, name, headers, payload)
                if out.length >= self.split and not rs.frames:
                    broker._live += live   # a flush may drop a session: counts first
                    broker._queued += queued
                    live = queued = 0
                    broker._flush_out(rs)   # a drop in it may answer others' requests
                    self.wrote_many = True
                    last = None
                elif not marked:
                    dirty.add(rs)
                    marked = True
                    self._note_wrote(rs)
                if not pending.settled:   # looked up now: a drop in the flush may rebuild it
                    hit = PyDict_GetItem(timeouts, timeout_ms)
                    if hit != NULL:
                        (<object>hit).append(pending)
                    else:
                        broker._deadline_queue(timeout_ms, deadline).append(pending)
                    queued += 1
                done += 1
                if last is None and not session.alive:
                    break
        finally:
            broker._live += live
            broker._queued += queued
        return done

    def replies(self, Reader r not None, session):
        """REP records of ``session`` while each answers a remote request
        still waiting, as ``_respond`` would write it; returns how many."""
        try:
            return self._replies(r, session)
        finally:
            self.wrote = None

    cdef Py_ssize_t _replies(self, Reader r, session) except -1:
        broker = self.broker
        cdef double now = broker._now
        cdef double answer_time = broker._answer_time
        cdef dict services = session.services
        cdef set dirty = broker._dirty
        cdef Py_ssize_t done = 0, owed = 0   # owed: answers not in broker._live yet
        cdef size_t at
        cdef uint64_t hid, tag
        cdef double born
        cdef PyObject *hit
        cdef dict asked = None
        cdef Writer out = None
        last = None   # the last responder's handle, as a key
        last_rs = None   # ... and the last requester's session
        try:
            while r.pos < r.n and r.p[r.pos] == RC_REP:
                at = r.pos
                try:
                    r._open()
                    hid = r._uv()
                    tag = r._uv()
                    headers = r._headers()
                    payload = r._payload()   # the rest of the record
                except RingcastError:   # the Python path reports it
                    r.pos = at
                    break
                if last is None or hid != <uint64_t>last:   # runs answer one handle
                    hit = PyDict_GetItem(services, hid)
                    if hit == NULL:
                        r.pos = at
                        break
                    responder = <object>hit
                    # it closes between runs only, or with its session (which ends the run)
                    asked, service = responder.asked, responder.service
                    last = hid
                hit = PyDict_GetItem(asked, tag)
                if hit == NULL or type(<object>hit) is not self.wire or (<object>hit).settled:
                    r.pos = at   # not a remote request still waiting (a late reply...)
                    break
                pending = <object>hit
                r.pos = r.e
                del asked[tag]
                pending.settled = True
                born = pending.born
                answer_time += (now - born - answer_time) / 8
                done += 1
                owed += 1
                rs = pending.session
                if rs is not last_rs:   # only the loop ends a session: a refill here
                    last_rs = rs
                    out = rs.out if rs.alive else None
                    if out is not None:
                        dirty.add(rs)
                        self._note_wrote(rs)
                if out is not None:
                    out._reply(pending.rid, headers, payload)
                if service.backlog:   # the freed slot goes to a waiting request
                    broker._answer_time = answer_time   # what a refill may read
                    broker._live -= owed
                    broker._answered = now
                    owed = 0
                    responder.refill()   # writes the sender an RQST, others expiries
                    self.wrote_many = True
                    last_rs = None
                    if not session.alive:
                        break
        finally:
            if done:
                broker._answer_time = answer_time
                broker._live -= owed
                broker._answered = now
        return done


cdef inline void _bump_taken(dict counts, object key, Py_ssize_t n):
    if counts is not None and n:
        _bump(counts, key, n)


cdef inline void _bump(dict counts, object key, Py_ssize_t n):
    cdef PyObject *c = PyDict_GetItem(counts, key)
    if c == NULL:
        counts[key] = n
    else:
        counts[key] = <object>c + n


def settle_future(fut, result):
    """``fut.set_result(result)``, unless it is done (its awaiter was
    cancelled): bound with ``functools.partial``, an asyncio request's
    settle with no Python frame per reply."""
    if not fut.done():
        fut.set_result(result)


def message(str subject, payload, headers=None, uint64_t seq=0, bint redelivered=False,
            unsigned int delivery_count=1, owner=None, uint64_t tag=0):
    """Build a Message with its settlement owner (used by client code paths
    that do not come from a frame, such as replies)."""
    cdef Message m = Message.__new__(Message)
    m.subject = subject
    m.payload = payload
    m.headers = headers
    m.seq = seq
    m.redelivered = redelivered
    m.delivery_count = delivery_count
    m.owner = owner
    m._tag = tag
    return m
