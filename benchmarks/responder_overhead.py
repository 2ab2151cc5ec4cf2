"""What a ringcast responder adds to one synchronous round trip, with no
broker in the way: this script plays the broker (a raw ROUTER that welcomes
the client and sends one RQST at a time) and times RQST -> REP against a
``ringcast.connect(...).serve(...)`` responder in another process, and the
same frames against a raw DEALER that echoes them::

    python benchmarks/responder_overhead.py [--n 3000] [--rounds 3]
    python benchmarks/responder_overhead.py --callgrind   # instructions per request

With ``--callgrind`` the responder runs under valgrind twice (N and 4N
requests) and the difference over 3N is what one request costs it in user
space. That count moves by ~15% from run to run: it includes each pass of the
responder's I/O loop, and how many passes one request takes depends on timing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from typing import List, Optional

import zmq

from ringcast import _codec as C

PY = sys.executable
WARMUP = 200

RESPONDER = """
import ringcast, threading
c = ringcast.connect({url!r}, timeout=60, heartbeat=30)
c.serve("svc", lambda m: m.payload, concurrency=16)
c.flush(timeout=60)
threading.Event().wait(3600)
"""

RAW_ECHO = """
import zmq
s = zmq.Context().socket(zmq.DEALER)
s.connect({url!r})
s.send(b"hello")
while True:
    s.send(s.recv())
"""


def _records(frame: bytes) -> List[tuple]:
    reader = C.Reader(frame)
    out = []
    while (rec := reader.next()) is not None:
        out.append(rec)
    return out


def _one(frame_cmd: int, *fields: object) -> bytes:
    w = C.Writer(256)
    w.record(frame_cmd, *fields)
    return w.take()


def run(kind: str, n: int, callgrind_out: Optional[str] = None) -> float:
    """p50 in microseconds of ``n`` RQST -> REP round trips (after a warm-up)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    url = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    prefix = (["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind_out}"]
              if callgrind_out else [])
    script = (RESPONDER if kind == "ringcast" else RAW_ECHO).format(url=url)
    proc = subprocess.Popen([*prefix, PY, "-c", script],
                            stderr=subprocess.DEVNULL if callgrind_out else None)
    try:
        router.setsockopt(zmq.RCVTIMEO, 120_000)
        hid = 0
        while True:   # the handshake: HELLO -> WELCOME, SERVE -> its publish credit
            ident, frame = router.recv_multipart()
            if kind == "raw":
                break
            for rec in _records(frame):
                if rec[0] == C.HELLO:
                    router.send_multipart([ident, _one(
                        C.WELCOME, rec[1], 30_000, 1 << 20, 1 << 20, 1024, 1 << 20, "fake")])
                elif rec[0] == C.SERVE:
                    hid = rec[1]
                    router.send_multipart([ident, _one(C.PCREDIT, len(frame))])
            if hid:
                break
        payload = b"x" * 16
        lat = []
        clock = time.perf_counter
        for tag in range(1, WARMUP + n + 1):
            rqst = _one(C.RQST, hid, tag, 10_000, "svc", None, payload)
            t = clock()
            router.send_multipart([ident, rqst])
            while True:   # HB or credit may come first
                _, back = router.recv_multipart()
                if kind == "raw" or any(rec[0] == C.REP for rec in _records(back)):
                    break
            lat.append(clock() - t)
        return statistics.median(lat[WARMUP:]) * 1e6
    finally:
        if callgrind_out:
            proc.terminate()   # valgrind writes its output on SIGTERM
        else:
            proc.kill()
        proc.wait()
        router.close()


def _total(path: str) -> int:
    out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out)
    assert m, "no PROGRAM TOTALS in callgrind_annotate's output"
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="round trips per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="raw and ringcast, alternated")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per request of the ringcast responder instead")
    args = ap.parse_args()
    if args.callgrind:
        n = min(args.n, 1000)
        totals = []
        for k in (n, 4 * n):
            out = f"/tmp/ringcast-responder-{k}.callgrind"
            run("ringcast", k, out)
            totals.append(_total(out))
        print(f"ringcast responder: {(totals[1] - totals[0]) / (3 * n):,.0f} "
              f"instructions per request")
        return
    for _ in range(args.rounds):
        for kind in ("raw", "ringcast"):
            print(f"{kind:9s} responder  p50 {run(kind, args.n):7.1f} us", flush=True)


if __name__ == "__main__":
    main()
