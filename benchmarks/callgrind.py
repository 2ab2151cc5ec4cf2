"""Instructions per message under callgrind: the same-run ratios without the noise.

Timings on a shared 2-core VM drift +-30% between runs; instruction counts
do not. For each case this runs ``python benchmarks/callgrind.py CASE R``
under ``valgrind --tool=callgrind`` twice, with R=0 and R=ROUNDS rounds of
N=10,000 messages shaped exactly like the pytest-benchmark rounds, and
reports (Ir(R) - Ir(0)) / (R * N): instructions per message (per delivery
for fan-out rows), set-up and interpreter start-up cancelled out::

    python benchmarks/callgrind.py            # every case, a table
    python benchmarks/callgrind.py --cases percall_recv_many,blinker_1

Instruction counts ignore cache misses and branch mispredictions, so they
complement timings rather than replace them (the 100k-subscription match,
which touches bigger dicts, is exactly where they could differ).
"""

from __future__ import annotations

import argparse
import collections
import os
import queue as queue_mod
import re
import subprocess
import sys
from typing import Callable, Dict, List, Tuple

from rounds import PAYLOAD, SUBJECT, N, blinker_round, drain, fifo_round

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
ROUNDS = 3

Case = Callable[[], Tuple[Callable[[], int], int]]  # setup -> (round, deliveries per msg)
CASES: Dict[str, Tuple[str, Case]] = {}


def case(group: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (group, fn)
        return fn
    return register


def _blinker(receivers: int) -> Tuple[Callable[[], int], int]:
    return blinker_round(receivers), receivers


@case("pubsub-1")
def blinker_1():
    return _blinker(1)


@case("fanout-4")
def blinker_4():
    return _blinker(4)


def _ringcast(subs: int, batched: bool, payloads: bool):
    from ringcast import Router

    router = Router()
    rs = [router.subscribe(SUBJECT, capacity=16384) for _ in range(subs)]
    items = [PAYLOAD] * N
    publish, publish_many = router.publish, router.publish_many

    def round_() -> int:
        if batched:
            publish_many(SUBJECT, items)
        else:
            for _ in range(N):
                publish(SUBJECT, PAYLOAD)
        if payloads:
            return sum(len(s.recv_payloads(N)) for s in rs)
        return sum(drain(s.recv_many) for s in rs)

    return round_, subs


@case("pubsub-1")
def percall_recv_many():
    return _ringcast(1, False, False)


@case("pubsub-1")
def percall_recv_payloads():
    return _ringcast(1, False, True)


@case("pubsub-1-batched")
def batched_recv_payloads():
    return _ringcast(1, True, True)


@case("pubsub-1-batched")
def batched_recv_many():
    return _ringcast(1, True, False)


@case("fanout-4")
def fanout_percall_recv_many():
    return _ringcast(4, False, False)


@case("fanout-4")
def fanout_percall_recv_payloads():
    return _ringcast(4, False, True)


@case("fanout-4")
def fanout_batched_recv_payloads():
    return _ringcast(4, True, True)


def _match(non_matching: int, cached: bool):
    sys.path.insert(0, HERE)
    from test_match import LOOKUPS, _router

    core = _router(non_matching)
    match = core.match if cached else core.match_uncached

    def round_() -> int:
        for subject in LOOKUPS:
            match(subject)
        return N

    return round_, 1


@case("match-cached")
def match_cached_10():
    return _match(10, True)


@case("match-cached")
def match_cached_100k():
    return _match(100_000, True)


@case("match-uncached")
def match_uncached_10():
    return _match(10, False)


@case("match-uncached")
def match_uncached_100k():
    return _match(100_000, False)


@case("queue")
def queue_stdlib():
    q: queue_mod.Queue = queue_mod.Queue()
    return fifo_round(q.put, q.get), 1


@case("queue")
def queue_deque():
    d: collections.deque = collections.deque()
    return fifo_round(d.append, d.popleft), 1


@case("queue")
def queue_ringcast_recv_ack():
    from ringcast import Router

    router = Router()
    router.declare_queue("work", capacity=16384)
    consumer = router.consume("work")

    def round_() -> int:
        for _ in range(N):
            router.send("work", PAYLOAD)
        for _ in range(N):
            consumer.recv(0).ack()
        return N

    return round_, 1


def _child(name: str, rounds: int) -> None:
    # the checkout next to this file when it is built in place, as in conftest.py
    pkg = os.path.join(SRC, "ringcast")
    if os.path.isdir(pkg) and any(n.startswith("_ring.") for n in os.listdir(pkg)):
        sys.path.insert(0, SRC)
    round_, per_msg = CASES[name][1]()
    for _ in range(rounds):
        assert round_() == N * per_msg


def _instructions(name: str, rounds: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, os.path.abspath(__file__), "--child", name, str(rounds)],
        capture_output=True, text=True, check=True,
    )
    m = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in callgrind output:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--child", nargs=2, metavar=("CASE", "ROUNDS"), help=argparse.SUPPRESS)
    p.add_argument("--where", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.where:
        _child("queue_deque", 0)
        import ringcast
        print(os.path.dirname(ringcast.__file__))
        return 0
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--where"],
                         capture_output=True, text=True, check=True).stdout.strip()
    print(f"ringcast measured: {out}")
    print("| group | case | instructions/msg | instructions/delivery |")
    print("|---|---|---:|---:|")
    for name in args.cases.split(","):
        group, setup = CASES[name]
        base = _instructions(name, 0)
        full = _instructions(name, args.rounds)
        per_msg = (full - base) / (args.rounds * N)
        per_delivery = per_msg / (4 if group == "fanout-4" else 1)
        print(f"| {group} | {name} | {per_msg:,.0f} | {per_delivery:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
