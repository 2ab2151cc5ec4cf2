"""The one exception hierarchy of ringcast.

Every error ringcast raises on purpose derives from :class:`RingcastError`;
where a builtin category fits (``ValueError``, ``TimeoutError``) the class
inherits it too, so callers that already catch the builtin keep working.
Each wire error code (see docs/protocol.md) maps to exactly one class here.
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class RingcastError(Exception):
    """Root of every ringcast error."""

    #: wire error code (docs/protocol.md); 0 for errors that never cross the wire
    code: int = 0


class InvalidSubject(RingcastError, ValueError):
    """A subject or pattern is malformed: empty token, whitespace, wildcard
    where none is allowed, or longer than the documented maximum."""

    code = 1


class WrongType(RingcastError, TypeError):
    """An argument has the wrong type (payload not bytes-like, subject not str...)."""

    code = 14


class LimitExceeded(RingcastError, ValueError):
    """A frame, message, header block or count is over a documented limit."""

    code = 2


class WouldBlock(RingcastError):
    """A ``block``-policy buffer is full and the call was non-blocking."""

    code = 3


class Timeout(RingcastError, TimeoutError):
    """The deadline passed before the operation could complete."""

    code = 4


class NoResponders(RingcastError):
    """A request named a service that nobody serves."""

    code = 5


class AckError(RingcastError):
    """Ack/nack of a delivery that is unknown, already settled, or was
    taken back (consumer closed, ack deadline passed)."""

    code = 6


class Closed(RingcastError):
    """The router, subscription, consumer or connection is closed."""

    code = 7


class ProtocolError(RingcastError):
    """A peer sent bytes that do not follow docs/protocol.md."""

    code = 8


class UnknownCommand(ProtocolError):
    """A frame carried a command byte this side does not know."""

    code = 9


class VersionMismatch(ProtocolError):
    """The handshake named a protocol version this side does not speak."""

    code = 10


class ServiceError(RingcastError):
    """A responder's handler raised; the message carries its description."""

    code = 11


class ConnectionLost(RingcastError, ConnectionError):
    """The broker stopped answering (heartbeats missed) or the socket closed."""

    code = 12


class NotFound(RingcastError, LookupError):
    """A named queue or service does not exist."""

    code = 13


_BY_CODE: Dict[int, Type[RingcastError]] = {
    cls.code: cls
    for cls in (
        InvalidSubject,
        LimitExceeded,
        WouldBlock,
        Timeout,
        NoResponders,
        AckError,
        Closed,
        ProtocolError,
        UnknownCommand,
        VersionMismatch,
        ServiceError,
        ConnectionLost,
        NotFound,
        WrongType,
    )
}


def error_from_code(code: int, message: str) -> RingcastError:
    """Rebuild the typed exception a peer reported by wire code."""
    cls: Optional[Type[RingcastError]] = _BY_CODE.get(code)
    if cls is None:
        err = RingcastError(message)
        err.code = code
        return err
    return cls(message)


__all__ = [
    "RingcastError",
    "InvalidSubject",
    "LimitExceeded",
    "WouldBlock",
    "Timeout",
    "NoResponders",
    "AckError",
    "Closed",
    "ProtocolError",
    "UnknownCommand",
    "VersionMismatch",
    "ServiceError",
    "ConnectionLost",
    "NotFound",
    "WrongType",
    "error_from_code",
]
