"""The ZeroMQ calls on ringcast's hot paths, shared by the broker and both
clients: libzmq's own functions bound in ``_zsockopt`` where they can be
found (pyzmq builds an enum for every option it is asked, and parses
keywords and releases the GIL for a send or recv that cannot block), else
pyzmq's calls with the same meaning; option numbers as plain ints (pyzmq's
enum arithmetic costs more than the calls it flags)."""

import ctypes
import errno
from typing import Any, Callable, Dict, Optional, Tuple, cast

import zmq

from . import _zsockopt

EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
RCVMORE, SNDMORE, RCVTIMEO = int(zmq.RCVMORE), int(zmq.SNDMORE), int(zmq.RCVTIMEO)

#: pyzmq's backend send (its wrapper around it -- keyword handling -- costs
#: more than the call); for one-part and blocking sends
zsend = zmq.backend.Socket.send

_FUNCTIONS = ("zmq_getsockopt", "zmq_send", "zmq_msg_init", "zmq_msg_recv", "zmq_msg_data",
              "zmq_msg_size", "zmq_msg_more", "zmq_msg_close")


def _libzmq_functions() -> Optional[Tuple[Dict[str, int], Any]]:
    """The addresses of _FUNCTIONS in the libzmq pyzmq's Cython backend calls
    (looked up through that extension, so it is the same library), and the
    descriptor of its sockets' ``underlying`` handle; None when they cannot
    all be found this way."""
    try:
        from zmq.backend.cython import _zmq

        if zmq.backend.Socket is not _zmq.Socket:   # another backend (CFFI)
            return None
        underlying = _zmq.Socket.__dict__["underlying"]
        if not hasattr(type(underlying), "__get__"):
            return None
        lib = ctypes.CDLL(_zmq.__file__)
        found = {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
                 for name in _FUNCTIONS}
    except (ImportError, OSError, AttributeError, KeyError):
        return None
    return (found, underlying) if all(found.values()) else None


def _pyzmq_get_int(sock: zmq.Socket, option: int) -> int:
    return cast(int, zmq.backend.Socket.get(sock, option))


def _pyzmq_send_parts(sock: zmq.Socket, first: bytes, second: bytes) -> int:
    try:
        zsend(sock, first, NOBLOCK | SNDMORE)
    except zmq.ZMQError as exc:   # Again (EAGAIN) among them
        return exc.errno or errno.EINVAL
    zsend(sock, second, NOBLOCK)
    return 0


def _pyzmq_recv_message(sock: zmq.Socket, first: Optional[bytes] = None
                        ) -> Optional[Tuple[bytes, Optional[bytes], int]]:
    recv = sock.recv
    if first is None:
        try:
            first = cast(bytes, recv(NOBLOCK))
        except zmq.Again:
            return None
    if not _pyzmq_get_int(sock, RCVMORE):
        return first, None, 1
    frame, parts = cast(bytes, recv(NOBLOCK)), 2
    while _pyzmq_get_int(sock, RCVMORE):
        recv(NOBLOCK)
        parts += 1
    return first, frame, parts


_NATIVE = _libzmq_functions()
if _NATIVE is not None:
    _zsockopt.bind(_NATIVE[0], zmq.ZMQError, _NATIVE[1])

#: an int option (EVENTS, RCVMORE) of a socket: ``zget(sock, EVENTS)``
zget = cast(Callable[[zmq.Socket, int], int],
            _zsockopt.get_int if _NATIVE else _pyzmq_get_int)
#: ``zsend_parts(sock, first, second)``: [first, second] without blocking;
#: 0, or the errno of a first part not taken (nothing sent: EAGAIN, EHOSTUNREACH)
zsend_parts = cast(Callable[[zmq.Socket, bytes, bytes], int],
                   _zsockopt.send_parts if _NATIVE else _pyzmq_send_parts)
#: ``zrecv_message(sock, first=None)``: a ROUTER's next message without
#: blocking, ``(identity, frame, parts)``, or None (``first``: its identity,
#: received already; ``frame`` None for a message of one part; parts after
#: the frame are dropped, ``parts`` counts them all)
zrecv_message = cast(Callable[..., Optional[Tuple[bytes, Optional[bytes], int]]],
                     _zsockopt.recv_message if _NATIVE else _pyzmq_recv_message)
EAGAIN, EHOSTUNREACH = errno.EAGAIN, zmq.EHOSTUNREACH
