"""Instructions per message (or request) in each process through the broker.

pub/sub: a publisher (a ``publish()`` loop in a function), a ``ringcast
broker`` and a subscriber (``recv_many`` or ``recv_payloads``) run as in
``ringcast bench pubsub``. reqrep: an asyncio requester keeping ``--inflight``
requests outstanding, the broker and a sync responder echoing on its I/O
thread, as in ``ringcast bench reqrep-pipelined``. One of the three runs
under ``valgrind --tool=callgrind``. Each role is measured twice, with N and
4N messages, and the difference divided by 3N is what one message costs that
process in user space (ZeroMQ's I/O thread included, the kernel not):
start-up and set-up cancel out, and the count does not drift with the
machine's load as timings do::

    python benchmarks/callgrind_broker.py                 # all three roles, a table
    python benchmarks/callgrind_broker.py --roles broker --n 50000 --top 15
    python benchmarks/callgrind_broker.py --pattern reqrep --n 20000

The publisher's figure includes the benchmark's own loop (about 400
instructions per message of CPython's eval loop and ``range``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

PY = sys.executable

SUBSCRIBER = """
import ringcast
c = ringcast.connect({url!r}, timeout=60)
s = c.subscribe("bench", capacity=65536)
c.flush(timeout=60)
print("ready", flush=True)
got = 0
while got < {n}:
    got += len(s.{take}(65536, timeout=60))
print("done", flush=True)
"""

# a loop of publish() or, for a queue (declared first), of send()
SENDER = """
import ringcast, sys
c = ringcast.connect({url!r}, timeout=60, heartbeat=10)
{declare}
sys.stdin.readline()
def run(p=c.{method}, payload=b"x" * {size}):
    for _ in range({n}):
        p("bench", payload)
run()
c.flush(timeout=600)
print("published", flush=True)
"""
PUBLISHER = SENDER.replace("{declare}", "").replace("{method}", "publish")
PRODUCER = SENDER.replace("{declare}", 'c.declare_queue("bench", capacity=65536)\n'
                          'c.flush(timeout=60)').replace("{method}", "send")


RESPONDER = """
import ringcast, threading
c = ringcast.connect({url!r}, timeout=60, heartbeat=10)   # slow under valgrind
done = threading.Event()
count = [0]
def echo(msg):
    count[0] += 1
    if count[0] == {n}:
        done.set()
    return msg.payload
c.serve("bench", echo, concurrency={inflight})
c.flush(timeout=60)
print("ready", flush=True)
done.wait(600)
c.close()   # the last reply leaves after its handler set done: send it
print("done", flush=True)
"""

REQUESTER = """
import asyncio, sys, ringcast
from ringcast import aio
async def main():
    c = await aio.connect({url!r}, timeout=60, heartbeat=10)
    payload = b"x" * {size}
    while True:   # the responder's SERVE may reach the broker after our first REQ
        try:
            await c.request("bench", payload, timeout=60)
            break
        except ringcast.errors.NoResponders:
            await asyncio.sleep(0.01)
    sys.stdin.readline()
    left = [{n} - 1]
    async def worker():
        while left[0] > 0:
            left[0] -= 1
            await c.request("bench", payload, timeout=600)
    await asyncio.gather(*(worker() for _ in range({inflight})))
    await c.close()
asyncio.run(main())
print("published", flush=True)
"""

CONSUMER = """
import ringcast
c = ringcast.connect({url!r}, timeout=60, heartbeat=10)
c.declare_queue("bench", capacity=65536)
q = c.consume("bench", prefetch=1024)
c.flush(timeout=60)
print("ready", flush=True)
def run(recv_many=q.recv_many):   # in a function, as the sender's loop: locals, not globals
    got = 0
    while got < {n}:
        for m in recv_many(1024, timeout=60):
            m.ack()
            got += 1
