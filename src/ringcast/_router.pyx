# cython: freethreading_compatible=False
"""Native topic router: a token trie with ``*`` and ``>`` and a subject cache.

A publish looks its subject up in a dict of recent subject -> matching
rings (one hash probe, str hashes are cached by CPython); only a miss walks
the trie, token by token, so the cost of a publish depends on the subject's
tokens and its matches, never on how many other subscriptions exist. The
cache is dropped whenever the subscription set changes (as NATS's sublist
does), and cached lists are never mutated in place, so subscribe and
unsubscribe are safe at any time, including from a delivery callback.
"""
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.buffer cimport PyObject_CheckBuffer

from ringcast._ring cimport Ring, RC_BLOCK
from ringcast.errors import Closed, InvalidSubject, WrongType

cdef extern from "rc_subject.h":
    int RC_SUBJECT_MAX_LEN
    int rc_subject_check(const char *s, size_t n, int pattern, size_t *ntokens)

MAX_SUBJECT_LEN = RC_SUBJECT_MAX_LEN

cdef tuple _REASONS = (
    "ok",
    "is empty",
    f"is longer than {RC_SUBJECT_MAX_LEN} bytes",
    "has an empty token",
    "contains whitespace or a control character",
    "contains a wildcard token ('*' or '>'), which only patterns may use",
    "has '>' before its last token",
)


cdef Py_ssize_t _check(object text, bint pattern) except -1:
    cdef Py_ssize_t n
    cdef size_t ntokens = 0
    cdef const char *s
    if type(text) is not str:
        raise WrongType(
            f"{'pattern' if pattern else 'subject'} must be str, not {type(text).__name__}"
        )
    try:
        s = PyUnicode_AsUTF8AndSize(text, &n)
    except UnicodeEncodeError:
        raise InvalidSubject(f"{'pattern' if pattern else 'subject'} {text[:80]!r} "
                             f"is not valid UTF-8 (lone surrogate)") from None
    rc = rc_subject_check(s, <size_t>n, pattern, &ntokens)
    if rc != 0:
        raise InvalidSubject(
            f"{'pattern' if pattern else 'subject'} {text[:80]!r} {_REASONS[rc]}"
        )
    return <Py_ssize_t>ntokens


def check_subject(subject):
    """Raise InvalidSubject unless ``subject`` is a valid publish subject."""
    _check(subject, False)


def check_pattern(pattern):
    """Raise InvalidSubject unless ``pattern`` is a valid subscription pattern."""
    _check(pattern, True)


cdef int _check_payload(object payload) except -1:
    if type(payload) is bytes or PyObject_CheckBuffer(payload):
        return 0
    if type(payload) is str:
        raise WrongType("payload must be bytes-like, not str (encode it first)")
    raise WrongType(f"payload must be bytes or support the buffer protocol, "
                    f"not {type(payload).__name__}")


cdef inline int _check_headers(object headers) except -1:
    if headers is None:
        return 0
    if type(headers) is not dict:
        raise WrongType(f"headers must be a dict of str to str, not {type(headers).__name__}")
    for k, v in (<dict>headers).items():
        if type(k) is not str or type(v) is not str:
            raise WrongType("headers must be a dict of str to str")
    return 0


def check_message(payload, headers=None):
    """Raise WrongType unless ``payload`` is bytes-like and ``headers`` is
    None or a dict of str to str (what publish checks, for other entry points)."""
    if type(payload) is not bytes:
        _check_payload(payload)
    _check_headers(headers)


def check_messages(list payloads, headers=None):
    """``check_message`` for a batch sharing ``headers``, in one native loop."""
    for payload in payloads:
        if type(payload) is not bytes:
            _check_payload(payload)
    _check_headers(headers)


cdef list _as_list(object payloads):
    try:
        return list(payloads)
    except TypeError:
        raise WrongType(f"payloads must be an iterable of bytes-like objects, "
                        f"not {type(payloads).__name__}") from None


cdef class _Node:
    def __cinit__(self):
        self.children = {}
        self.subs = []
        self.tail_subs = []

    cdef bint empty(self):
        return not self.children and self.star is None and not self.subs and not self.tail_subs


cdef class _Match:
    pass


