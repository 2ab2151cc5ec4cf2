"""Where a synchronous request's time goes, end to end through a real
``ringcast broker``. Each round trip picks at random a requester (a ringcast
client, or a minimal raw DEALER that speaks the protocol with one
C.Writer/C.Reader call each way) and a responder (a ringcast inline handler,
or a minimal raw DEALER), or goes REQ -> ``zmq.proxy`` -> REP, or through a
spinning forwarder, or direct REQ -> REP; so the machine's drift hits every
row alike::

    python benchmarks/reqrep_parts.py [--n 24000] [--spin-us US]
    python benchmarks/reqrep_parts.py --rounds 15

"minimal -> minimal" is what the broker's four socket hops cost with next to
no client code; the rows with "ringcast" add its requester, its responder,
or both. "spinning forwarder" is the floor of four hops: a Python ROUTER
that only swaps identities, polling (as the broker does around requests)
for REQUEST_SPIN after input. The issue's target compares the first row with
the last.

``--rounds R`` runs each row in a block of back-to-back round trips
(``--block`` seconds, rows shuffled per round), as ``ringcast bench reqrep``
does, and reports the median of the rounds' p50 ratios: a broker that spins
after input serves back-to-back requests without waking, which the
one-by-one interleaving hides. The forwarder row is in rounds only: one by
one, its spin after every request would hold a core the other rows need.
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
from responder_overhead import RAW_ECHO

from ringcast import _codec as C
from ringcast import errors
from ringcast.broker import REQUEST_SPIN
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

# swaps identities: [requester, payload] -> the responder gets requester +
# payload and echoes it; [responder, requester + payload] -> the requester
FORWARDER = """
import time, zmq
from ringcast._zsock import zget, zsend, EVENTS, POLLIN, NOBLOCK, SNDMORE
s = zmq.Context().socket(zmq.ROUTER)
print(s.bind_to_random_port("tcp://127.0.0.1"), flush=True)
responder = s.recv_multipart()[0]   # its first message names it
print("ready", flush=True)
recv, clock = s.recv, time.monotonic
while True:
    until = clock() + {spin}
    while not zget(s, EVENTS) & POLLIN and clock() < until:
        pass
    ident, frame = recv(), recv()
    if ident == responder:
        zsend(s, frame[:{idlen}], NOBLOCK | SNDMORE)
        zsend(s, frame[{idlen}:], NOBLOCK)
    else:
        zsend(s, responder, NOBLOCK | SNDMORE)
        zsend(s, ident + frame, NOBLOCK)
"""

FORWARDED_ID = b"requester"

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


def forwarded_requester(url: str) -> Callable[[], object]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, FORWARDED_ID)
    sock.connect(url)

    def request() -> object:
        sock.send(PAYLOAD)
        return sock.recv()
    return request


def one_by_one(rows: Dict[str, Callable[[], object]], n: int) -> Dict[str, List[float]]:
    """Latencies per row, each round trip's row chosen at random."""
    lat: Dict[str, List[float]] = collections.defaultdict(list)
    names = list(rows)
    clock = time.perf_counter
    for i in range(WARMUP + n):
        name = random.choice(names)
        t = clock()
        rows[name]()
        if i >= WARMUP:
            lat[name].append(clock() - t)
    return lat


def in_rounds(rows: Dict[str, Callable[[], object]], rounds: int,
              block: float) -> Dict[str, List[float]]:
    """Each round's p50 per row, rows run in blocks in a shuffled order."""
    p50s: Dict[str, List[float]] = collections.defaultdict(list)
    names = list(rows)
    clock = time.perf_counter
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            request, lat = rows[name], []
            for _ in range(WARMUP // 10):
                request()
            end = clock() + block
            while True:
                t = clock()
                request()
                done = clock()
                lat.append(done - t)
                if done > end:
                    break
            p50s[name].append(statistics.median(lat))
    return p50s


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
    ap.add_argument("--rounds", type=int, default=0,
                    help="run rows in blocks, this many rounds (default: one by one)")
    ap.add_argument("--block", type=float, default=0.15, help="seconds per row and round")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "ringcast", "broker", "--bind", "tcp://127.0.0.1:0"]
    if args.spin_us is not None:
        cmd += ["--spin-us", str(args.spin_us)]
    procs: List[subprocess.Popen] = []

    def spawn(script: str, **kw: object) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", script.format(**kw)],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p

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
        forwarder = spawn(FORWARDER, spin=REQUEST_SPIN, idlen=len(FORWARDED_ID))
        assert forwarder.stdout is not None
        forwarded = f"tcp://127.0.0.1:{forwarder.stdout.readline().strip()}"
        spawn(RAW_ECHO, url=forwarded)   # its b"hello" names it the responder
        forwarder.stdout.readline()   # "ready": the echo is its responder
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
            if args.rounds:
                rows["spinning forwarder"] = forwarded_requester(forwarded)
            if args.rounds:
                p50s = in_rounds(rows, args.rounds, args.block)
            else:
                lat = one_by_one(rows, args.n)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    if args.rounds:
        base_p50s = p50s["direct REQ -> REP"]
        print(f"{'requester -> responder':24s} {'p50 us':>8s} {'x direct':>9s} {'(range)':>13s}")
        for name in rows:
            ratios = sorted(a / b for a, b in zip(p50s[name], base_p50s))
            print(f"{name:24s} {statistics.median(p50s[name]) * 1e6:8.1f} "
                  f"{statistics.median(ratios):8.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})")
        return
    base = statistics.median(lat["direct REQ -> REP"])
    print(f"{'requester -> responder':24s} {'p50 us':>8s} {'p90 us':>8s} {'x direct':>9s}")
    for name in rows:
        v = sorted(lat[name])
        p50 = statistics.median(v)
        print(f"{name:24s} {p50 * 1e6:8.1f} {v[int(len(v) * 0.9)] * 1e6:8.1f} "
              f"{p50 / base:8.2f}x")


if __name__ == "__main__":
    main()
