"""The broker's own cost per sync round trip, without timing noise: one
thread opens a Broker's sockets and steps its loop by hand (``_step``), with
a raw requester and a raw responder on inproc sockets of the same process,
so every run executes the same instructions::

    python benchmarks/broker_step.py                 # us per pass, best of 7
    python benchmarks/broker_step.py --callgrind     # instructions per round trip

``--callgrind`` runs this script under ``valgrind --tool=callgrind`` twice
(N and 4N round trips) and divides the difference by 3N: the count of one
round trip, the raw clients' few calls included, start-up excluded. It moves
by ~0.1% from run to run, so a change of a few hundred instructions in the
broker's pass shows.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Tuple

import zmq

from ringcast import _codec as C
from ringcast.broker import Broker

PAYLOAD = b"x" * 16


def round_trip() -> Callable[[int], Tuple[int, int]]:
    """A broker and two raw sessions; returns one request's round trip,
    which times the broker's REQ pass and its REP pass (ns)."""
    broker = Broker("inproc://broker-step", spin=0)
    broker._open()
    broker._loop_ident = threading.get_ident()   # answers run here, as on the loop
    sock = broker._sock
    assert sock is not None

    def step() -> None:
        broker._step(sock, time.monotonic())

    def session(name: str) -> zmq.Socket:
        s = sock.context.socket(zmq.DEALER)
        s.connect("inproc://broker-step")
        w = C.Writer(64)
        w.record(C.HELLO, C.PROTOCOL_VERSION, 30_000, name)
        s.send(w.take())
        return s

    requester, responder = session("requester"), session("responder")
    step()
    requester.recv()   # WELCOME
    responder.recv()
    w = C.Writer(64)
    w.record(C.SERVE, 1, "svc", 16)
    responder.send(w.take())
    step()
    clock = time.perf_counter_ns
    Reader, Writer, REQ, RQST, REP, REPLY = C.Reader, C.Writer, C.REQ, C.RQST, C.REP, C.REPLY

    def one(rid: int) -> Tuple[int, int]:
        w = Writer(256)
        w.record(REQ, rid, "svc", 5000, None, PAYLOAD)
        requester.send(w.take())
        t0 = clock()
        step()
        t1 = clock()
        r = Reader(responder.recv())   # PCREDIT may ride with the RQST
        w = Writer(256)
        while (rec := r.next()) is not None:
            if rec[0] == RQST:
                w.record(REP, rec[1], rec[2], None, rec[-1])
        responder.send(w.take())
        t2 = clock()
        step()
        t3 = clock()
        while not any(e[0] == REPLY for e in Reader(requester.recv()).events()):
            pass
        return t1 - t0, t3 - t2
    return one


def callgrind(n: int) -> None:
    """Instructions per round trip: N and 4N under callgrind, main thread."""
    counts = []
    with tempfile.TemporaryDirectory() as tmp:
        for runs in (n, 4 * n):
            out = os.path.join(tmp, f"cg.{runs}")
            subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                            f"--callgrind-out-file={out}", sys.executable, __file__,
                            "--count", str(runs)], check=True, stderr=subprocess.DEVNULL)
            main_thread = sorted(glob.glob(out + "-*"))[0]
            text = subprocess.run(["callgrind_annotate", main_thread], check=True,
                                  capture_output=True, text=True).stdout
            total = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text)
            assert total is not None, text[:500]
            counts.append(int(total.group(1).replace(",", "")))
    print(f"{(counts[1] - counts[0]) / (3 * n):,.0f} instructions per round trip")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--callgrind", action="store_true", help="count instructions instead")
    ap.add_argument("--n", type=int, default=1000, help="round trips of the short run")
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.callgrind:
        callgrind(args.n)
        return
    one = round_trip()
    for rid in range(1, 301):   # warm-up
        one(rid)
    if args.count:   # one run under callgrind: no timing
        for rid in range(1000, 1000 + args.count):
            one(rid)
        return
    best_req = best_rep = float("inf")
    rid = 1000
    for _ in range(7):
        reqs, reps = [], []
        for _ in range(3000):
            rid += 1
            a, b = one(rid)
            reqs.append(a)
            reps.append(b)
        best_req = min(best_req, statistics.median(reqs))
        best_rep = min(best_rep, statistics.median(reps))
    print(f"REQ pass {best_req / 1000:.2f} us, REP pass {best_rep / 1000:.2f} us "
          "(median of 3000, best of 7)")


if __name__ == "__main__":
    main()
