"""Append-only, segmented, CRC-checked log of one durable queue.

Record on disk (little endian)::

    u32 body_length | u32 crc32(body) | body
    body = u8 kind | u64 first | u32 count | entries

    MSGS     count messages with ids first, first+1, ...; each entry:
             u64 stamp_ns | u16 subject_len | u32 headers_len | u32 payload_len
             | subject | headers | payload      (headers: JSON object or empty)
    ACKS     count u64 ids now settled: acked, dead-lettered or expired
    DELIVERS count u64 ids of which one more delivery attempt began

One record per append or flush, not per message: a batch costs one CRC and
one write, and a torn batch is lost whole (it was never confirmed).

Segments are files named by the first id they hold; the newest is appended
to, a segment rolls over at ``segment_bytes``, and fully settled segments
are deleted from the oldest end (an ACK in a later segment must outlive the
MSG it settles, so deletion never skips ahead).

What each fsync policy can lose (see docs/reliability.md):

* ``always``: an append returns only after fsync: nothing confirmed is lost,
  even to a power cut.
* ``interval``: appends reach the kernel at once (a killed process loses
  nothing), and are fsynced every ``interval`` seconds: a power cut or
  kernel crash can lose the last interval.
* ``never``: as ``interval`` but the kernel decides when to write back.

ACK and DELIVER records are buffered and written with the next message or at
the next interval tick (whatever the policy): a crash can forget them, which redelivers a message
that was already handled (flagged redelivered) -- at-least-once, never lost.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import LimitExceeded, ProtocolError

log = logging.getLogger("ringcast.storage")

FSYNC_POLICIES = ("always", "interval", "never")
MSGS, ACKS, DELIVERS = 1, 2, 3
MAX_RECORD = 64 << 20  # a length field above this is corruption, not a record

_HEAD = struct.Struct("<II")
_BODY = struct.Struct("<BQI")      # kind, first id, count
_ENTRY = struct.Struct("<QHII")    # stamp, subject/headers/payload lengths


class CorruptRecord(ProtocolError):
    """A log record failed its length or CRC check."""


class StoredMessage:
    """A message as the log knows it: what recovery hands back."""

    __slots__ = ("id", "stamp_ns", "subject", "payload", "headers", "deliveries")

    def __init__(self, id: int, stamp_ns: int, subject: str, payload: bytes,
                 headers: Optional[Dict[str, str]], deliveries: int = 0) -> None:
        self.id = id
        self.stamp_ns = stamp_ns
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.deliveries = deliveries


def _frame(body: bytes) -> bytes:
    if len(body) > MAX_RECORD:
        raise LimitExceeded(f"a log record of {len(body)} bytes is over the {MAX_RECORD} limit")
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def encode_msgs(first: int, messages: List[Tuple[int, str, Any, Optional[Dict[str, str]]]]
                ) -> bytes:
    """One MSGS record for ``(stamp_ns, subject, payload, headers)`` tuples."""
    parts = [_BODY.pack(MSGS, first, len(messages))]
    append = parts.append
    pack = _ENTRY.pack
    last_headers: Any = None
    hdr = b""
    for stamp, subject, payload, headers in messages:
        subj = subject.encode()
        if headers is not last_headers:  # batches usually share one headers dict
            last_headers = headers
            hdr = json.dumps(headers, separators=(",", ":")).encode() if headers else b""
        append(pack(stamp, len(subj), len(hdr), len(payload)))
        append(subj)
        append(hdr)
        append(payload)
    return _frame(b"".join(parts))


def encode_marks(kind: int, ids: List[int]) -> bytes:
    """One ACKS or DELIVERS record."""
    return _frame(_BODY.pack(kind, 0, len(ids)) + struct.pack(f"<{len(ids)}Q", *ids))


def decode_records(data: bytes) -> Iterator[Tuple[int, int, Optional[StoredMessage], int]]:
    """Yield ``(kind, id, message_or_None, end_offset)`` per message or mark
    of each intact record; raise CorruptRecord (with ``.offset``) at the
    first bad record. Nothing of a bad record is yielded."""
    view = memoryview(data)
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < _HEAD.size:
            raise _corrupt(pos, "truncated record header")
        length, crc = _HEAD.unpack_from(view, pos)
        if length < _BODY.size or length > MAX_RECORD or pos + _HEAD.size + length > n:
            raise _corrupt(pos, f"bad record length {length}")
        body = view[pos + _HEAD.size:pos + _HEAD.size + length]
        if zlib.crc32(body) != crc:
            raise _corrupt(pos, "CRC mismatch")
        end = pos + _HEAD.size + length
        items = _decode_body(body, pos)
        pos = end
        for kind, ident, msg in items:
            yield kind, ident, msg, end


def _decode_body(body: memoryview, pos: int) -> List[Tuple[int, int, Optional[StoredMessage]]]:
    kind, first, count = _BODY.unpack_from(body, 0)
    off = _BODY.size
    try:
        if kind in (ACKS, DELIVERS):
            if off + 8 * count != len(body):
                raise ValueError("mark count does not match the record length")
            return [(kind, i, None) for i in struct.unpack_from(f"<{count}Q", body, off)]
        if kind != MSGS:
            raise ValueError(f"unknown record kind {kind}")
        out: List[Tuple[int, int, Optional[StoredMessage]]] = []
        for ident in range(first, first + count):
            stamp, slen, hlen, plen = _ENTRY.unpack_from(body, off)
            off += _ENTRY.size
            if off + slen + hlen + plen > len(body):
                raise ValueError("entry lengths run past the record")
            subject = bytes(body[off:off + slen]).decode()
            off += slen
            headers = json.loads(bytes(body[off:off + hlen])) if hlen else None
            if headers is not None and not isinstance(headers, dict):
                raise ValueError("headers are not an object")
            off += hlen
            out.append((MSGS, ident, StoredMessage(ident, stamp, subject,
                                                   bytes(body[off:off + plen]), headers)))
            off += plen
        if off != len(body):
            raise ValueError("trailing bytes after the last entry")
        return out
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError included
        raise _corrupt(pos, f"malformed record: {exc}") from None


def _corrupt(offset: int, why: str) -> CorruptRecord:
    err = CorruptRecord(f"corrupt log record at offset {offset}: {why}")
    err.offset = offset  # type: ignore[attr-defined]
    return err


class QueueLog:
    """The durable log of one queue (thread-safe)."""

    def __init__(self, directory: str, *, fsync: str = "interval", interval: float = 0.05,
                 segment_bytes: int = 64 << 20) -> None:
        if fsync not in FSYNC_POLICIES:
            raise LimitExceeded(f"fsync policy must be one of {FSYNC_POLICIES}, not {fsync!r}")
        self.directory = directory
        self.fsync = fsync
        self.interval = interval
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._acks: List[int] = []          # buffered marks (see the module doc)
        self._delivers: List[int] = []
        self._dirty = False
        self._segments: List[int] = []          # first ids, oldest first
        self._live: Dict[int, int] = {}         # segment first id -> unsettled MSG count
        self._where: Dict[int, int] = {}        # unsettled message id -> segment first id
        self._fd = -1
        self._size = 0
        self.truncated_bytes = 0                # cut off as torn/corrupt during recovery
        self.syncs = 0
        self.next_id = 1
        self._closed = threading.Event()
        self._flusher: Optional[threading.Thread] = None
        os.makedirs(directory, exist_ok=True)

    # -- recovery --------------------------------------------------------------
    def recover(self) -> List[StoredMessage]:
        """Replay every segment; returns the unsettled messages in id order.

        A bad record ends its segment: the file is cut there and the loss is
        logged. Then the log is open for appends."""
        names = sorted(f for f in os.listdir(self.directory) if f.endswith(".seg"))
        messages: Dict[int, StoredMessage] = {}
        for name in names:
            first = int(name[:-4])
            path = os.path.join(self.directory, name)
            with open(path, "rb") as f:
                data = f.read()
            self._segments.append(first)
            self._live[first] = 0
            good = 0
            try:
                for kind, id, msg, end in decode_records(data):
                    good = end
                    self.next_id = max(self.next_id, id + 1)
                    if kind == MSGS:
                        assert msg is not None
                        messages[id] = msg
                        self._where[id] = first
                        self._live[first] += 1
                    elif id in messages:
                        if kind == ACKS:
                            del messages[id]
                            self._live[self._where.pop(id)] -= 1
                        else:
                            messages[id].deliveries += 1
            except CorruptRecord as exc:
                cut = len(data) - good
                self.truncated_bytes += cut
                log.error("%s: %s; cutting %d bytes off the end", path, exc, cut)
                with open(path, "r+b") as damaged:
                    damaged.truncate(good)
                    damaged.flush()
                    os.fsync(damaged.fileno())
        self._compact()
        self._open_active()
        return [messages[i] for i in sorted(messages)]

    def _open_active(self) -> None:
        if not self._segments:
            self._segments.append(self.next_id)
            self._live[self.next_id] = 0
        path = self._path(self._segments[-1])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        self._fd = os.open(path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        # every policy: buffered marks are written at least every interval
        # (and only ``interval`` fsyncs its messages here)
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                             name=f"ringcast-fsync-{os.path.basename(self.directory)}")
            self._flusher.start()

    def _path(self, first: int) -> str:
        return os.path.join(self.directory, f"{first:020d}.seg")

    # -- appends ---------------------------------------------------------------
    def append(self, messages: List[Tuple[int, str, Any, Optional[Dict[str, str]]]]) -> List[int]:
        """Write MSG records for ``(stamp_ns, subject, payload, headers)`` tuples;
        returns their ids. Durable per the fsync policy when it returns."""
        with self._lock:
            self._check_open()
            first = self.next_id
            ids = range(first, first + len(messages))
            record = encode_msgs(first, messages)
            self.next_id += len(messages)
            self._write(self._marks() + record)
            seg = self._segments[-1]
            self._live[seg] += len(ids)
            for i in ids:
                self._where[i] = seg
            if self.fsync == "always":
                self._sync()
            if self._size >= self.segment_bytes:
                self._roll()
            return list(ids)

    def settle(self, id: int) -> None:
        """Record that ``id`` is done (acked, dead-lettered, expired)."""
        with self._lock:
            seg = self._where.pop(id, None)
            if seg is None:
                return
            self._acks.append(id)
            self._live[seg] -= 1
            if seg == self._segments[0] and self._live[seg] == 0 and len(self._segments) > 1:
                self._flush_marks()
                self._compact()

    def delivered(self, ids: List[int]) -> None:
        """Record one more delivery attempt of each id (for delivery counts)."""
        with self._lock:
            where = self._where
            self._delivers.extend(i for i in ids if i in where)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self._dirty = True

    def _marks(self) -> bytes:
        """Encode and forget the buffered marks (deliveries before acks)."""
        out = b""
        if self._delivers:
            out = encode_marks(DELIVERS, self._delivers)
            self._delivers = []
        if self._acks:
            out += encode_marks(ACKS, self._acks)
            self._acks = []
        return out

    def _flush_marks(self) -> None:
        if (self._acks or self._delivers) and self._fd >= 0:
            self._write(self._marks())

    def _sync(self) -> None:
        if self._dirty and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False
            self.syncs += 1

    def sync(self) -> None:
        """Write buffered marks and fsync now."""
        with self._lock:
            self._flush_marks()
            self._sync()

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.interval):
            with self._lock:
                if self._fd < 0:
                    return
                self._flush_marks()
                if self.fsync != "never":
                    self._sync()

    def _roll(self) -> None:
        self._flush_marks()
        self._sync()
        os.close(self._fd)
        self._segments.append(self.next_id)
        self._live[self.next_id] = 0
        self._fd = -1
        self._compact()
        self._open_active()

    def _compact(self) -> None:
        """Delete fully settled segments from the oldest end."""
        while len(self._segments) > 1 and self._live[self._segments[0]] == 0:
            first = self._segments.pop(0)
            del self._live[first]
            os.remove(self._path(first))

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ProtocolError("queue log is closed (or was never recovered)")

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def unsettled(self) -> int:
        return len(self._where)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._fd >= 0:
                self._flush_marks()
                if self.fsync != "never":
                    self._sync()
                os.close(self._fd)
                self._fd = -1
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join(1)
