"""Fault tests over the wire: consumers killed with SIGKILL mid-stream,
again and again; nothing the broker accepted is lost, and a message is
handled twice only where it is flagged redelivered."""

import collections
import random
import signal

import pytest

from .conftest import barrier, run_script, wait_for

WORKER = """
import sys
from ringcast.client import connect
url = sys.argv[1]
with connect(url, heartbeat=0.2) as c:
    q = c.consume("work", prefetch=16)
    while True:
        m = q.recv(timeout=30)
        # handled: printed before the ack, so a kill in between shows as a
        # repeat, and the repeat must arrive flagged redelivered
        print(int(m.payload), int(m.redelivered), m.delivery_count, flush=True)
        m.ack()
"""


@pytest.mark.parametrize("transport", ["tcp"])
def test_twenty_consumer_kills_lose_nothing(broker, client, procs):
    n, kills = 3000, 20
    rng = random.Random(99)
    client.declare_queue("work")
    for i in range(n):
        client.send("work", b"%d" % i)
    barrier(client)  # every message is applied at the broker: "confirmed"
    handled = collections.defaultdict(list)  # id -> [(redelivered, count), ...]

    def note(line):
        fields = line.split()
        if len(fields) == 3 and line.endswith("\n"):  # a kill can cut the last line short
            ident, redelivered, count = map(int, fields)
            handled[ident].append((redelivered, count))

    def take(proc, lines):
        for _ in range(lines):
            line = proc.stdout.readline()
            if not line:
                return False
            note(line)
        return True

    for _ in range(kills):
        victim = run_script(WORKER, broker.url)
        procs.append(victim)
        assert take(victim, rng.randrange(20, 120)), "worker died on its own"
        victim.send_signal(signal.SIGKILL)  # mid-stream: with unacked messages in hand
        victim.wait(10)
        for line in victim.stdout.readlines():  # what it printed before dying counts
            note(line)

    survivor = run_script(WORKER, broker.url)
    procs.append(survivor)
    assert wait_for(lambda: (lambda q: q["depth"] == 0 and q["unacked"] == 0)(
        client.stats()["queues"]["work"]), timeout=60)
    survivor.send_signal(signal.SIGKILL)
    survivor.wait(10)
    for line in survivor.stdout.readlines():
        note(line)

    assert sorted(handled) == list(range(n)), "a confirmed message was never handled"
    repeats = 0
    for ident, deliveries in handled.items():
        assert deliveries[0] == (0, 1) or deliveries[0][0] == 1, ident
        for redelivered, count in deliveries[1:]:
            assert redelivered == 1 and count >= 2, f"message {ident} repeated unflagged"
        repeats += len(deliveries) - 1
    stats = client.stats()["queues"]["work"]
    assert stats["acked"] == n  # acked exactly once each, at the broker
    assert stats["redelivered"] >= repeats
