"""ringcast: a message broker for Python with a native core.

Embedded use::

    import ringcast
    router = ringcast.Router()
    sub = router.subscribe("orders.*")
    router.publish("orders.placed", b"order-1")
    print(sub.recv(timeout=1).payload)
"""

from typing import TYPE_CHECKING, Any

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
from .queues import Consumer, Queue, QueueOptions
from .router import Router, Subscription
from .services import PendingRequest, Responder

__all__ = [
    "__version__",
    "errors",
    "Router",
    "Subscription",
    "Queue",
    "QueueOptions",
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

# The broker and its clients load ZeroMQ and the wire codec only when used,
# so embedded use (and the pure-Python core) does not depend on them; type
# checkers see them through the TYPE_CHECKING imports.
_LAZY = {"Broker": "broker", "Client": "client", "connect": "client"}
__all__ += list(_LAZY)

if TYPE_CHECKING:
    from .broker import Broker as Broker
    from .client import Client as Client
    from .client import connect as connect


def __getattr__(name: str) -> Any:  # PEP 562
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ringcast' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
