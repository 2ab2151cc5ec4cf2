# Type stubs for the compiled module ringcast._codec (src/ringcast/_codec.pyx).
# Kept in step with the .pyx by `python -m mypy.stubtest` (tools/check_typing.sh).
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

from typing_extensions import Self

from ._ring import Message, Ring
from ._router import CoreRouter

PROTOCOL_VERSION: int

HELLO: int
PUB: int
SUB: int
CLOSE: int
CREDIT: int
DECLARE: int
SEND: int
CONSUME: int
ACK: int
NACK: int
SERVE: int
REQ: int
REP: int
REPERR: int
STATS: int
HB: int
BYE: int
WELCOME: int
OK: int
ERR: int
MSG: int
QMSG: int
RQST: int
REPLY: int
REPLYERR: int
PCREDIT: int
STATSREP: int

FORMATS: Dict[int, str]
DEFAULT_MAX_FRAME: int
DEFAULT_MAX_MESSAGE: int
DEFAULT_MAX_SUBJECT: int
MAX_HEADERS: int

@final
class Writer:
    """A growing frame of records; ``take()`` hands the frame over as bytes."""

    def __new__(cls, initial: int = 65536) -> Self: ...
    @property
    def records(self) -> int: ...
    def __len__(self) -> int: ...
    def pub(self, subject: str, payload: Any, headers: Optional[Dict[str, str]] = None) -> int: ...
    def pub_many(
        self, subject: str, payloads: Any, headers: Optional[Dict[str, str]] = None
    ) -> int: ...
    def record(self, cmd: int, *fields: Any) -> int: ...
    def write_ring(self, ring: Ring, handle: int, max_count: int, max_bytes: int) -> int: ...
    def take(self) -> bytes: ...
    def clear(self) -> None: ...

@final
class Reader:
    """Walks the records of one received frame, checking every length
    against the limits before building anything from it."""

    def __new__(
        cls,
        frame: Any,
        max_message: int = ...,
        max_subject: int = ...,
        subjects: Optional[Dict[Any, str]] = None,
    ) -> Self: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    def seek(self, pos: int) -> None: ...
    def at_end(self) -> bool: ...
    def peek(self) -> int: ...
    def next(self) -> Optional[Tuple[Any, ...]]: ...
    def route(
        self,
        publish: Union[CoreRouter, Callable[[str, Any, Optional[Dict[str, str]]], int]],
        counts: Optional[Dict[str, int]] = None,
    ) -> int: ...
    def events(self, owners: Optional[Dict[int, Any]] = None) -> List[Tuple[Any, ...]]: ...

def message(
    subject: str,
    payload: Any,
    headers: Optional[Dict[str, str]] = None,
    seq: int = 0,
    redelivered: bool = False,
    delivery_count: int = 1,
    owner: Any = None,
    tag: int = 0,
) -> Message: ...
