"""The pyzmq calls on ringcast's hot paths, shared by the broker and both
clients: the backend's own send (pyzmq's wrapper around it -- keyword
handling -- costs more than the call), int options read from libzmq itself
(``_zsockopt``: pyzmq builds an enum for every option it is asked), and
option numbers as plain ints (pyzmq's enum arithmetic costs more than the
calls it flags)."""

import ctypes
from typing import Callable, cast

import zmq

from . import _zsockopt

EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
RCVMORE, SNDMORE, RCVTIMEO = int(zmq.RCVMORE), int(zmq.SNDMORE), int(zmq.RCVTIMEO)

zsend = zmq.backend.Socket.send


def _libzmq_getsockopt() -> int:
    """The address of ``zmq_getsockopt`` in the libzmq pyzmq's Cython backend
    calls (looked up through that extension, so it is the same library), or
    0 when it cannot be found this way."""
    try:
        from zmq.backend.cython import _zmq

        if zmq.backend.Socket is not _zmq.Socket:   # another backend (CFFI)
            return 0
        return ctypes.cast(ctypes.CDLL(_zmq.__file__).zmq_getsockopt,
                           ctypes.c_void_p).value or 0
    except (ImportError, OSError, AttributeError):
        return 0


_zsockopt.bind(_libzmq_getsockopt(), zmq.backend.Socket.get, zmq.ZMQError)
#: an int option (EVENTS, RCVMORE) of a socket: ``zget(sock, EVENTS)``
zget = cast(Callable[[zmq.Socket, int], int], _zsockopt.get_int)
