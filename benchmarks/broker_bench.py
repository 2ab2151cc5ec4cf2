"""Broker throughput and latency against raw pyzmq baselines, in one run.

    python benchmarks/broker_bench.py [--n 1000000] [--size 16] [--batch 1000]

Every case runs publisher, subscriber (and broker) as separate processes on
this machine; rates are measured at the receiver, first to last message.
Results are printed as a table; see docs/benchmarks.md ("Broker").
"""

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

import zmq

import ringcast

# child processes import the same ringcast as this script (installed or built in place)
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ringcast.__file__)))


def _ipc(name):
    return f"ipc://{tempfile.gettempdir()}/rc-bench-{os.getpid()}-{name}"


# -- raw pyzmq baselines -----------------------------------------------------------
def raw_sub(url, n, q, topic=False):
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(url)
    q.put("ready")
    recv = s.recv_multipart if topic else s.recv
    recv()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        recv()
    q.put(time.perf_counter() - t0)
    s.close(0)


def raw_pub(url, n, size, topic=False, bind=True):
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.SNDHWM, 0)
    s.bind(url) if bind else s.connect(url)
    time.sleep(0.5)   # slow-joiner: let the subscription propagate (baseline only)
    payload = b"x" * size
    if topic:
        for _ in range(n):
            s.send_multipart((b"orders.placed", payload))
    else:
        send = s.send
        for _ in range(n):
            send(payload)
    time.sleep(1)
    s.close(0)


def proxy(front, back):
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    xsub.setsockopt(zmq.RCVHWM, 0)
    xpub.setsockopt(zmq.SNDHWM, 0)
    xsub.bind(front)
    xpub.bind(back)
    zmq.proxy(xsub, xpub)


def bench_raw_pubsub(n, size):
    url = "tcp://127.0.0.1:%d" % _free_port()
    q = mp.Queue()
    sub = mp.Process(target=raw_sub, args=(url, n, q))
    pub = mp.Process(target=raw_pub, args=(url, n, size))
    pub.start()
    time.sleep(0.2)
    sub.start()
    q.get()
    dt = q.get(timeout=300)
    pub.join()
    sub.join()
    return n / dt


def bench_proxy(n, size):
    front, back = "tcp://127.0.0.1:%d" % _free_port(), "tcp://127.0.0.1:%d" % _free_port()
    px = mp.Process(target=proxy, args=(front, back), daemon=True)
    px.start()
    time.sleep(0.3)
    q = mp.Queue()
    sub = mp.Process(target=raw_sub, args=(back, n, q, True))
    sub.start()
    q.get()
    pub = mp.Process(target=raw_pub, args=(front, n, size, True, False))
    pub.start()
    dt = q.get(timeout=300)
    pub.join()
    sub.join()
    px.terminate()
    return n / dt


def raw_rep(url, n):
    ctx = zmq.Context()
    s = ctx.socket(zmq.REP)
    s.bind(url)
    for _ in range(n):
        s.send(s.recv())
    s.close(0)