cdef int _collect(_Node node, list tokens, Py_ssize_t i, list out) except -1:
    cdef Py_ssize_t n = len(tokens)
    cdef PyObject *child
    while True:
        if i == n:
            out.extend(node.subs)
            return 0
        if node.tail_subs:
            out.extend(node.tail_subs)   # '>' takes one or more remaining tokens
        if node.star is not None:
            _collect(node.star, tokens, i + 1, out)
        child = PyDict_GetItem(node.children, tokens[i])
        if child == NULL:
            return 0
        node = <_Node>child
        i += 1


cdef bint _remove(_Node node, list tokens, Py_ssize_t i, Ring ring):
    cdef Py_ssize_t last = len(tokens) - 1
    cdef _Node child
    tok = tokens[i]
    if i == last and tok == ">":
        return _drop(node, ring, True)
    child = node.star if tok == "*" else node.children.get(tok)
    if child is None:
        return False
    if i == last:
        found = _drop(child, ring, False)
    else:
        found = _remove(child, tokens, i + 1, ring)
    if found and child.empty():   # prune so churn does not grow the trie
        if tok == "*":
            node.star = None
        else:
            del node.children[tok]
    return found

cdef bint _drop(_Node node, Ring ring, bint tail):
    cdef list subs = node.tail_subs if tail else node.subs
    for j in range(len(subs)):
        if subs[j] is ring:
            subs = subs[:j] + subs[j + 1:]   # copy: a delivery may be iterating the old list
            if tail:
                node.tail_subs = subs
            else:
                node.subs = subs
            return True
    return False


cdef int _wake_ready(list rings) except -1:
    """Fire the armed ready callbacks of rings that hold messages, after every
    push of a publish is done (callbacks may publish or unsubscribe)."""
    cdef Ring r
    for i in range(len(rings)):
        r = <Ring>rings[i]
        if r.on_ready is not None and r.wpos != r.rpos:
            r.fire_ready()
    return 0