run()
c.flush(timeout=60)
print("done", flush=True)
"""

# pattern -> (the side that takes, the side that sends)
PATTERNS = {"pubsub": (("subscriber", SUBSCRIBER), ("publisher", PUBLISHER)),
            "reqrep": (("responder", RESPONDER), ("requester", REQUESTER)),
            "queue": (("consumer", CONSUMER), ("producer", PRODUCER))}


def _run(pattern: str, role: str, n: int, size: int, take: str, inflight: int,
         out: str) -> None:
    """One run of ``n`` messages with ``role`` under callgrind."""
    (taker, take_script), (sender, send_script) = PATTERNS[pattern]
    fields = {"n": n, "size": size, "take": take, "inflight": inflight}
    vg = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}"]
    broker = subprocess.Popen(
        (vg if role == "broker" else []) + [PY, "-m", "ringcast", "broker", "--bind",
                                            "tcp://127.0.0.1:0", "--spin-us", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = broker.stdout.readline().split()[-1]  # type: ignore[union-attr]
        sub = subprocess.Popen(
            (vg if role == taker else []) + [PY, "-c", take_script.format(url=url, **fields)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        pub = subprocess.Popen(
            (vg if role == sender else []) + [PY, "-c", send_script.format(url=url, **fields)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)   # its errors show
        assert pub.stdin is not None and pub.stdout is not None
        if role == sender:
            time.sleep(8)   # valgrind's start: the sender must be connected first
        pub.stdin.write("go\n")
        pub.stdin.flush()
        assert pub.stdout.readline().strip() == "published"
        assert sub.stdout.readline().strip() == "done"
        pub.wait(60)
        sub.wait(60)
    finally:
        broker.terminate()
        broker.wait(60)


def _self_costs(path: str) -> Dict[str, int]:
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no",
                           "--tree=none", "--auto=no", path],
                          capture_output=True, text=True, check=True).stdout
    costs: Dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2).split(" [")[0].split(":", 1)[-1]
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def measure(pattern: str, role: str, n: int, size: int, take: str,
            inflight: int) -> Tuple[float, List[Tuple[float, str]]]:
    """Instructions per message for ``role``, and per function, largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        counts = []
        for k in (n, 4 * n):
            out = os.path.join(tmp, f"{role}.{k}.out")
            _run(pattern, role, k, size, take, inflight, out)
            counts.append(_self_costs(out))
    low, high = counts
    per = sorted(((high.get(f, 0) - low.get(f, 0)) / (3 * n), f) for f in set(low) | set(high))
    per.reverse()
    return sum(v for v, _ in per), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pattern", choices=sorted(PATTERNS), default="pubsub")
    ap.add_argument("--roles", help="default: all three (publisher,broker,subscriber or "
                    "requester,broker,responder)")
    ap.add_argument("--n", type=int, default=100_000, help="messages of the short run (4x long)")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--recv", choices=("messages", "payloads"), default="messages")
    ap.add_argument("--inflight", type=int, default=1000, help="reqrep: requests in flight")
    ap.add_argument("--top", type=int, default=0, help="also print the costliest functions")
    args = ap.parse_args()
    take = "recv_many" if args.recv == "messages" else "recv_payloads"
    (taker, _), (sender, _) = PATTERNS[args.pattern]
    roles = args.roles.split(",") if args.roles else [sender, "broker", taker]
    if args.pattern == "pubsub":
        print(f"{args.size}-byte payloads, subscriber {take}; instructions per message")
    elif args.pattern == "queue":
        print(f"{args.size}-byte payloads, send() loop, recv_many + ack() each, prefetch "
              "1024; instructions per message")
    else:
        print(f"{args.size}-byte payloads, {args.inflight} requests in flight; "
              "instructions per request")
    for role in roles:
        if role not in (sender, "broker", taker):
            ap.error(f"{args.pattern} has no role {role!r}")
        total, per = measure(args.pattern, role, args.n, args.size, take, args.inflight)
        print(f"{role:<12} {total:8.0f}")
        for v, f in per[:args.top]:
            print(f"    {v:8.1f}  {f[:100]}")


if __name__ == "__main__":
    main()
