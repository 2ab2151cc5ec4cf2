"""Topic matching with 10 and with 100,000 non-matching subscriptions.

Issue 3's target: the cost of a match with 100k non-matching subscriptions
within 20% of the cost with 10. Both the cached lookup (what a publish does
for a subject it has seen) and the uncached trie walk (a subject seen for
the first time) are measured. The non-matching patterns are chosen to sit
on the walk's path: a third share the subject's first two tokens
(``orders.rK.x<i>``: big sibling dicts at nodes the walk visits), a third
hang under the ``*`` branch the walk must also follow (``orders.*.y<i>``),
a third are ``svc<i>.>`` at the root (a huge root dict).
"""

from __future__ import annotations

import pytest
from conftest import N

from ringcast._impl import CoreRouter, Ring

SUBJECTS = [f"orders.r{k}.placed" for k in range(16)]
LOOKUPS = [SUBJECTS[i % len(SUBJECTS)] for i in range(N)]


def _router(non_matching: int) -> CoreRouter:
    core = CoreRouter(8192)
    ring = Ring(1, "drop_newest")
    core.add("orders.*.placed", ring)  # the one subscription every subject matches
    for i in range(non_matching):
        kind = i % 3
        if kind == 0:
            core.add(f"orders.r{i % 16}.x{i}", ring)
        elif kind == 1:
            core.add(f"orders.*.y{i}", ring)
        else:
            core.add(f"svc{i}.>", ring)
    assert core.subscriptions == non_matching + 1
    for subject in SUBJECTS:
        assert len(core.match(subject)) == 1 and len(core.match_uncached(subject)) == 1
    return core


@pytest.fixture(scope="module")
def routers():
    return {10: _router(10), 100_000: _router(100_000)}


@pytest.mark.benchmark(group="match-cached")
@pytest.mark.parametrize("subs", [10, 100_000])
def test_match_cached(benchmark, record, routers, subs):
    record(baseline=subs == 10, subscriptions=subs)
    match = routers[subs].match

    def round_() -> int:
        for subject in LOOKUPS:
            match(subject)
        return N

    assert benchmark(round_) == N


@pytest.mark.benchmark(group="match-uncached")
@pytest.mark.parametrize("subs", [10, 100_000])
def test_match_uncached(benchmark, record, routers, subs):
    record(baseline=subs == 10, subscriptions=subs)
    match = routers[subs].match_uncached

    def round_() -> int:
        for subject in LOOKUPS:
            match(subject)
        return N

    assert benchmark(round_) == N
