"""What a broker in the middle costs a synchronous round trip, with no
ringcast at all: p50 of pyzmq REQ -> REP direct, through ``zmq.proxy``
(ROUTER/DEALER, C), and through a minimal Python ROUTER/DEALER proxy that
sleeps in poll or spins for a while after each message:

    python benchmarks/hop_latency.py [--n 5000] [--spin-us 1000]

The floor any broker pays here: two more socket hops per round trip, each
waking a libzmq I/O thread on both sides. docs/benchmarks.md ("Broker")
compares ringcast's request/reply with these.
"""

import argparse
import multiprocessing as mp
import socket
import time

import zmq


def _endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _rep(endpoint, bind):
    s = zmq.Context().socket(zmq.REP)
    s.bind(endpoint) if bind else s.connect(endpoint)
    while True:
        s.send(s.recv())


def _c_proxy(front, back):
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    zmq.proxy(f, b)


def _py_proxy(front, back, spin):
    """Forward both ways; after a message, poll without sleeping for ``spin`` s."""
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    poller = zmq.Poller()
    poller.register(f, zmq.POLLIN)
    poller.register(b, zmq.POLLIN)
    last = 0.0
    while True:
        moved = False
        for src, dst in ((f, b), (b, f)):
            try:
                dst.send_multipart(src.recv_multipart(zmq.NOBLOCK))
                moved = True
            except zmq.Again:
                pass
        if moved:
            last = time.monotonic()
        elif time.monotonic() - last >= spin:
            poller.poll(1000)


def _p50_us(endpoint, n):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.connect(endpoint)
    lat = []
    for i in range(n + 200):   # the first 200 warm up connections and caches
        t = time.perf_counter()
        s.send(b"x" * 16)
        s.recv()
        if i >= 200:
            lat.append(time.perf_counter() - t)
    s.close(0)
    lat.sort()
    return lat[len(lat) // 2] * 1e6


def _measure(n, servers, endpoint):
    procs = [mp.Process(target=t, args=a, daemon=True) for t, a in servers]
    for p in procs:
        p.start()
    try:
        return _p50_us(endpoint, n)
    finally:
        for p in procs:
            p.kill()
            p.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="round trips per case")
    ap.add_argument("--spin-us", type=int, default=1000)
    args = ap.parse_args()
    cases = []
    ep = _endpoint()
    cases.append(("REQ -> REP direct", [(_rep, (ep, True))], ep))
    front, back = _endpoint(), _endpoint()
    cases.append(("via zmq.proxy (C)", [(_c_proxy, (front, back)), (_rep, (back, False))], front))
    front, back = _endpoint(), _endpoint()
    cases.append(("via Python proxy, sleeping",
                  [(_py_proxy, (front, back, 0.0)), (_rep, (back, False))], front))
    front, back = _endpoint(), _endpoint()
    cases.append((f"via Python proxy, spinning {args.spin_us} us",
                  [(_py_proxy, (front, back, args.spin_us / 1e6)), (_rep, (back, False))],
                  front))
    direct = None
    for name, servers, endpoint in cases:
        p50 = _measure(args.n, servers, endpoint)
        direct = direct or p50
        print(f"{name:34s} p50 {p50:7.1f} us  {p50 / direct:4.2f}x direct", flush=True)


if __name__ == "__main__":
    main()
