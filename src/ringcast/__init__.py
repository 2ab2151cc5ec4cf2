"""ringcast: a message broker for Python with a native core.

Embedded use::

    import ringcast
    router = ringcast.Router()
    sub = router.subscribe("orders.*")
    router.publish("orders.placed", b"order-1")
    print(sub.recv(timeout=1).payload)
"""

from . import errors
from ._impl import MAX_SUBJECT_LEN, Message
from ._version import __version__
from .errors import (
    AckError,
    Closed,
    InvalidSubject,
    LimitExceeded,
    NoResponders,
    RingcastError,
    Timeout,
    WouldBlock,
)
from .router import Consumer, PendingRequest, Queue, Responder, Router, Subscription

__all__ = [
    "__version__",
    "errors",
    "Router",
    "Subscription",
    "Queue",
    "Consumer",
    "Responder",
    "PendingRequest",
    "Message",
    "MAX_SUBJECT_LEN",
    "RingcastError",
    "InvalidSubject",
    "LimitExceeded",
    "WouldBlock",
    "Timeout",
    "NoResponders",
    "AckError",
    "Closed",
]
