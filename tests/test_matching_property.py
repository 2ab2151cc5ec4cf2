"""Property test: the router matches exactly what the reference rule says.

``ringcast._router_py.subject_matches`` is the small, obviously-correct
statement of the wildcard rules. Random patterns and subjects are drawn over
a three-letter token alphabet so that matches (and overlaps between
patterns) are frequent; every subject is checked by brute force against
every subscription. Runs against the native trie and the pure-Python twin
(``impl`` fixture), and compares the two directly.
"""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringcast._router_py import subject_matches

TOKENS = ["a", "b", "c"]
N_RINGS = 6

# every subject of 1..3 tokens, plus longer ones drawn per example
ALL_SHORT_SUBJECTS = [".".join(t) for n in (1, 2, 3) for t in itertools.product(TOKENS, repeat=n)]

subjects = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=6).map(".".join)


@st.composite
def patterns(draw):
    head = draw(st.lists(st.sampled_from([*TOKENS, "*"]), min_size=0, max_size=4))
    tail = draw(st.booleans()) or not head
    return ".".join(head + [">"] if tail else head)


bindings = st.lists(st.tuples(patterns(), st.integers(0, N_RINGS - 1)), max_size=40)

SETTINGS = settings(max_examples=100, deadline=None)


def expected(bound, subject):
    """Brute force: the ring indices with a pattern that matches."""
    return {i for p, i in bound if subject_matches(p, subject)}


def indices(rings, got):
    """Ring objects -> indices; fails on duplicates or foreign objects."""
    pos = {id(r): i for i, r in enumerate(rings)}
    out = [pos[id(r)] for r in got]
    assert len(out) == len(set(out)), f"a ring listed twice: {out}"
    return set(out)


def check_all(core, rings, bound, subject_list):
    for s in subject_list:
        want = expected(bound, s)
        assert indices(rings, core.match_uncached(s)) == want, s
        assert indices(rings, core.match(s)) == want, s
        assert indices(rings, core.match(s)) == want, s   # from the cache this time


def test_the_reference_rule_on_known_cases():
    # subject_matches is the oracle below: pin it to hand-written answers
    assert subject_matches(">", "a") and subject_matches(">", "a.b.c")
    assert subject_matches("a.>", "a.b") and not subject_matches("a.>", "a")
    assert subject_matches("*.b", "a.b") and not subject_matches("*.b", "a.b.c")
    assert subject_matches("a.*.>", "a.b.c") and not subject_matches("a.*.>", "a.b")
    assert subject_matches("a", "a") and not subject_matches("a", "a.a")
    assert not subject_matches("*", "a.b") and not subject_matches("a.b", "a")


@SETTINGS
@given(bound=bindings, extra=st.lists(subjects, max_size=10))
def test_router_matches_exactly_the_reference(impl, bound, extra):
    core = impl.CoreRouter()
    rings = [impl.Ring(4, "drop_oldest") for _ in range(N_RINGS)]
    for p, i in bound:
        core.add(p, rings[i])
    assert core.subscriptions == len(bound)
    check_all(core, rings, bound, ALL_SHORT_SUBJECTS + extra)


@SETTINGS
@given(bound=bindings, subject_list=st.lists(subjects, min_size=1, max_size=10))
def test_publish_reaches_exactly_the_matching_rings(impl, bound, subject_list):
    core = impl.CoreRouter()
    rings = [impl.Ring(64, "drop_oldest") for _ in range(N_RINGS)]
    for p, i in bound:
        core.add(p, rings[i])
    received = [[] for _ in rings]
    for n, s in enumerate(subject_list):
        want = expected(bound, s)
        assert core.publish(s, b"%d" % n) == len(want)
        for i in want:
            received[i].append((s, b"%d" % n))
    for ring, got in zip(rings, received):
        assert [(m.subject, m.payload) for m in ring.pop_many()] == got
    assert core.published == len(subject_list)
    assert core.delivered == sum(len(g) for g in received)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), patterns(), st.integers(0, N_RINGS - 1)),
        st.tuples(st.just("remove"), patterns(), st.integers(0, N_RINGS - 1)),
        st.tuples(st.just("remove_bound"), st.integers(0, 1000)),
        st.tuples(st.just("match"), subjects),
        st.tuples(st.just("check_all")),
    ),
    max_size=50,
)


@SETTINGS
@given(ops=ops)
def test_add_remove_interleavings(impl, ops):
    core = impl.CoreRouter()
    rings = [impl.Ring(4, "drop_oldest") for _ in range(N_RINGS)]
    bound = []   # the model: a multiset of (pattern, ring index)
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, p, i = op
            core.add(p, rings[i])
            bound.append((p, i))
        elif kind in ("remove", "remove_bound"):
            if kind == "remove":
                _, p, i = op
            elif bound:
                p, i = bound[op[1] % len(bound)]
            else:
                continue
            present = (p, i) in bound
            assert core.remove(p, rings[i]) is present, (p, i)
            if present:
                bound.remove((p, i))
        elif kind == "match":
            s = op[1]
            want = expected(bound, s)
            assert indices(rings, core.match(s)) == want, s
            assert indices(rings, core.match_uncached(s)) == want, s
        else:
            check_all(core, rings, bound, ALL_SHORT_SUBJECTS)
        assert core.subscriptions == len(bound)
    # take everything out: nothing may match any more
    for p, i in list(bound):
        assert core.remove(p, rings[i]) is True
    assert core.subscriptions == 0
    check_all(core, rings, [], ALL_SHORT_SUBJECTS)


@pytest.mark.parametrize("impl", ["c"], indirect=True)
@SETTINGS
@given(ops=ops)
def test_native_and_pure_routers_agree(impl, ops):
    from ringcast import _ring_py, _router_py

    native = impl.CoreRouter()
    pure = _router_py.CoreRouter()
    native_rings = [impl.Ring(4, "drop_oldest") for _ in range(N_RINGS)]
    pure_rings = [_ring_py.Ring(4, "drop_oldest") for _ in range(N_RINGS)]
    bound = []
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, p, i = op
            native.add(p, native_rings[i])
            pure.add(p, pure_rings[i])
            bound.append((p, i))
        elif kind == "remove":
            _, p, i = op
            removed = native.remove(p, native_rings[i])
            assert removed is pure.remove(p, pure_rings[i]) is ((p, i) in bound)
            if removed:
                bound.remove((p, i))
        elif kind == "remove_bound" and bound:
            p, i = bound.pop(op[1] % len(bound))
            assert native.remove(p, native_rings[i]) is pure.remove(p, pure_rings[i]) is True
        elif kind == "match":
            s = op[1]
            assert indices(native_rings, native.match(s)) == indices(pure_rings, pure.match(s))
            assert native.publish(s, b"x") == pure.publish(s, b"x")
        assert native.subscriptions == pure.subscriptions
    for s in ALL_SHORT_SUBJECTS:
        assert indices(native_rings, native.match_uncached(s)) == indices(
            pure_rings, pure.match_uncached(s)), s
    for n, p in zip(native_rings, pure_rings):
        assert [(m.seq, m.subject) for m in n.pop_many()] == [
            (m.seq, m.subject) for m in p.pop_many()]