def bench_raw_reqrep(n, size):
    url = "tcp://127.0.0.1:%d" % _free_port()
    p = mp.Process(target=raw_rep, args=(url, n))
    p.start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ)
    s.connect(url)
    lat = []
    payload = b"x" * size
    for _ in range(n):
        t = time.perf_counter()
        s.send(payload)
        s.recv()
        lat.append(time.perf_counter() - t)
    s.close(0)
    p.join()
    return statistics.median(lat[n // 10:]) * 1e6


# -- ringcast ---------------------------------------------------------------------------
def rc_sub(url, n, q, payloads=False, batch=1000):
    from ringcast.client import connect

    with connect(url) as c:
        sub = c.subscribe("orders.>", capacity=65536)
        c.flush()
        q.put("ready")
        if payloads:   # the batch fast path: no Message objects
            def take():
                return sub.recv_payloads(batch, timeout=60)
        else:
            def take():
                return sub.recv_many(batch, timeout=60)
        got = len(take())
        t0 = time.perf_counter()
        while got < n:
            got += len(take())
        q.put((time.perf_counter() - t0) * n / max(1, n - 1))


def rc_pub(url, n, size, many):
    from ringcast.client import connect

    payload = b"x" * size
    with connect(url) as c:
        if many:
            batch = [payload] * 1000
            for _ in range(n // 1000):
                c.publish_many("orders.placed", batch)
        else:
            publish = c.publish
            for _ in range(n):
                publish("orders.placed", payload)
        c.flush(60)


def rc_responder(url, q):
    from ringcast.client import connect

    with connect(url) as c:
        c.serve("echo", lambda m: m.payload)
        c.flush()
        q.put("ready")
        q.get()


def start_broker(url):
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    b = subprocess.Popen([sys.executable, "-m", "ringcast", "broker", "--bind", url],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    line = b.stdout.readline()
    return b, line.split()[-1]


def bench_rc_pubsub(url, n, size, many=False, payloads=False, batch=1000):
    q = mp.Queue()
    sub = mp.Process(target=rc_sub, args=(url, n, q, payloads, batch))
    sub.start()
    q.get(timeout=30)
    pub = mp.Process(target=rc_pub, args=(url, n, size, many))
    pub.start()
    dt = q.get(timeout=300)
    pub.join()
    sub.join()
    return n / dt


def bench_rc_reqrep(url, n, size):
    from ringcast.client import connect

    q = mp.Queue()
    r = mp.Process(target=rc_responder, args=(url, q))
    r.start()
    q.get(timeout=30)
    lat = []
    payload = b"x" * size
    try:
        with connect(url) as c:
            for _ in range(n):
                t = time.perf_counter()
                c.request("echo", payload)
                lat.append(time.perf_counter() - t)
    finally:   # as in bench_rc_pipelined: no responder outlives a failure
        q.put("done")
        r.join(10)
        if r.is_alive():
            r.terminate()
            r.join()
    return statistics.median(lat[n // 10:]) * 1e6


def rc_aio_responder(url, q, concurrency):
    from ringcast import aio

    async def main():
        c = await aio.connect(url)
        # not the sync round's "echo": its responder's session can outlive its
        # process (a BYE lost at exit) and be handed requests of this round
        c.serve("echo.aio", lambda m: m.payload, concurrency=concurrency)
        await c.flush()
        q.put("ready")
        await asyncio.get_running_loop().run_in_executor(None, q.get)
        await c.close()

    asyncio.run(main())


def bench_rc_pipelined(url, n, size, inflight=1000, concurrency=256):
    """One asyncio client keeps ``inflight`` requests outstanding (worker
    tasks, not a semaphore: asyncio.Semaphore wake-ups are O(waiters))."""
    from ringcast import aio

    q = mp.Queue()
    r = mp.Process(target=rc_aio_responder, args=(url, q, concurrency))
    r.start()
    q.get(timeout=30)
    payload = b"x" * size

    async def main():
        c = await aio.connect(url)
        left = [n]

        async def worker():
            while left[0] > 0:
                left[0] -= 1
                await c.request("echo.aio", payload, timeout=30)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        dt = time.perf_counter() - t0
        await c.close()
        return n / dt

    try:
        return asyncio.run(main())
    finally:
        # also when a request failed: a responder left running would reconnect
        # to the stopped broker forever ("session lost" every 3 s) and hold
        # this process at exit, which joins its children
        q.put("done")
        r.join(10)
        if r.is_alive():
            r.terminate()
            r.join()


def bench_rss_soak(url, seconds, size):
    """A publisher at full speed, one subscriber that never reads (drop_oldest
    policy, default capacity); returns the broker's RSS samples in MiB."""

    from ringcast.client import connect

    stop = mp.Event()
    pub = mp.Process(target=rc_flood, args=(url, size, stop))
    with connect(url) as stalled:
        stalled.subscribe("orders.>", overflow="drop_oldest")
        stalled.flush()
        pub.start()
        samples = []
        for _ in range(seconds):
            time.sleep(1)
            stats = stalled.stats()
            samples.append((stats["memory_rss"] / 2**20, stats["dropped"]))
        stop.set()
        pub.join()
    return samples


def rc_flood(url, size, stop):
    from ringcast.client import connect

    payload = b"x" * size
    batch = [payload] * 1000
    with connect(url) as c:
        while not stop.is_set():
            c.publish_many("orders.placed", batch)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="messages per pub/sub case")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--requests", type=int, default=5000, help="sync round trips")
    ap.add_argument("--pipelined", type=int, default=100_000, help="asyncio requests")
    ap.add_argument("--soak", type=int, default=30, help="seconds of the stalled-subscriber run")
    ap.add_argument("--batch", type=int, default=1000,
                    help="most messages a subscriber takes per call (as ringcast bench)")
    args = ap.parse_args()
    n, size = args.n, args.size
    rows = []
    rows.append(("pyzmq PUB->SUB direct, 1 frame/msg", bench_raw_pubsub(n, size), "msg/s"))
    rows.append(("zmq.proxy XSUB/XPUB, multipart", bench_proxy(min(n, 300_000), size), "msg/s"))
    broker, url = start_broker("tcp://127.0.0.1:0")
    try:
        rows.append(("ringcast broker, publish() loop",
                     bench_rc_pubsub(url, n, size, batch=args.batch), "msg/s"))
        rows.append(("ringcast broker, publish() -> recv_payloads",
                     bench_rc_pubsub(url, n, size, payloads=True, batch=args.batch), "msg/s"))
        rows.append(("ringcast broker, publish_many()",
                     bench_rc_pubsub(url, n, size, True, batch=args.batch), "msg/s"))
        raw_rr = bench_raw_reqrep(args.requests, size)
        rows.append(("pyzmq REQ<->REP direct, p50", raw_rr, "us"))
        rows.append(("ringcast sync request, p50", bench_rc_reqrep(url, args.requests, size),
                     "us"))
        rows.append(("ringcast asyncio pipelined requests",
                     bench_rc_pipelined(url, args.pipelined, size), "req/s"))
        soak = bench_rss_soak(url, args.soak, size) if args.soak else []
    finally:
        broker.terminate()
        broker.wait()
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>12,.0f} {unit}")
    by = {r[0]: r[1] for r in rows}
    raw = by["pyzmq PUB->SUB direct, 1 frame/msg"]
    prox = by["zmq.proxy XSUB/XPUB, multipart"]
    rc = by["ringcast broker, publish() loop"]
    fast = by["ringcast broker, publish() -> recv_payloads"]
    print(f"\nbroker publish() / raw PUB-SUB: {rc / raw:.2f}x (target 2.5x)")
    print(f"  with recv_payloads:           {fast / raw:.2f}x")
    print(f"broker publish() / zmq.proxy:   {rc / prox:.2f}x (target 10x)")
    if soak:
        print("\nbroker RSS (MiB) / dropped, one sample per second, stalled subscriber:")
        print("  " + ", ".join(f"{rss:.0f}/{drops}" for rss, drops in soak))
    print(f"sync request p50 / raw REQ-REP: "
          f"{by['ringcast sync request, p50'] / by['pyzmq REQ<->REP direct, p50']:.2f}x "
          f"(target <= 1.5x)")


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