cdef class CoreRouter:
    """Patterns -> rings. ``publish`` pushes into every matching ring."""

    def __cinit__(self, *args, **kwargs):
        self.root = _Node()
        self.cache = {}
        self.cache_max = 8192

    def __init__(self, Py_ssize_t cache_max=8192):
        self.cache_max = cache_max

    def add(self, pattern, Ring ring not None):
        """Route subjects matching ``pattern`` into ``ring``."""
        _check(pattern, True)
        cdef _Node node = self.root, nxt
        tokens = (<str>pattern).split(".")
        cdef Py_ssize_t i, last = len(tokens) - 1
        for i, tok in enumerate(tokens):
            if i == last and tok == ">":
                node.tail_subs = node.tail_subs + [ring]
                break
            if tok == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                nxt = node.children.get(tok)
                if nxt is None:
                    nxt = _Node()
                    node.children[tok] = nxt
                node = nxt
            if i == last:
                node.subs = node.subs + [ring]
        self.subscriptions += 1
        self.cache = {}

    def remove(self, pattern, Ring ring not None):
        """Undo one ``add``; returns False if that pairing was not present."""
        _check(pattern, True)
        tokens = (<str>pattern).split(".")
        if not _remove(self.root, tokens, 0, ring):
            return False
        self.subscriptions -= 1
        self.cache = {}
        return True

    cdef _Match lookup(self, str subject):
        # a run of one subject (a frame, a publish loop) skips the hash probe;
        # the memo holds the cache dict it came from, so replacing the cache
        # (any subscription change) invalidates it
        if subject is self.memo_subject and self.cache is self.memo_cache:
            return self.memo_match
        cdef PyObject *hit = PyDict_GetItem(self.cache, subject)
        cdef _Match m = <_Match>hit if hit != NULL else self._miss(subject)
        self.memo_subject = subject
        self.memo_cache = self.cache
        self.memo_match = m
        return m

    cdef _Match _miss(self, str subject):
        _check(subject, False)
        cdef list out = []
        _collect(self.root, subject.split("."), 0, out)
        if len(out) > 1:
            out = list(dict.fromkeys(out))  # a ring bound by several patterns gets one copy
        cdef _Match m = _Match()
        m.rings = out
        m.blocking = False
        for r in out:
            if (<Ring>r).policy == RC_BLOCK:
                m.blocking = True
        self.cache_misses += 1
        if len(self.cache) >= self.cache_max:
            self.cache = {}
        self.cache[subject] = m
        return m

    def match(self, subject):
        """The rings a publish to ``subject`` would reach (validated)."""
        if type(subject) is not str:
            _check(subject, False)
        return list(self.lookup(subject).rings)

    def match_uncached(self, subject):
        """Walk the trie without the cache (for benchmarks and tests)."""
        _check(subject, False)
        cdef list out = []
        _collect(self.root, (<str>subject).split("."), 0, out)
        if len(out) > 1:
            out = list(dict.fromkeys(out))  # one entry per ring, as match() gives
        return out

    cdef int _publish(self, object subject, object payload, object headers) except -2:
        if self.closed:
            raise Closed("router is closed")
        if type(subject) is not str:
            _check(subject, False)
        if type(payload) is not bytes:
            _check_payload(payload)
        if headers is not None:
            _check_headers(headers)
        cdef _Match m = self.lookup(subject)
        cdef list rings = m.rings
        cdef Py_ssize_t i, n = len(rings)
        cdef Ring r
        cdef int stored = 0
        cdef bint wake = False
        if m.blocking:
            for i in range(n):
                r = <Ring>rings[i]
                if r.policy == RC_BLOCK and r.full():
                    self.blocked_ring = r
                    return -1
        for i in range(n):
            r = <Ring>rings[i]
            if r.push(subject, payload, headers) > 0:
                stored += 1
            if r.on_ready is not None:
                wake = True
        self.published += 1
        self.delivered += stored
        if wake:
            _wake_ready(rings)
        return stored

    cdef Py_ssize_t _publish_many(self, object subject, list items, object headers) except -1:
        if self.closed:
            raise Closed("router is closed")
        if type(subject) is not str:
            _check(subject, False)
        if headers is not None:
            _check_headers(headers)
        cdef Py_ssize_t i, j, n = len(items), room
        for i in range(n):
            if type(items[i]) is not bytes:
                _check_payload(items[i])
        cdef _Match m = self.lookup(subject)
        cdef list rings = m.rings
        cdef Py_ssize_t nr = len(rings)
        cdef Ring r
        cdef unsigned long long stored = 0
        if m.blocking:
            for j in range(nr):
                r = <Ring>rings[j]
                if r.policy == RC_BLOCK:
                    room = r.room(items, n)
                    if room < n:
                        n = room
                        self.blocked_ring = r
        for j in range(nr):
            r = <Ring>rings[j]
            for i in range(n):
                if r.push(subject, items[i], headers) > 0:
                    stored += 1
        self.published += n
        self.delivered += stored
        if n:
            _wake_ready(rings)
        return n

    def publish(self, subject, payload, headers=None, timeout=None):
        """Deliver one message to every matching subscription and bound queue.

        Returns how many buffers stored it. When a ``block``-policy buffer is
        full nothing is delivered anywhere and ``_on_blocked`` decides: the
        bare core returns -1 (``blocked_ring`` names the full ring);
        ``ringcast.Router`` waits up to ``timeout`` seconds (None: forever,
        0: raise WouldBlock at once) and then delivers to all.
        """
        cdef int n = self._publish(subject, payload, headers)
        if n >= 0:
            return n
        return self._on_blocked(subject, payload, headers, timeout)

    def try_publish(self, subject, payload, headers=None):
        """As ``publish`` but never waits: -1 when a ``block`` buffer is full."""
        return self._publish(subject, payload, headers)

    def publish_many(self, subject, payloads, headers=None, timeout=None):
        """Publish a list of payloads under one subject in one native call.

        Each payload reaches all its buffers or none. Returns how many were
        taken; when a ``block`` buffer fills up, the rest go to
        ``_on_blocked_many`` (the bare core stops there; Router waits).
        """
        cdef list items = payloads if type(payloads) is list else _as_list(payloads)
        cdef Py_ssize_t n = self._publish_many(subject, items, headers)
        if n == len(items):
            return n
        return self._on_blocked_many(subject, items, headers, timeout, n)

    def try_publish_many(self, subject, payloads, headers=None):
        """As ``publish_many`` but never waits for room."""
        return self._publish_many(subject, payloads if type(payloads) is list
                                  else _as_list(payloads), headers)

    def _on_blocked(self, subject, payload, headers, timeout):
        return -1

    def _on_blocked_many(self, subject, items, headers, timeout, done):
        return done

    def clear_cache(self):
        self.cache = {}

    @property
    def cache_size(self):
        return len(self.cache)
