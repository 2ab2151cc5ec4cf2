"""Where a synchronous request's time goes, end to end through a real
``ringcast broker``. Each round trip picks at random a requester (a ringcast
client, or a minimal raw DEALER that speaks the protocol with one
C.Writer/C.Reader call each way) and a responder (a ringcast inline handler,
or a minimal raw DEALER), or goes REQ -> ``zmq.proxy`` -> REP, or direct
REQ -> REP; so the machine's drift hits every row alike::

    python benchmarks/reqrep_parts.py [--n 24000] [--spin-us US]

"minimal -> minimal" is what the broker's four socket hops cost with next to
no client code; the rows with "ringcast" add its requester, its responder,
or both. The issue's target compares the first row with the last.
"""

from __future__ import annotations

import argparse
import collections
import random
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import zmq

from ringcast import _codec as C
from ringcast import errors
from ringcast.client import connect

PAYLOAD = b"x" * 16
WARMUP = 1000

RINGCAST_RESPONDER = """
import ringcast, threading
c = ringcast.connect({url!r}, timeout=30)
c.serve("svc.rc", lambda m: m.payload)
c.flush(timeout=30)
threading.Event().wait(3600)
"""

MINIMAL_RESPONDER = """
import zmq
from ringcast import _codec as C
s = zmq.Context().socket(zmq.DEALER)
s.connect({url!r})
w = C.Writer(256)
w.record(C.HELLO, C.PROTOCOL_VERSION, 30_000, "minimal-responder")
s.send(w.take())
s.recv()   # WELCOME: HELLO goes alone in its frame
w.record(C.SERVE, 1, "svc.min", 16)
s.send(w.take())
Reader, Writer, RQST, REP = C.Reader, C.Writer, C.RQST, C.REP
while True:
    r = Reader(s.recv())
    w = Writer(256)
    while (rec := r.next()) is not None:
        if rec[0] == RQST:
            w.record(REP, rec[1], rec[2], None, rec[-1])
    out = w.take()
    if out:
        s.send(out)
"""

REP = """
import zmq
s = zmq.Context().socket(zmq.REP)
s.{how}({url!r})
while True:
    s.send(s.recv())
"""

PROXY = """
import zmq
ctx = zmq.Context()
front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
front.bind({front!r})
back.bind({back!r})
zmq.proxy(front, back)
"""


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def minimal_requester(url: str) -> Callable[[str], object]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    w = C.Writer(64)
    w.record(C.HELLO, C.PROTOCOL_VERSION, 30_000, "minimal-requester")
    sock.send(w.take())
    sock.recv()   # WELCOME
    rid = 0
    Reader, Writer, REQ, REPLY = C.Reader, C.Writer, C.REQ, C.REPLY

    def request(service: str) -> object:
        nonlocal rid
        rid += 1
        w = Writer(256)
        w.record(REQ, rid, service, 5000, None, PAYLOAD)
        sock.send(w.take())
        while True:   # PCREDIT may come in a frame of its own
            r = Reader(sock.recv())
            while (rec := r.next()) is not None:
                if rec[0] == REPLY and rec[1] == rid:
                    return rec
    return request


def req_socket(url: str) -> Callable[[], object]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)

    def request() -> object:
        sock.send(PAYLOAD)
        return sock.recv()
    return request


def wait_served(client, service: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.request(service, PAYLOAD, timeout=1)
            return
        except errors.RingcastError:   # NoResponders until its SERVE is applied
            if time.monotonic() > deadline:
                raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24000, help="round trips, all rows together")
    ap.add_argument("--spin-us", type=int, default=None,
                    help="the broker's --spin-us (default: as `ringcast broker` runs)")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "ringcast", "broker", "--bind", "tcp://127.0.0.1:0"]
    if args.spin_us is not None:
        cmd += ["--spin-us", str(args.spin_us)]
    procs: List[subprocess.Popen] = []

    def spawn(script: str, **kw: str) -> None:
        procs.append(subprocess.Popen([sys.executable, "-c", script.format(**kw)]))

    lat: Dict[str, List[float]] = collections.defaultdict(list)
    broker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(broker)
    try:
        assert broker.stdout is not None
        url = broker.stdout.readline().split()[-1]   # "... listening on URL"
        direct, front, back = free_endpoint(), free_endpoint(), free_endpoint()
        spawn(RINGCAST_RESPONDER, url=url)
        spawn(MINIMAL_RESPONDER, url=url)
        spawn(REP, how="bind", url=direct)
        spawn(PROXY, front=front, back=back)
        spawn(REP, how="connect", url=back)
        with connect(url, timeout=30) as client:
            for service in ("svc.rc", "svc.min"):
                wait_served(client, service)
            minimal = minimal_requester(url)
            rows: Dict[str, Callable[[], object]] = {
                "ringcast -> ringcast": lambda: client.request("svc.rc", PAYLOAD, timeout=5),
                "ringcast -> minimal": lambda: client.request("svc.min", PAYLOAD, timeout=5),
                "minimal -> ringcast": lambda: minimal("svc.rc"),
                "minimal -> minimal": lambda: minimal("svc.min"),
                "REQ -> zmq.proxy -> REP": req_socket(front),
                "direct REQ -> REP": req_socket(direct),
            }
            names = list(rows)
            clock = time.perf_counter
            for i in range(WARMUP + args.n):
                name = random.choice(names)
                t = clock()
                rows[name]()
                if i >= WARMUP:
                    lat[name].append(clock() - t)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    base = statistics.median(lat["direct REQ -> REP"])
    print(f"{'requester -> responder':24s} {'p50 us':>8s} {'p90 us':>8s} {'x direct':>9s}")
    for name in names:
        v = sorted(lat[name])
        p50 = statistics.median(v)
        print(f"{name:24s} {p50 * 1e6:8.1f} {v[int(len(v) * 0.9)] * 1e6:8.1f} "
              f"{p50 / base:8.2f}x")


if __name__ == "__main__":
    main()
