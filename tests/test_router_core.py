"""The topic router of the core (``CoreRouter``): matching, validation,
add/remove, the subject cache, and all-or-nothing publishing.

Every test runs against the compiled trie router and its pure-Python twin
(``impl`` fixture). The Router API built on top (router.py, aio.py) is
tested elsewhere.
"""

import gc
import sys
import tracemalloc

import pytest

from ringcast._router_py import subject_matches
from ringcast.errors import Closed, InvalidSubject, WrongType

# (pattern, subject, matches)
WILDCARDS = [
    ("a", "a", True),
    ("a", "b", False),
    ("a", "a.b", False),
    ("a.b", "a", False),
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a.b", "b.a", False),
    ("A", "a", False),
    ("orders.eu.placed", "orders.eu.placed", True),
    ("orders.eu.placed", "orders.eu.placed.x", False),
    # '*': exactly one token
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("*.*", "a.b.c", False),
    ("a.*", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*", "b.a", False),
    ("*.b", "a.b", True),
    ("*.b", "a.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.x.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.*.c", "a.b.d", False),
    ("a.*.c", "b.b.c", False),
    ("*.*.*", "a.b.c", True),
    # '>': one or more trailing tokens
    (">", "a", True),
    (">", "a.b.c.d", True),
    ("a.>", "a", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c.d", True),
    ("a.>", "b.c", False),
    ("a.b.>", "a.b", False),
    ("a.b.>", "a.b.c", True),
    ("a.b.>", "a.c.c", False),
    ("a.*.>", "a.b", False),
    ("a.*.>", "a.b.c", True),
    ("*.>", "a", False),
    ("*.>", "a.b", True),
    ("*.b.>", "x.b.y.z", True),
    ("*.b.>", "x.c.y.z", False),
    # '*' and '>' are only wildcards as whole tokens
    ("a*", "a*", True),
    ("a*", "ab", False),
    ("a>", "a>", True),
    ("a>", "a.b", False),
    ("a.b*", "a.b*", True),
    ("a.b*", "a.bc", False),
    ("*x", "ax", False),
    # non-ASCII tokens are ordinary tokens
    ("ü.*", "ü.x", True),
    ("ü.*", "u.x", False),
]

# (text, why): invalid both as a subject and as a pattern
INVALID = [
    ("", "empty"),
    ("a..b", "empty token"),
    (".a", "leading dot"),
    ("a.", "trailing dot"),
    (".", "only a dot"),
    ("..", "only dots"),
    ("a b", "space"),
    (" a", "leading space"),
    ("a ", "trailing space"),
    ("a\tb", "tab"),
    ("a\nb", "newline"),
    ("a\r", "carriage return"),
    ("a\x0bb", "vertical tab"),
    ("a\x0cb", "form feed"),
    ("a\x00b", "NUL"),
    ("a\x1bb", "escape"),
    ("a\x7fb", "DEL"),
    ("a.>.b", "'>' not last"),
    (">.a", "'>' first of two"),
    ("a.>.>", "'>' twice"),
    ("x" * 1025, "one byte over the limit"),
    ("é" * 512 + "a", "over the limit in UTF-8 bytes, not characters"),
    ("a.\ud800", "lone surrogate"),
    ("\udfff", "lone low surrogate"),
]

# valid patterns that are not publishable subjects
PATTERN_ONLY = ["*", ">", "a.*", "a.>", "*.a", "a.*.b", "*.*", "*.>"]

# valid subjects (and literal patterns)
VALID = ["a", "a.b", "orders.eu.placed", "a*", "a>", "*a", ">a", "a.b*.c", "ü.日本", "a-b_c:d/e",
         "x" * 1024, "é" * 512, "1.2.3", "a." + "b." * 100 + "c"]

NOT_PAYLOADS = [1, 1.5, "text", None, [b"x"], (b"x",), {"a": b"x"}, object()]
NOT_HEADERS = [[("k", "v")], ("k", "v"), "k=v", {"k": 1}, {"k": b"v"}, {1: "v"}, {b"k": "v"},
               {"k": None}]
NOT_STR = [b"a", bytearray(b"a"), None, 1, ["a"], ("a",)]


def _type_id(value):
    return type(value).__name__


@pytest.fixture
def core(impl):
    return impl.CoreRouter()


def ring(impl, capacity=16, policy="block"):
    return impl.Ring(capacity, policy)


# -- wildcard semantics -------------------------------------------------------

@pytest.mark.parametrize(("pattern", "subject", "expected"), WILDCARDS)
def test_reference_matcher_follows_the_table(pattern, subject, expected):
    assert subject_matches(pattern, subject) is expected


@pytest.mark.parametrize(("pattern", "subject", "expected"), WILDCARDS)
def test_wildcard_semantics(impl, core, pattern, subject, expected):
    r = ring(impl)
    core.add(pattern, r)
    want = [r] if expected else []
    assert core.match(subject) == want
    assert core.match(subject) == want  # second time from the cache
    assert core.match_uncached(subject) == want
    assert core.publish(subject, b"x") == len(want)
    assert len(r) == len(want)
    if expected:
        assert r.pop().subject == subject


def test_all_wildcard_rows_in_one_router(impl, core):
    # one router holding every pattern at once must give the same answers
    rings = {}
    for pattern, _, _ in WILDCARDS:
        if pattern not in rings:
            rings[pattern] = ring(impl)
            core.add(pattern, rings[pattern])
    for subject in sorted({s for _, s, _ in WILDCARDS}):
        want = {id(r) for p, r in rings.items() if subject_matches(p, subject)}
        got = core.match(subject)
        assert len(got) == len(want) and {id(r) for r in got} == want, subject
        got = core.match_uncached(subject)
        assert len(got) == len(want) and {id(r) for r in got} == want, subject


def test_fan_out_reaches_each_matching_ring_once(impl, core):
    rings = {p: ring(impl) for p in ["a.b", "a.*", "a.>", ">", "*.b", "a.c", "b.>", "*"]}
    for p, r in rings.items():
        core.add(p, r)
    payload = bytearray(b"shared")
    assert core.publish("a.b", payload) == 5
    for p, r in rings.items():
        got = r.pop_many()
        if p in ("a.c", "b.>", "*"):
            assert got == []
        else:
            assert len(got) == 1 and got[0].payload is payload and got[0].seq == 1


def test_a_ring_bound_by_overlapping_patterns_gets_one_copy(impl, core):
    r, other = ring(impl), ring(impl)
    for p in ["a.b", "a.*", "a.>", ">", "*.*", "*.b"]:
        core.add(p, r)
    core.add("a.b", other)
    assert core.subscriptions == 7
    assert core.match("a.b").count(r) == 1
    assert len(core.match("a.b")) == 2
    assert core.publish("a.b", b"x") == 2
    assert len(r) == 1 and len(other) == 1
    assert core.publish_many("a.b", [b"1", b"2"]) == 2
    assert [m.payload for m in r.pop_many()] == [b"x", b"1", b"2"]


def test_a_closed_core_refuses_every_publish(impl, core):
    r = ring(impl)
    core.add("a", r)
    assert core.closed is False
    core.closed = True
    for publish in (lambda: core.publish("a", b"x"), lambda: core.try_publish("a", b"x"),
                    lambda: core.publish_many("a", [b"x"]),
                    lambda: core.try_publish_many("a", [b"x"])):
        with pytest.raises(Closed):
            publish()
    assert len(r) == 0 and core.published == 0 and core.delivered == 0


def test_match_uncached_also_gives_one_copy_per_ring(impl, core):
    r = ring(impl)
    for p in ["a.b", "a.*", "a.>", ">"]:
        core.add(p, r)
    assert core.match_uncached("a.b") == [r]


def test_the_same_binding_twice_counts_twice_but_delivers_once(impl, core):
    r = ring(impl)
    core.add("a.b", r)
    core.add("a.b", r)
    assert core.subscriptions == 2
    assert core.publish("a.b", b"x") == 1 and len(r) == 1
    assert core.remove("a.b", r) is True
    assert core.match("a.b") == [r]        # the second binding is still there
    assert core.remove("a.b", r) is True
    assert core.match("a.b") == []
    assert core.remove("a.b", r) is False
    assert core.subscriptions == 0


# -- validation ---------------------------------------------------------------

def test_max_subject_len(impl):
    assert impl.MAX_SUBJECT_LEN == 1024
    import ringcast

    assert ringcast.MAX_SUBJECT_LEN == 1024


@pytest.mark.parametrize(("text", "why"), INVALID, ids=[w for _, w in INVALID])
def test_invalid_subjects_and_patterns(impl, core, text, why):
    r = ring(impl)
    core.add(">", r)
    for call in (impl.check_subject, impl.check_pattern, core.match, core.match_uncached,
                 lambda t: core.publish(t, b"x"), lambda t: core.publish_many(t, [b"x"]),
                 lambda t: core.add(t, r), lambda t: core.remove(t, r)):
        with pytest.raises(InvalidSubject):
            call(text)
    assert len(r) == 0 and core.published == 0 and core.subscriptions == 1


# Unicode whitespace and C1 control characters (str.isspace() / category Cc)
UNICODE_SPACE = ["a\u00a0b", "a\u2028b", "a\u3000b", "a\u2003b", "a\x85b", "a\x80b", "a\x9fb",
                 "a\u1680b", "a\u205fb", "\u202f"]


@pytest.mark.parametrize("text", ["caf\u00e9.\u00fcber", "\u65e5\u672c.\u2030", "a.\U0001f600"],
                         ids=ascii)
def test_non_space_unicode_is_valid(impl, text):
    impl.check_subject(text)
    impl.check_pattern(text)


@pytest.mark.parametrize("text", UNICODE_SPACE, ids=ascii)
def test_unicode_whitespace_and_c1_controls_are_invalid(impl, text):
    with pytest.raises(InvalidSubject):
        impl.check_subject(text)
    with pytest.raises(InvalidSubject):
        impl.check_pattern(text)


@pytest.mark.parametrize("pattern", PATTERN_ONLY)
def test_wildcard_tokens_are_for_patterns_only(impl, core, pattern):
    impl.check_pattern(pattern)
    core.add(pattern, ring(impl))
    for call in (impl.check_subject, core.match, core.match_uncached,
                 lambda t: core.publish(t, b"x"), lambda t: core.publish_many(t, [b"x"])):
        with pytest.raises(InvalidSubject, match="wildcard"):
            call(pattern)


@pytest.mark.parametrize("text", VALID)
def test_valid_subjects(impl, core, text):
    impl.check_subject(text)
    impl.check_pattern(text)
    r = ring(impl)
    core.add(text, r)
    assert core.publish(text, b"x") == 1
    assert r.pop().subject == text


def test_invalid_subject_is_a_value_error(impl):
    with pytest.raises(ValueError):
        impl.check_subject("a..b")
    with pytest.raises(TypeError):
        impl.check_subject(b"a")


@pytest.mark.parametrize("bad", NOT_STR, ids=_type_id)
def test_subject_and_pattern_must_be_str(impl, core, bad):
    r = ring(impl)
    core.add(">", r)
    for call in (impl.check_subject, impl.check_pattern, core.match, core.match_uncached,
                 lambda t: core.publish(t, b"x"), lambda t: core.publish_many(t, [b"x"]),
                 lambda t: core.add(t, r), lambda t: core.remove(t, r)):
        with pytest.raises(WrongType):
            call(bad)
    assert len(r) == 0 and core.published == 0


@pytest.mark.parametrize("bad", NOT_PAYLOADS, ids=_type_id)
def test_payload_must_be_bytes_like(impl, core, bad):
    r = ring(impl)
    core.add(">", r)
    with pytest.raises(WrongType, match="payload"):
        core.publish("a", bad)
    with pytest.raises(WrongType, match="payload"):
        core.publish_many("a", [b"ok", b"ok", bad])   # checked before anything is pushed
    assert len(r) == 0 and (core.published, core.delivered) == (0, 0)


@pytest.mark.parametrize("payload", [b"", b"x", bytearray(b"x"), memoryview(b"xy")], ids=repr)
def test_bytes_like_payloads_are_delivered_by_reference(impl, core, payload):
    r = ring(impl)
    core.add("a", r)
    assert core.publish("a", payload) == 1
    assert r.pop().payload is payload


@pytest.mark.parametrize("bad", NOT_HEADERS, ids=repr)
def test_headers_must_be_a_dict_of_str(impl, core, bad):
    r = ring(impl)
    core.add(">", r)
    with pytest.raises(WrongType, match="headers"):
        core.publish("a", b"x", bad)
    with pytest.raises(WrongType, match="headers"):
        core.publish_many("a", [b"x"], bad)
    assert len(r) == 0 and core.published == 0


def test_headers_are_delivered(impl, core):
    r = ring(impl)
    core.add("a", r)
    h = {"trace": "t-1", "é": "ü"}
    core.publish("a", b"x", h)
    core.publish_many("a", [b"y"], {})
    core.publish("a", b"z")
    assert [m.headers for m in r.pop_many()] == [h, {}, None]


@pytest.mark.parametrize("bad", [None, "ring", object()], ids=_type_id)
def test_add_and_remove_need_a_ring(impl, core, bad):
    with pytest.raises(TypeError):
        core.add("a", bad)
    with pytest.raises(TypeError):
        core.remove("a", bad)
    assert core.subscriptions == 0


# -- add / remove -------------------------------------------------------------

def test_remove_returns_whether_the_binding_existed(impl, core):
    r, s = ring(impl), ring(impl)
    core.add("a.*", r)
    assert core.remove("a.*", s) is False      # other ring
    assert core.remove("a.>", r) is False      # other pattern
    assert core.remove("a.b", r) is False      # a subject it matches is not the pattern
    assert core.remove("a", r) is False        # a prefix of the pattern
    assert core.remove("a.*.c", r) is False    # an extension of the pattern
    assert core.remove("*", r) is False
    assert core.subscriptions == 1
    assert core.match("a.b") == [r]
    assert core.remove("a.*", r) is True
    assert core.subscriptions == 0
    assert core.match("a.b") == []


PATTERNS = ["a", "a.b", "a.b.c", "a.*", "a.*.c", "a.>", "a.b.>", ">", "*", "*.b", "*.*.c",
            "b.*", "b.>", "*.>"]
SUBJECTS = ["a", "b", "c", "a.b", "a.c", "b.b", "b.c", "a.b.c", "a.c.c", "b.b.c", "a.b.c.d",
            "x.y.z.w"]


def _expect(bound, subject):
    return {id(r) for p, r in bound if subject_matches(p, subject)}


def test_removal_leaves_the_other_bindings_intact(impl, core):
    bound = [(p, ring(impl)) for p in PATTERNS]
    for p, r in bound:
        core.add(p, r)
    # remove in an order that takes out deep and shallow nodes alternately
    order = [7, 2, 0, 13, 5, 9, 1, 11, 3, 12, 4, 10, 6, 8]
    assert sorted(order) == list(range(len(bound)))
    remaining = list(bound)
    for i in order:
        p, r = bound[i]
        assert core.remove(p, r) is True
        remaining.remove((p, r))
        assert core.subscriptions == len(remaining)
        for s in SUBJECTS:
            assert {id(x) for x in core.match(s)} == _expect(remaining, s), (p, s)
            assert {id(x) for x in core.match_uncached(s)} == _expect(remaining, s), (p, s)


def test_removing_everything_leaves_an_empty_router(impl, core):
    bound = [(p, ring(impl)) for p in PATTERNS]
    for _ in range(3):
        for p, r in bound:
            core.add(p, r)
        for s in SUBJECTS:
            assert core.match(s)
        for p, r in reversed(bound):
            assert core.remove(p, r)
        assert core.subscriptions == 0
        for s in SUBJECTS:
            assert core.match(s) == [] and core.match_uncached(s) == []
            assert core.publish(s, b"x") == 0
    assert all(len(r) == 0 for _, r in bound)


def _traced_after_churn(impl, core, n):
    r = ring(impl)
    patterns = [f"churn.{i}.{i % 7}.*.leaf{i}.>" for i in range(n)]
    for p in patterns:
        core.add(p, r)
    for p in patterns:
        assert core.remove(p, r)
    del patterns
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_remove_prunes_the_trie(impl, core):
    # Behavioural check that removal frees what add built: after adding and
    # removing thousands of distinct deep patterns, memory is back where it
    # was. Without pruning the empty trie nodes (several hundred bytes each)
    # would stay reachable from the root.
    n = 3000
    core.add("keep.me", ring(impl))
    tracemalloc.start()
    try:
        _traced_after_churn(impl, core, 10)  # warm up any one-time allocations
        before = tracemalloc.get_traced_memory()[0]
        after = _traced_after_churn(impl, core, n)
    finally:
        tracemalloc.stop()
    assert after - before < 50 * n // 10, (before, after)  # < 5 bytes per pattern
    assert core.subscriptions == 1
    assert core.match("churn.1.1.x.leaf1.y") == []
    assert len(core.match("keep.me")) == 1


# -- cache -------------------------------------------------------------------

def test_cache_is_invalidated_by_add_and_remove(impl, core):
    r, s = ring(impl), ring(impl)
    assert core.match("a.b") == []
    assert core.cache_size == 1
    core.add("a.*", r)
    assert core.match("a.b") == [r]
    assert core.publish("a.b", b"1") == 1
    core.add("a.>", s)
    assert core.publish("a.b", b"2") == 2
    assert core.remove("a.*", r)
    assert core.match("a.b") == [s]
    assert core.publish("a.b", b"3") == 1
    assert core.remove("a.>", s)
    assert core.match("a.b") == [] and core.publish("a.b", b"4") == 0
    assert [m.payload for m in r.pop_many()] == [b"1", b"2"]
    assert [m.payload for m in s.pop_many()] == [b"2", b"3"]


def test_failed_remove_keeps_results_right(impl, core):
    r = ring(impl)
    core.add("a.b", r)
    assert core.match("a.b") == [r]
    assert core.remove("a.b", ring(impl)) is False
    assert core.match("a.b") == [r]


def test_cache_hits_and_misses(impl, core):
    r = ring(impl)
    core.add("a.*", r)
    misses = core.cache_misses
    core.match("a.b")
    core.match("a.b")
    core.publish("a.b", b"x")
    assert core.cache_misses == misses + 1
    core.match("a.c")
    assert core.cache_misses == misses + 2
    core.clear_cache()
    assert core.cache_size == 0
    assert core.match("a.b") == [r]
    assert core.cache_misses == misses + 3


def test_cache_is_bounded_and_stays_correct(impl):
    core = impl.CoreRouter(cache_max=4)
    r = ring(impl)
    core.add("s.*", r)
    for i in range(20):
        assert core.match(f"s.{i}") == [r]
        assert core.match(f"t.{i}") == []
        assert core.cache_size <= 4
    assert core.match("s.0") == [r]


def test_returned_match_list_is_a_copy(impl, core):
    r = ring(impl)
    core.add("a", r)
    got = core.match("a")
    got.clear()
    got.append("junk")
    assert core.match("a") == [r]
    assert core.publish("a", b"x") == 1


# -- publish: all or nothing under a full block ring ----------------------------

def test_publish_refuses_everything_when_a_block_ring_is_full(impl, core):
    full = ring(impl, 1, "block")
    roomy = ring(impl, 4, "block")
    oldest = ring(impl, 1, "drop_oldest")
    newest = ring(impl, 1, "drop_newest")
    unrelated_full = ring(impl, 1, "block")
    for r in (full, roomy, oldest, newest):
        core.add("a.>", r)
    core.add("b", unrelated_full)
    assert core.publish("a.x", b"first") == 4
    assert core.publish("b", b"fill") == 1
    published, delivered = core.published, core.delivered
    state = [(len(r), r.dropped, r.last_seq) for r in (full, roomy, oldest, newest)]

    assert core.publish("a.x", b"refused") == -1
    assert core.blocked_ring is full
    assert [(len(r), r.dropped, r.last_seq) for r in (full, roomy, oldest, newest)] == state
    assert (core.published, core.delivered) == (published, delivered)
    for r in (roomy, oldest, newest):
        assert [m.payload for m in r.pop_many()] == [b"first"]

    # a full block ring that does not match the subject is irrelevant
    assert core.publish("a.y", b"still-refused") == -1
    full.pop()
    assert core.publish("a.y", b"now") == 4
    assert [m.payload for m in full.pop_many()] == [b"now"]
    assert [m.seq for m in roomy.pop_many()] == [2]  # no sequence number was spent
    assert core.published == published + 1


def test_refused_publish_wakes_nobody(impl, core):
    full, waiting = ring(impl, 1, "block"), ring(impl, 4, "drop_oldest")
    core.add("a", full)
    core.add("a", waiting)
    core.publish("a", b"x")
    waiting.pop()
    woken = []
    assert waiting.arm_ready(lambda: woken.append(1))
    assert core.publish("a", b"y") == -1
    assert woken == [] and len(waiting) == 0
    full.pop()
    assert core.publish("a", b"z") == 2
    assert woken == [1]


def test_publish_counts_what_each_ring_stored(impl, core):
    newest = ring(impl, 1, "drop_newest")
    block = ring(impl, 4, "block")
    core.add("a", newest)
    core.add("a", block)
    assert core.publish("a", b"1") == 2
    assert core.publish("a", b"2") == 1       # dropped by drop_newest, stored by block
    assert newest.dropped == 1
    assert core.publish("nobody.listens", b"3") == 0
    assert (core.published, core.delivered) == (3, 3)


def test_publish_many_takes_what_every_block_ring_has_room_for(impl, core):
    room2 = ring(impl, 4, "block")
    room3 = ring(impl, 4, "block")
    lossy = ring(impl, 2, "drop_oldest")
    for r in (room3, room2, lossy):
        core.add("a.*", r)
    room2.put_many("a.b", [b"old", b"old"])
    room3.put("a.b", b"old")
    batch = [b"p%d" % i for i in range(5)]
    assert core.publish_many("a.b", batch) == 2
    assert core.blocked_ring is room2
    assert room2.pop_payloads() == [b"old", b"old", b"p0", b"p1"]
    assert room3.pop_payloads() == [b"old", b"p0", b"p1"]
    assert lossy.pop_payloads() == [b"p0", b"p1"]
    assert (core.published, core.delivered) == (2, 6)

    # the caller resumes with the rest
    assert core.publish_many("a.b", batch[2:]) == 3
    assert room2.pop_payloads() == batch[2:] == room3.pop_payloads()
    assert lossy.pop_payloads() == batch[3:] and lossy.dropped == 1
    assert core.published == 5


def test_publish_many_takes_nothing_under_a_full_block_ring(impl, core):
    full, other = ring(impl, 2, "block"), ring(impl, 8, "drop_newest")
    core.add("a", full)
    core.add(">", other)
    full.put_many("a", [b"x", b"y"])
    assert core.publish_many("a", [b"1", b"2"]) == 0
    assert core.blocked_ring is full
    assert len(other) == 0 and other.last_seq == 0
    assert (core.published, core.delivered) == (0, 0)


def test_publish_many_without_blocking(impl, core):
    a, b = ring(impl, 2, "drop_newest"), ring(impl, 8, "block")
    core.add("s", a)
    core.add("s", b)
    woken = []
    assert b.arm_ready(lambda: woken.append("b"))
    assert core.publish_many("s", (b"%d" % i for i in range(4))) == 4
    assert woken == ["b"]
    assert a.pop_payloads() == [b"0", b"1"] and a.dropped == 2
    assert b.pop_payloads() == [b"0", b"1", b"2", b"3"]
    assert (core.published, core.delivered) == (4, 6)
    assert core.publish_many("s", []) == 0
    assert core.publish_many("nobody", [b"x", b"y"]) == 2
    assert (core.published, core.delivered) == (6, 6)


def test_subscribing_from_a_delivery_callback(impl, core):
    first, second, late = ring(impl), ring(impl), ring(impl)
    core.add("a", first)
    core.add("a", second)

    def on_ready():
        # unsubscribe one ring and subscribe another, mid-publish
        assert core.remove("a", second)
        core.add("a", late)

    assert first.arm_ready(on_ready)
    assert core.publish("a", b"1") == 2
    assert core.publish("a", b"2") == 2
    assert first.pop_payloads() == [b"1", b"2"]
    assert second.pop_payloads() == [b"1"]
    assert late.pop_payloads() == [b"2"]


# -- native reference counts ------------------------------------------------

@pytest.mark.parametrize("impl", ["c"], indirect=True)
def test_native_publish_holds_one_reference_per_stored_copy(impl):
    core = impl.CoreRouter()  # not the fixture: this test must drop the last reference
    rings = [ring(impl, 2, "block"), ring(impl, 2, "drop_newest"), ring(impl, 2, "drop_oldest")]
    for r in rings:
        core.add("a.*", r)
    payload, headers = bytearray(b"p"), {"k": "v"}

    def refs():
        return [sys.getrefcount(payload), sys.getrefcount(headers)]

    base = refs()
    assert core.publish("a.b", payload, headers) == 3
    assert refs() == [base[0] + 3, base[1] + 3]
    for r in rings:
        r.pop_payloads()
    assert refs() == base
    assert core.publish_many("a.b", [payload, payload, payload], headers) == 2
    assert refs() == [base[0] + 6, base[1] + 6]
    assert core.publish("a.b", payload, headers) == -1   # refused: no new reference
    assert refs() == [base[0] + 6, base[1] + 6]
    del rings, r                       # rings still hold messages; the router holds the rings
    assert refs() == [base[0] + 6, base[1] + 6]
    del core                           # last owner of the rings: everything is released
    gc.collect()
    assert refs() == base


# -- the blocked hooks a subclass (ringcast.Router) overrides ------------------

def test_try_publish_never_calls_the_blocked_hooks(impl):
    calls = []

    class Hooked(impl.CoreRouter):
        def _on_blocked(self, subject, payload, headers, timeout):
            calls.append(("one", subject, payload, headers, timeout))
            return 99

        def _on_blocked_many(self, subject, items, headers, timeout, done):
            calls.append(("many", subject, list(items), headers, timeout, done))
            return 42

    core = Hooked()
    full = ring(impl, 2, "block")
    core.add("a", full)
    assert core.publish_many("a", [b"1"]) == 1
    assert calls == []
    h = {"k": "v"}
    assert core.publish_many("a", [b"2", b"3", b"4"], h, timeout=0.5) == 42
    assert calls == [("many", "a", [b"2", b"3", b"4"], h, 0.5, 1)]
    assert full.pop_payloads() == [b"1", b"2"]
    assert core.try_publish("a", b"x") == 1
    assert core.try_publish_many("a", [b"y", b"z"]) == 1
    assert core.try_publish("a", b"w") == -1
    assert core.publish("a", b"v", None, 3) == 99
    assert calls[1:] == [("one", "a", b"v", None, 3)]
    assert full.pop_payloads() == [b"x", b"y"]


def test_bare_core_publish_is_try_publish(impl, core):
    full = ring(impl, 1, "block")
    core.add("a", full)
    assert core.publish("a", b"1", timeout=5) == 1
    assert core.publish("a", b"2", timeout=5) == -1
    assert core.try_publish("a", b"2") == -1
    assert core.publish_many("a", [b"2", b"3"], timeout=5) == 0
    assert core.try_publish_many("a", [b"2", b"3"]) == 0
    assert core.blocked_ring is full


def test_non_iterable_payloads_and_subjectless_messages_are_wrong_types(impl, core):
    with pytest.raises(WrongType):
        core.publish_many("a.b", 5)
    with pytest.raises(WrongType):
        core.try_publish_many("a.b", None)
    with pytest.raises(TypeError):
        impl.Message(None, b"x")


def test_a_run_of_one_subject_sees_subscription_changes_at_once(impl, core):
    """Publishing one subject object again and again (a frame, a loop) skips
    the cache probe; every subscribe / unsubscribe in between still counts."""
    subject = "orders.placed"
    first, second = ring(impl), ring(impl)
    core.add("orders.*", first)
    assert core.publish(subject, b"1") == 1
    core.add("orders.>", second)              # between two publishes of one subject
    assert core.publish(subject, b"2") == 2
    core.remove("orders.*", first)
    assert core.publish(subject, b"3") == 1
    core.clear_cache()
    assert core.publish(subject, b"4") == 1
    assert [m.payload for m in first.pop_many()] == [b"1", b"2"]
    assert [m.payload for m in second.pop_many()] == [b"2", b"3", b"4"]
