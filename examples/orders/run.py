"""Run the orders example end to end: a broker and five service processes.

    python examples/orders/run.py

Starts ``ringcast broker`` on a free port, then inventory (request/reply),
billing (pub/sub), two competing shipping workers (a queue bound to
``orders.placed``) and the order service; prints what each did, checks that
every placed order was invoiced once and shipped once, and stops them all.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import ringcast

HERE = os.path.dirname(os.path.abspath(__file__))
# The services import common.py from here and the ringcast this runner imports.
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ringcast.__file__)))
ENV = dict(os.environ,
           PYTHONPATH=os.pathsep.join([HERE, PKG_ROOT, os.environ.get("PYTHONPATH", "")]),
           PYTHONUNBUFFERED="1")
LINES: "queue.Queue[str]" = queue.Queue()


SEEN: list = []


def start(*args: str, quiet: bool = False) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, env=ENV,
                         cwd=HERE, stderr=subprocess.DEVNULL if quiet else None)
    threading.Thread(target=lambda: [LINES.put(line.rstrip()) for line in p.stdout],
                     daemon=True).start()
    return p


def wait_for(pattern: str, count: int = 1, timeout: float = 30.0) -> list:
    """Echo output lines until ``count`` lines seen so far match ``pattern``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in SEEN if re.search(pattern, line)]
        if len(found) >= count:
            return found
        try:
            line = LINES.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise SystemExit(f"timed out waiting for {pattern!r}") from None
        print("  " + line)
        SEEN.append(line)


def order_ids(lines: list, pattern: str) -> list:
    """The order numbers of the lines that match ``pattern``, sorted."""
    return sorted(int(m.group(1)) for m in map(re.compile(pattern).search, lines) if m)


def all_handled_once(lines: list) -> bool:
    """Every order placed was invoiced once and shipped once, and no other was."""
    placed = order_ids(lines, r"^orders: order (\d+) \(.*\) placed$")
    return (placed == order_ids(lines, r"invoiced order (\d+)")
            == order_ids(lines, r"shipped order (\d+)"))


def main() -> int:
    broker = start("-m", "ringcast", "broker", "--bind", "tcp://127.0.0.1:0", quiet=True)
    url = wait_for(r"^ringcast broker listening on ")[0].split()[-1]
    procs = [broker]
    try:
        procs.append(start("inventory.py", url))
        procs.append(start("billing.py", url))
        procs += [start("shipping.py", url, f"shipping-{i}") for i in (1, 2)]
        wait_for(r": ready$", 4)
        procs.append(start("order_service.py", url))
        placed = int(wait_for(r"^orders: done, \d+ placed")[0].split()[2])
        shipped = wait_for(r"shipped order", placed) if placed else []
        billed = wait_for(r"invoiced order", placed) if placed else []
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    workers = {line.split(":")[0] for line in shipped}
    print(f"\n{placed} orders placed; {len(billed)} invoiced by billing; "
          f"{len(shipped)} shipped by {len(workers)} worker(s) {sorted(workers)}")
    ok = all_handled_once(SEEN)
    print("end to end: OK" if ok else "end to end: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
