# cython: language_level=3
"""Calls straight into libzmq for the hot loops: int socket options, and
the non-blocking reads and writes of two-part ROUTER messages.

pyzmq's ``Socket.get`` builds a ``SocketOption`` enum on every call (~0.9 µs,
more than libzmq's own work), and its ``send``/``recv`` parse keyword
arguments, check the socket and release the GIL around a call that cannot
block. The broker and both clients do these once or more per frame.
``_zsock`` finds the functions of the libzmq pyzmq's extension is linked to
and binds them here, all or none; where it cannot (pyzmq's libzmq linked in
statically, a platform whose loader does not search a module's
dependencies), ``_zsock`` uses pyzmq's own calls instead, and nothing here is
called. A closed socket's address is 0, which libzmq answers with ENOTSOCK,
as pyzmq does.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport Py_TYPE, descrgetfunc
from libc.errno cimport EAGAIN, EINTR, errno

cdef struct zmq_msg:   # zmq_msg_t: 64 opaque bytes, pointer-aligned
    void *opaque[8]

ctypedef int (*getsockopt_t)(void *, int, void *, size_t *) noexcept nogil
ctypedef int (*send_t)(void *, const void *, size_t, int) noexcept nogil
ctypedef int (*msg_init_t)(zmq_msg *) noexcept nogil
ctypedef int (*msg_recv_t)(zmq_msg *, void *, int) noexcept nogil
ctypedef void *(*msg_data_t)(zmq_msg *) noexcept nogil
ctypedef size_t (*msg_size_t)(zmq_msg *) noexcept nogil
ctypedef int (*msg_more_t)(const zmq_msg *) noexcept nogil

cdef getsockopt_t _getsockopt = NULL
cdef send_t _send = NULL
cdef msg_init_t _msg_init = NULL
cdef msg_recv_t _msg_recv = NULL
cdef msg_data_t _msg_data = NULL
cdef msg_size_t _msg_size = NULL
cdef msg_more_t _msg_more = NULL
cdef msg_init_t _msg_close = NULL
cdef object _error = None
cdef object _underlying = None   # the socket type's descriptor of its handle's address
cdef descrgetfunc _get_underlying = NULL

cdef enum:
    _NOBLOCK = 1   # ZMQ_DONTWAIT
    _SNDMORE = 2
    _RCVMORE = 13   # ZMQ_RCVMORE


def bind(dict functions, error, underlying):
    """Call the libzmq functions at the addresses in ``functions`` (by
    name: zmq_getsockopt, zmq_send, zmq_msg_init, zmq_msg_recv, zmq_msg_data,
    zmq_msg_size, zmq_msg_more, zmq_msg_close); a failure raises
    ``error(errno)``. ``underlying``: the descriptor of pyzmq's
    ``Socket.underlying`` (read through it, not through pyzmq's
    ``__getattr__`` hook, ~350 instructions a call)."""
    global _getsockopt, _send, _msg_init, _msg_recv, _msg_data, _msg_size, _msg_more
    global _msg_close, _error, _underlying, _get_underlying
    _getsockopt = <getsockopt_t>_address(functions, "zmq_getsockopt")
    _send = <send_t>_address(functions, "zmq_send")
    _msg_init = <msg_init_t>_address(functions, "zmq_msg_init")
    _msg_recv = <msg_recv_t>_address(functions, "zmq_msg_recv")
    _msg_data = <msg_data_t>_address(functions, "zmq_msg_data")
    _msg_size = <msg_size_t>_address(functions, "zmq_msg_size")
    _msg_more = <msg_more_t>_address(functions, "zmq_msg_more")
    _msg_close = <msg_init_t>_address(functions, "zmq_msg_close")
    _error = error
    _get_underlying = Py_TYPE(underlying).tp_descr_get
    if _get_underlying == NULL:
        raise TypeError(f"not a descriptor: {underlying!r}")
    _underlying = underlying


cdef void *_address(dict functions, str name) except? NULL:
    cdef size_t address = functions[name]
    return <void *>address


cdef inline void *_handle(sock) except? NULL:
    """The socket's libzmq handle (0 once closed). The descriptor checks that
    ``sock`` is a pyzmq socket."""
    if _get_underlying == NULL:
        raise RuntimeError("ringcast._zsockopt: bind() was not called")
    cdef size_t handle = _get_underlying(_underlying, sock, <object>NULL)
    return <void *>handle


def get_int(sock, int option):
    """An int-valued option of ``sock`` (EVENTS, RCVMORE; not a bytes or
    int64 one)."""
    return _get_int(_handle(sock), option)


cdef int _get_int(void *handle, int option) except? -1:
    cdef int value = 0
    cdef size_t size = sizeof(int)
    while _getsockopt(handle, option, &value, &size) != 0:
        if errno != EINTR:
            raise _error(errno)
        size = sizeof(int)
    return value


def send_parts(sock, bytes first not None, bytes second not None):
    """Send [first, second] without blocking. Returns 0, or the errno of a
    first part the socket did not take (EAGAIN: no room; EHOSTUNREACH: a
    ROUTER_MANDATORY peer that is gone); nothing was sent then. A ROUTER
    takes the later parts of a message once it took the first."""
    cdef void *handle = _handle(sock)
    while _send(handle, PyBytes_AS_STRING(first), <size_t>PyBytes_GET_SIZE(first),
                _NOBLOCK | _SNDMORE) < 0:
        if errno != EINTR:
            return errno
    while _send(handle, PyBytes_AS_STRING(second), <size_t>PyBytes_GET_SIZE(second),
                _NOBLOCK) < 0:
        if errno != EINTR:
            raise _error(errno)
    return 0


cdef object _recv_part(void *handle, int *more):
    """One part, or None when none is waiting (EAGAIN)."""
    cdef zmq_msg msg
    cdef int rc
    _msg_init(&msg)
    cdef int err
    while True:
        rc = _msg_recv(&msg, handle, _NOBLOCK)
        if rc >= 0:
            break
        err = errno   # before the close, which may set it
        if err == EINTR:
            continue
        _msg_close(&msg)
        if err == EAGAIN:
            return None
        raise _error(err)
    try:
        more[0] = _msg_more(&msg)
        return PyBytes_FromStringAndSize(<char *>_msg_data(&msg), <Py_ssize_t>_msg_size(&msg))
    finally:
        _msg_close(&msg)


def recv_message(sock, first=None):
    """The next message of a ROUTER without blocking: ``(identity, frame,
    parts)``, or None when none is waiting. ``first``: its identity part,
    received already. Parts after the frame are read and dropped (``parts``
    counts all, identity included: more than 2 is the peer's protocol
    error); a message of its identity alone has ``frame`` None."""
    cdef void *handle = _handle(sock)
    cdef int more = 0
    cdef Py_ssize_t parts = 1
    if first is None:
        first = _recv_part(handle, &more)
        if first is None:
            return None
    else:
        more = _get_int(handle, _RCVMORE)
    frame = _recv_part(handle, &more) if more else None
    if frame is not None:
        parts = 2
        while more and _recv_part(handle, &more) is not None:
            parts += 1
    return first, frame, parts
