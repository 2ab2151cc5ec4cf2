# cython: language_level=3
"""Integer socket options read straight from libzmq, for the hot loops.

pyzmq's ``Socket.get`` builds a ``SocketOption`` enum on every call (~0.9 µs,
more than libzmq's own work), and the broker and both clients ask EVENTS and
RCVMORE once or more per frame. ``_zsock`` finds the ``zmq_getsockopt`` of
the libzmq pyzmq's extension is linked to and binds it here; where it cannot
(pyzmq's libzmq linked in statically, a platform whose loader does not search
a module's dependencies), every call goes to pyzmq's ``get`` instead.
"""

from libc.errno cimport EINTR, errno

ctypedef int (*getsockopt_t)(void *, int, void *, size_t *) noexcept nogil

cdef getsockopt_t _getsockopt = NULL
cdef object _fallback = None
cdef object _error = None


def bind(size_t address, fallback, error):
    """Read options with the ``zmq_getsockopt`` at ``address``, or with
    ``fallback(sock, option)`` when it is 0; a failure raises ``error(errno)``."""
    global _getsockopt, _fallback, _error
    _getsockopt = <getsockopt_t><void *>address
    _fallback = fallback
    _error = error


def bound():
    """True when options are read from libzmq directly."""
    return _getsockopt != NULL


def get_int(sock, int option):
    """An int-valued option of ``sock`` (EVENTS, RCVMORE; not a bytes or
    int64 one). A closed socket's address is 0, which libzmq answers with
    ENOTSOCK, as pyzmq does."""
    cdef int value = 0
    cdef size_t size = sizeof(int)
    cdef size_t handle
    if _getsockopt == NULL:
        return _fallback(sock, option)
    handle = sock.underlying
    while _getsockopt(<void *>handle, option, &value, &size) != 0:
        if errno != EINTR:
            raise _error(errno)
        size = sizeof(int)
    return value
