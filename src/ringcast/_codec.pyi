# Type stubs for the compiled module ringcast._codec (src/ringcast/_codec.pyx).
# Kept in step with the .pyx by `python -m mypy.stubtest` (tools/check_typing.sh).
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, final

from typing_extensions import Self, disjoint_base

from ._ring import Message
from ._router import CoreRouter

PROTOCOL_VERSION: int
PROTOCOL_VERSION_MIN: int

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
MSGS: int
PUBS: int

FORMATS: Dict[int, str]
DEFAULT_MAX_FRAME: int
DEFAULT_MAX_MESSAGE: int
DEFAULT_MAX_SUBJECT: int
MAX_HEADERS: int
CREDIT_BYTES: int

def max_record(max_message: int, max_subject: int) -> int: ...

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
    def ack(self, handle: int, tag: int) -> int: ...
    def rqst(
        self,
        handle: int,
        tag: int,
        timeout_ms: int,
        service: str,
        headers: Optional[Dict[str, str]],
        payload: Any,
    ) -> int: ...
    def reply(self, rid: int, headers: Optional[Dict[str, str]], payload: Any) -> int: ...
    def write_deliveries(
        self, handle: int, msgs: List[Message], max_message: int = ...
    ) -> List[Message]: ...
    def write_ring(
        self, ring: Any, handle: int, max_count: int, max_bytes: int, runs: bool = False,
        max_message: int = 0,
    ) -> int: ...
    def take(self) -> bytes: ...
    def clear(self) -> None: ...

@final
class NoLock:
    def __enter__(self) -> None: ...
    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...

@final
class Urgent:
    """A client's urgent records (acks, replies, credit, control), cut into
    frames at ``frame_target``, written under ``lock`` while ``ready``."""

    frame_target: int
    ready: bool
    sender: int
    lock: Any
    def __new__(cls, owner: Any, lock: Any, frame_target: int = ...) -> Self: ...
    def __len__(self) -> int: ...
    def record(self, cmd: int, *fields: Any) -> None: ...
    def put(self, cmd: int, *fields: Any) -> None: ...
    def answer_request(self, frame: bytes, now: float) -> Optional[List[bytes]]: ...
    def take(self) -> List[bytes]: ...
    def clear(self) -> None: ...

@disjoint_base
class Settler:
    """The ``_owner`` of one remote handle's deliveries for one session."""

    stale: bool
    @property
    def handle(self) -> Any: ...
    @property
    def hid(self) -> int: ...
    def __init__(self, handle: Any, hid: int, urgent: Urgent) -> None: ...
    def live(self) -> None: ...
    def ack(self, msg: Message) -> None: ...
    def settling(self, msg: Message) -> None: ...
    def respond(
        self, msg: Message, payload: Any, headers: Optional[Dict[str, str]] = None
    ) -> None: ...
    def answer(self, msg: Message, handler: Callable[[Message], Any]) -> None: ...

@final
class Outbox:
    """A client's ordered stream: records batched into frames waiting for credit."""

    frame_target: int
    queued_limit: int
    max_message: int
    kick: Optional[Callable[[], None]]
    wait: Optional[Callable[[Optional[float]], None]]
    closed: bool
    def __new__(
        cls,
        check_subject: Callable[[str], None],
        clock: Callable[[], float],
        frame_target: int = 65536,
        queued_limit: int = 1048576,
        max_message: int = 1048576,
    ) -> Self: ...
    @property
    def frames(self) -> Any: ...
    @property
    def queued(self) -> int: ...
    @property
    def first(self) -> float: ...
    @property
    def unsent(self) -> int: ...
    @property
    def buffered(self) -> int: ...
    def publish(
        self,
        subject: str,
        payload: Any,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> None: ...
    def send(
        self,
        queue: str,
        payload: Any,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> None: ...
    def publish_many(
        self,
        subject: str,
        payloads: Any,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> None: ...
    def send_many(
        self,
        queue: str,
        payloads: Any,
        headers: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> None: ...
    def record(self, cmd: int, *fields: Any) -> None: ...
    def request(
        self,
        rid: int,
        service: str,
        payload: Any,
        headers: Optional[Dict[str, str]],
        timeout: Optional[float],
        grace: float,
        credit: int = -1,
        now: Optional[float] = None,
    ) -> Tuple[float, Optional[bytes]]: ...
    def cut(self, now: float = 0.0, linger: float = 0.0, force: bool = True) -> None: ...
    def take_frames(self, credit: int) -> Tuple[List[bytes], int]: ...
    def clear(self) -> None: ...
    def can_publish(self) -> bool: ...

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
    def run(self, cmd: int) -> List[Tuple[Any, ...]]: ...
    def sends(self) -> Tuple[Optional[str], List[bytes]]: ...
    def skip(self, count: int) -> None: ...
    def acks(self) -> Dict[int, List[int]]: ...
    def route(
        self,
        publish: Union[CoreRouter, Callable[[str, Any, Optional[Dict[str, str]]], int]],
        counts: Optional[Dict[str, int]] = None,
    ) -> int: ...
    def events(self, owners: Optional[Dict[int, Any]] = None,
               requests: Optional[Dict[int, Tuple[str, Callable[[Any], None], float]]] = None,
               settles: Optional[List[Tuple[Callable[[Any], None], Any]]] = None,
               inline: Optional[Dict[int, Callable[[Message], Any]]] = None,
               ) -> List[Tuple[Any, ...]]: ...
    def answer(self, requests: Dict[int, Tuple[str, Callable[[Any], None], float]],
               rid: int) -> Optional[Tuple[Any, int]]: ...

@final
class RequestPath:
    """The broker's native path for its commonest requests (native core
    only): REQ records for a service whose one responder is remote and has
    room, and REP records answering remote requesters."""

    def __new__(
        cls, broker: Any, remote: type, wire: type, split: int, max_timeout_ms: float
    ) -> Self: ...
    def requests(self, r: Reader, session: Any) -> int: ...
    def replies(self, r: Reader, session: Any) -> int: ...
    def frame(self, frame: bytes, session: Any) -> Optional[Reader]: ...
    def sole(self) -> Any: ...

@final
class Deliveries:
    """A run of encoded MSG records for one subscription, decoded on demand."""

    @property
    def count(self) -> int: ...
    @property
    def first_seq(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def take(self, max_count: int = ...) -> List[Message]: ...
    def take_payloads(self, max_count: int = ...) -> List[bytes]: ...

def settle_future(fut: Any, result: Any) -> None: ...
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
