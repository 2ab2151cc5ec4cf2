"""Instructions per message in each process of pub/sub through the broker.

A publisher (a ``publish()`` loop in a function), a ``ringcast broker`` and
a subscriber (``recv_many`` or ``recv_payloads``) run as in ``ringcast bench
pubsub``; one of the three runs under ``valgrind --tool=callgrind``. Each
role is measured twice, with N and 4N messages, and the difference divided
by 3N is what one message costs that process in user space (ZeroMQ's I/O
thread included, the kernel not): start-up and set-up cancel out, and the
count does not drift with the machine's load as timings do::

    python benchmarks/callgrind_broker.py                 # all three roles, a table
    python benchmarks/callgrind_broker.py --roles broker --n 50000 --top 15

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

PUBLISHER = """
import ringcast, sys
c = ringcast.connect({url!r}, timeout=60)
sys.stdin.readline()
def run(p=c.publish, payload=b"x" * {size}):
    for _ in range({n}):
        p("bench", payload)
run()
c.flush(timeout=600)
print("published", flush=True)
"""


def _run(role: str, n: int, size: int, take: str, out: str) -> None:
    """One pub/sub run of ``n`` messages with ``role`` under callgrind."""
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    broker = subprocess.Popen(
        (vg if role == "broker" else []) + [PY, "-m", "ringcast", "broker", "--bind",
                                            "tcp://127.0.0.1:0", "--spin-us", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = broker.stdout.readline().split()[-1]  # type: ignore[union-attr]
        sub = subprocess.Popen(
            (vg if role == "subscriber" else []) +
            [PY, "-c", SUBSCRIBER.format(url=url, n=n, take=take)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        pub = subprocess.Popen(
            (vg if role == "publisher" else []) +
            [PY, "-c", PUBLISHER.format(url=url, n=n, size=size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert pub.stdin is not None and pub.stdout is not None
        if role == "publisher":
            time.sleep(8)   # valgrind's start: the publisher must be connected first
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


def measure(role: str, n: int, size: int, take: str) -> Tuple[float, List[Tuple[float, str]]]:
    """Instructions per message for ``role``, and per function, largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        counts = []
        for k in (n, 4 * n):
            out = os.path.join(tmp, f"{role}.{k}.out")
            _run(role, k, size, take, out)
            counts.append(_self_costs(out))
    low, high = counts
    per = sorted(((high.get(f, 0) - low.get(f, 0)) / (3 * n), f) for f in set(low) | set(high))
    per.reverse()
    return sum(v for v, _ in per), per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--roles", default="publisher,broker,subscriber")
    ap.add_argument("--n", type=int, default=100_000, help="messages of the short run (4x long)")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--recv", choices=("messages", "payloads"), default="messages")
    ap.add_argument("--top", type=int, default=0, help="also print the costliest functions")
    args = ap.parse_args()
    take = "recv_many" if args.recv == "messages" else "recv_payloads"
    print(f"{args.size}-byte payloads, subscriber {take}; instructions per message")
    for role in args.roles.split(","):
        total, per = measure(role, args.n, args.size, take)
        print(f"{role:<12} {total:8.0f}")
        for v, f in per[:args.top]:
            print(f"    {v:8.1f}  {f[:100]}")


if __name__ == "__main__":
    main()
