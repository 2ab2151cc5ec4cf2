"""Pure-Python twin of ``_router`` (selected by RINGCAST_NO_EXTENSIONS=1).

The matcher here is the reference the native trie is property-tested
against: ``subject_matches`` states the wildcard rules in a few lines.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from ._ring_py import RC_BLOCK, Ring
from .errors import Closed, InvalidSubject, WrongType

MAX_SUBJECT_LEN = 1024
# ASCII and C1 controls, and every character str.isspace() calls whitespace
_BAD_CHAR = re.compile("[\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _check(text: Any, pattern: bool) -> None:
    what = "pattern" if pattern else "subject"
    if type(text) is not str:
        raise WrongType(f"{what} must be str, not {type(text).__name__}")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidSubject(f"{what} {text[:80]!r} is not valid UTF-8 (lone surrogate)") from None
    reason = None
    tokens = text.split(".")
    if not text:
        reason = "is empty"
    elif len(encoded) > MAX_SUBJECT_LEN:
        reason = f"is longer than {MAX_SUBJECT_LEN} bytes"
    elif "" in tokens:
        reason = "has an empty token"
    elif _BAD_CHAR.search(text):
        reason = "contains whitespace or a control character"
    elif not pattern and ("*" in tokens or ">" in tokens):
        reason = "contains a wildcard token ('*' or '>'), which only patterns may use"
    elif pattern and ">" in tokens[:-1]:
        reason = "has '>' before its last token"
    if reason:
        raise InvalidSubject(f"{what} {text[:80]!r} {reason}")


def check_subject(subject: Any) -> None:
    _check(subject, False)


def check_pattern(pattern: Any) -> None:
    _check(pattern, True)


def subject_matches(pattern: str, subject: str) -> bool:
    """The reference rule: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    if p[-1] == ">":
        return len(s) > len(p) - 1 and all(a in ("*", b) for a, b in zip(p[:-1], s))
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s))


def _check_payload(payload: Any) -> None:
    if type(payload) is str:
        raise WrongType("payload must be bytes-like, not str (encode it first)")
    try:
        memoryview(payload)
    except TypeError:
        raise WrongType(f"payload must be bytes or support the buffer protocol, "
                        f"not {type(payload).__name__}") from None


def _check_headers(headers: Any) -> None:
    if headers is None:
        return
    if type(headers) is not dict or not all(
            type(k) is str and type(v) is str for k, v in headers.items()):
        raise WrongType("headers must be a dict of str to str")


def _check_ring(ring: Any) -> None:
    # as the native CoreRouter (a `Ring ring not None` argument)
    if not isinstance(ring, Ring):
        raise WrongType(f"ring must be a Ring, not {type(ring).__name__}")


def _as_list(payloads: Any) -> List[Any]:
    try:
        return list(payloads)
    except TypeError:
        raise WrongType(f"payloads must be an iterable of bytes-like objects, "
                        f"not {type(payloads).__name__}") from None


def check_message(payload: Any, headers: Any = None) -> None:
    _check_payload(payload)
    _check_headers(headers)


def check_messages(payloads: List[Any], headers: Any = None) -> None:
    for payload in payloads:
        _check_payload(payload)
    _check_headers(headers)


class CoreRouter:
    """Linear scan over (pattern, ring) pairs with a subject cache."""

    def __init__(self, cache_max: int = 8192) -> None:
        self._pairs: List[Tuple[str, Ring]] = []
        self._cache: Dict[str, List[Ring]] = {}
        self.cache_max = cache_max
        self.published = 0
        self.delivered = 0
        self.cache_misses = 0
        self.blocked_ring: Optional[Ring] = None
        self.closed = False   # set by Router.close(): publishing raises Closed

    @property
    def subscriptions(self) -> int:
        return len(self._pairs)

    def add(self, pattern: str, ring: Ring) -> None:
        _check(pattern, True)
        _check_ring(ring)
        self._pairs = self._pairs + [(pattern, ring)]
        self._cache = {}

    def remove(self, pattern: str, ring: Ring) -> bool:
        _check(pattern, True)
        _check_ring(ring)
        for i, (p, r) in enumerate(self._pairs):
            if p == pattern and r is ring:
                self._pairs = self._pairs[:i] + self._pairs[i + 1:]
                self._cache = {}
                return True
        return False

    def match_uncached(self, subject: str) -> List[Ring]:
        _check(subject, False)
        out: List[Ring] = []
        for p, r in self._pairs:
            if subject_matches(p, subject) and not any(x is r for x in out):
                out.append(r)
        return out

    def match(self, subject: str) -> List[Ring]:
        hit = self._cache.get(subject) if type(subject) is str else None
        if hit is None:
            hit = self.match_uncached(subject)
            self.cache_misses += 1
            if len(self._cache) >= self.cache_max:
                self._cache = {}
            self._cache[subject] = hit
        return list(hit)

    def _blocked(self, rings: List[Ring]) -> Optional[Ring]:
        for r in rings:
            if r.policy == RC_BLOCK and r.full():
                return r
        return None

    def publish(self, subject: str, payload: Any, headers: Any = None,
                timeout: Optional[float] = None) -> int:
        n = self.try_publish(subject, payload, headers)
        return n if n >= 0 else self._on_blocked(subject, payload, headers, timeout)

    def publish_many(self, subject: str, payloads: Any, headers: Any = None,
                     timeout: Optional[float] = None) -> int:
        items = _as_list(payloads)
        n = self.try_publish_many(subject, items, headers)
        return n if n == len(items) else self._on_blocked_many(subject, items, headers,
                                                               timeout, n)

    def _on_blocked(self, subject: str, payload: Any, headers: Any,
                    timeout: Optional[float]) -> int:
        return -1

    def _on_blocked_many(self, subject: str, items: List[Any], headers: Any,
                         timeout: Optional[float], done: int) -> int:
        return done

    def try_publish(self, subject: str, payload: Any, headers: Any = None) -> int:
        if self.closed:
            raise Closed("router is closed")
        _check_payload(payload)
        _check_headers(headers)
        rings = self.match(subject)
        blocked = self._blocked(rings)
        if blocked is not None:
            self.blocked_ring = blocked
            return -1
        stored = sum(1 for r in rings if r.push(subject, payload, headers) > 0)
        self.published += 1
        self.delivered += stored
        for r in rings:
            if r.on_ready is not None and len(r):
                r.fire_ready()
        return stored

    def try_publish_many(self, subject: str, payloads: Any, headers: Any = None) -> int:
        if self.closed:
            raise Closed("router is closed")
        items = _as_list(payloads)
        _check_headers(headers)
        for p in items:
            _check_payload(p)
        rings = self.match(subject)
        n = len(items)
        for r in rings:
            if r.policy == RC_BLOCK:
                room = r.room(items, n)
                if room < n:
                    n = room
                    self.blocked_ring = r
        for r in rings:
            for p in items[:n]:
                if r.push(subject, p, headers) > 0:
                    self.delivered += 1
        self.published += n
        if n:
            for r in rings:
                if r.on_ready is not None and len(r):
                    r.fire_ready()
        return n

    def clear_cache(self) -> None:
        self._cache = {}

    @property
    def cache_size(self) -> int:
        return len(self._cache)
