"""A real broker process and real client processes, over tcp and ipc."""

import json
import struct

import pytest
import zmq

from ringcast import _codec as C
from ringcast import errors
from ringcast.client import connect

from .conftest import (
    HEARTBEAT,
    BrokerProcess,
    barrier,
    hello,
    raw_session,
    run_script,
    take,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

PUBLISHER = """
import sys
from ringcast.client import connect
url, n = sys.argv[1], int(sys.argv[2])
with connect(url, heartbeat=0.2) as c:
    for i in range(n):
        c.publish("orders.eu.placed" if i % 2 else "orders.us.placed", b"%d" % i)
    c.flush()
print("sent", n, flush=True)
"""

PUBLISHER_BIG = """
import sys
from ringcast.client import connect
url, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with connect(url, heartbeat=0.2) as c:
    for i in range(n):
        c.publish("big", b"%05d" % i + bytes(size - 5), timeout=30)
    c.flush(30)
"""

SUBSCRIBER = """
import sys
from ringcast.client import connect
url, n = sys.argv[1], int(sys.argv[2])
with connect(url, heartbeat=0.2) as c:
    sub = c.subscribe("orders.*.placed")
    c.flush(); c.stats()
    print("ready", flush=True)
    got = []
    while len(got) < n:
        got.extend(sub.recv_many(10000, timeout=20))
    ok = [int(m.payload) for m in got] == list(range(n))
    subject = lambda i: "orders.eu.placed" if i % 2 else "orders.us.placed"
    ok = ok and all(m.subject == subject(int(m.payload)) for m in got)
    print("result", len(got), ok, got[-1].seq, sub.dropped, flush=True)
"""


def test_pubsub_between_processes(broker, procs):
    n = 50000
    sub = run_script(SUBSCRIBER, broker.url, n)
    procs.append(sub)
    assert sub.stdout.readline().strip() == "ready"
    pub = run_script(PUBLISHER, broker.url, n)
    procs.append(pub)
    assert pub.stdout.readline().split() == ["sent", str(n)]
    assert sub.stdout.readline().split() == ["result", str(n), "True", str(n), "0"]
    assert sub.wait(20) == 0 and pub.wait(20) == 0


CONSUMER = """
import sys, time
from ringcast.client import connect
url, ack = sys.argv[1], sys.argv[2] == "ack"
with connect(url, heartbeat=0.2) as c:
    q = c.consume("ship", prefetch=8)
    while True:
        m = q.recv(timeout=30)
        print(int(m.payload), int(m.redelivered), flush=True)
        if ack:
            m.ack()
"""


def test_killed_consumer_gets_its_unacked_messages_redelivered(broker, client, procs):
    n = 200
    client.declare_queue("ship")
    for i in range(n):
        client.send("ship", b"%d" % i)
    barrier(client)
    # this consumer takes its prefetch of 8 and never acks; then it is killed -9
    victim = run_script(CONSUMER, broker.url, "hold")
    procs.append(victim)
    held = [int(victim.stdout.readline().split()[0]) for _ in range(8)]
    assert held == list(range(8))
    victim.kill()  # SIGKILL
    victim.wait(10)
    # a second consumer process gets every message exactly once; the held ones flagged
    worker = run_script(CONSUMER, broker.url, "ack")
    procs.append(worker)
    seen = {}
    while len(seen) < n:
        line = worker.stdout.readline()
        assert line, "worker stopped early"
        ident, redelivered = map(int, line.split())
        assert ident not in seen, f"message {ident} delivered twice"
        seen[ident] = redelivered
    assert sorted(seen) == list(range(n))
    assert {i for i, r in seen.items() if r} == set(held)
    stats = client.stats()
    assert stats["queues"]["ship"]["redelivered"] == 8
    assert wait_for(lambda: client.stats()["queues"]["ship"]["acked"] == n)


def test_competing_consumers_share_a_queue(broker, client, procs):
    workers = [run_script(CONSUMER, broker.url, "ack") for _ in range(2)]
    procs.extend(workers)
    assert wait_for(lambda: client.stats()["clients"] == 3)
    for i in range(400):
        client.send("ship", b"%d" % i)
    client.flush()
    assert wait_for(lambda: client.stats()["queues"]["ship"]["acked"] == 400)
    per = []
    for w in workers:
        w.kill()
        out, err = w.communicate(timeout=10)
        per.append([int(line.split()[0]) for line in out.splitlines()])
    assert sorted(per[0] + per[1]) == list(range(400))   # each exactly once
    assert per[0] and per[1]                              # both took part


RESPONDER = """
import sys, time
from ringcast.client import connect
url = sys.argv[1]
def handle(msg):
    if msg.payload == b"slow":
        time.sleep(0.6)
    if msg.payload == b"boom":
        raise ValueError("out of stock")
    return msg.payload.upper()
with connect(url, heartbeat=0.2) as c:
    c.serve("inventory", handle, threaded=True)        # it sleeps: not on the I/O thread
    c.serve("nested", lambda m: c.request("inventory", m.payload).payload)   # inline
    c.serve("nested.threaded", lambda m: c.request("inventory", m.payload).payload,
            threaded=True)
    c.flush(); c.stats()
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_request_reply_between_processes(broker, client, procs):
    with pytest.raises(errors.NoResponders):
        client.request("inventory", b"x", timeout=5)
    r = run_script(RESPONDER, broker.url, stdin=__import__("subprocess").PIPE)
    procs.append(r)
    assert r.stdout.readline().strip() == "ready"
    assert client.request("inventory", b"sku-1", timeout=5).payload == b"SKU-1"
    with pytest.raises(errors.ServiceError, match="out of stock"):
        client.request("inventory", b"boom", timeout=5)
    # a late reply never answers the next request
    with pytest.raises(errors.Timeout):
        client.request("inventory", b"slow", timeout=0.2)
    assert client.request("inventory", b"fast", timeout=5).payload == b"FAST"
    # an inline handler may not wait on its own client; a threaded one may
    with pytest.raises(errors.ServiceError, match="threaded=True"):
        client.request("nested", b"x", timeout=5)
    assert client.request("nested.threaded", b"abc", timeout=5).payload == b"ABC"
    r.stdin.close()


def test_broker_restart_clients_reconnect_and_resubscribe(transport, endpoint, procs):
    b = BrokerProcess(endpoint).start()
    url = b.url   # a tcp port picked by the first broker is reused by the second
    b2 = None
    try:
        c = connect(url, heartbeat=HEARTBEAT)
        sub = c.subscribe("stock.>")
        c.serve("ping", lambda m: b"pong")
        barrier(c)
        assert c.sessions == 1
        with connect(url, heartbeat=HEARTBEAT) as asker:
            assert asker.request("ping", b"", timeout=5).payload == b"pong"
            b.kill()
            b2 = BrokerProcess(url).start()
            assert wait_for(lambda: c.sessions == 2 and c.connected, timeout=15)
            barrier(c)
            # the asker's request session is unknown to the new broker: resent once
            assert asker.request("ping", b"", timeout=5).payload == b"pong"
        with connect(url, heartbeat=HEARTBEAT) as other:
            other.publish("stock.low", b"sku-9")
            other.flush()
            msg = sub.recv(timeout=10)
            assert (msg.subject, msg.payload) == ("stock.low", b"sku-9")
            assert other.request("ping", b"", timeout=5).payload == b"pong"
        c.close()
    finally:
        b.stop()
        if b2 is not None:
            b2.stop()


def _err(sock):
    assert sock.poll(5000), "no reply from the broker"
    evs = C.Reader(sock.recv()).events()
    errs = [e for e in evs if e[0] == C.ERR]
    assert errs, evs
    return errors.error_from_code(errs[0][2], errs[0][3])


def test_garbage_client_is_cut_off_while_a_good_client_keeps_working(broker, client, zsocket):
    sub = client.subscribe("t.>")
    barrier(client)
    bad = zsocket(zmq.DEALER)
    bad.connect(broker.url)
    bad.send(b"\x00garbage without a session")
    assert isinstance(_err(bad), errors.RingcastError)        # refused, nothing kept
    bad.send(b"\x7f\x00\x00\x00\x00")
    assert isinstance(_err(bad), errors.UnknownCommand)
    hello(bad)
    bad.send(b"\x02\xff\xff\x00\x00garbage")                   # record runs past the frame
    assert isinstance(_err(bad), errors.ProtocolError)
    bad.send(b"\x10\x00\x00\x00\x00")                          # after that: no session
    assert isinstance(_err(bad), errors.ConnectionLost)
    for i in range(100):
        client.publish("t.x", b"%d" % i)
    assert take(sub, 100) == [b"%d" % i for i in range(100)]   # however many batches
    stats = client.stats()
    assert stats["counters"]["protocol_errors"] == 1 and stats["clients"] == 1


def test_wrong_version_is_refused(broker, zsocket):
    s = zsocket(zmq.DEALER)
    s.connect(broker.url)
    w = C.Writer()
    w.record(C.HELLO, 99, 1000, "future")
    s.send(w.take())
    assert isinstance(_err(s), errors.VersionMismatch)


def test_records_after_hello_in_its_frame_are_refused_not_ignored(broker, zsocket, client):
    s = zsocket(zmq.DEALER)
    s.connect(broker.url)
    w = C.Writer()
    w.record(C.HELLO, C.PROTOCOL_VERSION, 10000, "eager")
    w.record(C.SERVE, 1, "eager.svc", 4)
    s.send(w.take())
    assert isinstance(_err(s), errors.ProtocolError)   # no WELCOME: nothing was applied
    with pytest.raises(errors.NoResponders):
        client.request("eager.svc", b"?", timeout=2)
    stats = client.stats()   # the client and its requester's session; none for "eager"
    assert stats["clients"] == 2 and stats["counters"]["refused_frames"] == 1
    hello(s)                 # alone in its frame, it is welcome


def test_oversize_frames_and_messages_are_rejected(endpoint, client_factory=None):
    b = BrokerProcess(endpoint, "--max-frame", "131072", "--max-message", "1024").start()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(b.url)
        welcome = hello(s)
        assert welcome[3:5] == (131072, 1024)
        # a message over max_message inside an acceptable frame: error reply
        w = C.Writer()
        w.pub("big", b"x" * 2000)
        s.send(w.take())
        assert isinstance(_err(s), errors.LimitExceeded)
        # a good client is told the limit and refuses locally
        with connect(b.url, heartbeat=HEARTBEAT) as good:
            with pytest.raises(errors.LimitExceeded):
                good.publish("big", b"x" * 2000)
            sub = good.subscribe("ok")
            barrier(good)
            # a frame over max_frame is cut by the transport before allocation
            s2 = ctx.socket(zmq.DEALER)
            s2.setsockopt(zmq.LINGER, 0)
            s2.connect(b.url)
            s2.send(b"\x02" + struct.pack("<I", 200000) + b"y" * 200000)
            good.publish("ok", b"still here")
            assert sub.recv(timeout=5).payload == b"still here"
            assert not s2.poll(300)
            s2.close(0)
    finally:
        s.close(0)
        b.stop()


def test_drops_are_counted_and_memory_bounded_with_a_stalled_subscriber(broker, client):
    with connect(broker.url, heartbeat=HEARTBEAT) as slow:
        stalled = slow.subscribe("feed", capacity=64, overflow="drop_oldest", window=16)
        barrier(slow)
        for i in range(20000):
            client.publish("feed", b"%d" % i)
        client.flush()
        assert wait_for(lambda: client.stats()["dropped"] >= 20000 - 64 - 16)
        # the subscriber sees the drops as sequence gaps, newest messages last
        got = []
        while True:
            batch = stalled.recv_many(1000, timeout=1)
            got += batch
            if got and got[-1].payload == b"19999":
                break
        assert len(got) <= 64 + 16 + 16
        assert stalled.dropped == 20000 - len(got)
        stats = client.stats()
        (sub_stats,) = [s for s in stats["subscriptions"] if s["pattern"] == "feed"]
        assert sub_stats["dropped"] == 20000 - len(got)
        assert stats["subjects"]["feed"] == 20000


def test_buffers_are_bounded_in_bytes_too(endpoint):
    """A stalled subscriber of 8192 slots (and a window of 8192) would hold
    8192 large payloads at the broker and as many more in flight; the broker's
    byte bound keeps each near 1 MiB, drops the oldest and counts them."""
    b = BrokerProcess(endpoint, "--max-buffer-bytes", str(1 << 20)).start()
    try:
        with connect(b.url, heartbeat=HEARTBEAT) as pub, \
                connect(b.url, heartbeat=HEARTBEAT) as slow:
            stalled = slow.subscribe("feed", capacity=8192, overflow="drop_oldest")
            barrier(slow)
            n, size = 400, 64 << 10
            for i in range(n):
                pub.publish("feed", b"%05d" % i + bytes(size - 5))
            pub.flush(timeout=30)
            stats = pub.stats()
            (sub_stats,) = [x for x in stats["subscriptions"] if x["pattern"] == "feed"]
            assert sub_stats["max_bytes"] == 1 << 20
            assert 0 < sub_stats["bytes"] <= (1 << 20) + size
            assert stats["buffered_bytes"] == sub_stats["bytes"]
            in_flight = 1 + (1 << 20) // size
            assert sub_stats["dropped"] >= n - 2 * in_flight
            assert stalled.pending <= in_flight
            got = []
            while not got or got[-1].payload[:5] != b"%05d" % (n - 1):
                got += stalled.recv_many(100, timeout=5)
            assert stalled.dropped == sub_stats["dropped"] == n - len(got)
            seqs = [m.seq for m in got]
            assert seqs == sorted(seqs) and seqs[-1] == n   # the gaps are the drops

            # queues: the broker's bound is the default and the ceiling, also for
            # queues that a SEND or a CONSUME names before anyone declares them
            pub.declare_queue("q1")
            pub.declare_queue("q2", max_bytes=4096)
            pub.declare_queue("q0", max_bytes=0)
            with pytest.raises(errors.LimitExceeded, match="max_bytes"):
                pub.declare_queue("q3", max_bytes=2 << 20)
            pub.send("sent-to", b"x")
            pub.consume("consumed-from")
            pub.flush(timeout=10)
            queues = pub.stats()["queues"]
            assert {name: q["max_bytes"] for name, q in queues.items()} == {
                "q1": 1 << 20, "q2": 4096, "q0": 1 << 20,
                "sent-to": 1 << 20, "consumed-from": 1 << 20}
    finally:
        b.stop()


def test_a_subscription_may_ask_for_its_own_byte_bound(endpoint):
    """SUB's max_bytes (protocol version 3), as ``Router.subscribe`` takes it:
    0 takes the broker's bound, which is also the most it grants."""
    b = BrokerProcess(endpoint, "--max-buffer-bytes", str(1 << 20)).start()
    try:
        with connect(b.url, heartbeat=HEARTBEAT) as pub, \
                connect(b.url, heartbeat=HEARTBEAT) as slow:
            small = slow.subscribe("small", capacity=8192, overflow="drop_oldest",
                                   max_bytes=8 << 10)
            slow.subscribe("default")
            too_big = slow.subscribe("big", max_bytes=2 << 20)
            barrier(slow)
            with pytest.raises(errors.LimitExceeded, match="max_bytes"):
                too_big.recv(timeout=5)
            assert too_big.closed and not small.closed   # the broker refused it
            n, size = 200, 4 << 10
            for i in range(n):
                pub.publish("small", b"%05d" % i + bytes(size - 5))
            pub.flush(timeout=30)
            stats = pub.stats()
            bounds = {s["pattern"]: s["max_bytes"] for s in stats["subscriptions"]}
            assert bounds == {"small": 8 << 10, "default": 1 << 20}
            (sub_stats,) = [s for s in stats["subscriptions"] if s["pattern"] == "small"]
            assert sub_stats["bytes"] <= (8 << 10) + size
            # in flight: the bound, raised to the 256 KiB floor of a flow window
            in_flight = 1 + (256 << 10) // size
            assert sub_stats["dropped"] >= n - in_flight - 3
            got = []
            while not got or got[-1].payload[:5] != b"%05d" % (n - 1):
                got += small.recv_many(100, timeout=5)
            assert small.dropped == sub_stats["dropped"] == n - len(got)
            small.close()
            assert small.closed
            with pytest.raises(errors.Closed):
                small.recv(timeout=1)
    finally:
        b.stop()


def test_large_messages_flow_through_a_small_byte_bound_in_order(endpoint, procs):
    """Block policy, 64 KiB messages, a 256 KiB bound and a window of 8192
    messages: the broker stops at the bound of bytes in flight long before the
    client has taken half its window, so the client must grant credit once it
    has taken what it holds (else this would stall for good)."""
    b = BrokerProcess(endpoint, "--max-buffer-bytes", str(256 << 10)).start()
    try:
        with connect(b.url, heartbeat=HEARTBEAT) as sub_client:
            sub = sub_client.subscribe("big", capacity=8192, overflow="block")
            barrier(sub_client)
            n, size = 120, 64 << 10
            pub = run_script(PUBLISHER_BIG, b.url, n, size)
            procs.append(pub)
            got = []
            while len(got) < n:
                m = sub.recv(timeout=10)
                got.append(m.payload[:5])
                assert len(m.payload) == size and sub.pending <= 5
            assert got == [b"%05d" % i for i in range(n)]
            assert sub.dropped == 0
            assert pub.wait(10) == 0
    finally:
        b.stop()


def test_a_version_1_client_is_not_held_to_bytes_in_flight(endpoint, zsocket):
    """Version 1 clients grant credit only at half their window: the broker
    must not stop at its bound of bytes in flight for them (they would wait
    for good), while a version 2 session without CREDIT stops there."""
    b = BrokerProcess(endpoint, "--max-buffer-bytes", str(256 << 10)).start()
    try:
        received = {}
        socks = {}
        for version in (1, 2):
            s, welcome = raw_session(zsocket, b.url, f"v{version}", version=version)
            assert welcome[1] == version
            w = C.Writer()
            # v1: block policy, so all 40 must come; v2: drop_oldest, never blocks
            w.record(C.SUB, 1, f"big{version}", 8192, 0 if version == 1 else 1, 8192)
            w.record(C.STATS, 7)
            s.send(w.take())
            assert any(e[0] == C.STATSREP for e in C.Reader(s.recv()).events())
            socks[version], received[version] = s, 0
        with connect(b.url, heartbeat=HEARTBEAT) as pub:
            for _ in range(40):
                pub.publish("big2", bytes(40_000))
                pub.publish("big1", bytes(40_000))
            for version, s in socks.items():      # read all that comes; never grant
                while s.poll(500):
                    for e in C.Reader(s.recv()).events():
                        if e[0] == C.MSG:
                            received[version] += e[2].count
        assert received[1] == 40
        assert 6 <= received[2] <= 8                   # 256 KiB of 40 kB records
    finally:
        b.stop()


def test_block_policy_pushes_back_on_the_publisher(broker, client):
    with connect(broker.url, heartbeat=HEARTBEAT) as slow:
        sub = slow.subscribe("orders", capacity=1024, overflow="block", window=1024)
        barrier(slow)
        sent = 0
        with pytest.raises(errors.WouldBlock):
            while sent < 10_000_000:
                client.publish("orders", b"%d" % sent, timeout=0.5)
                sent += 1
        assert sent < 10_000_000
        got = []
        while len(got) < sent:
            got += sub.recv_many(4096, timeout=10)
        assert [int(m.payload) for m in got] == list(range(sent))
        assert sub.dropped == 0
        stats = json.loads(json.dumps(client.stats()))
        assert stats["counters"]["publisher_waits"] >= 1


def test_sends_to_a_full_block_queue_wait_at_the_broker_and_all_land_once(broker, client):
    """A frame of sends larger than the queue's room: the broker takes what
    fits, keeps the rest of the frame and applies it as consumers make room,
    in order, each message once; the producer's flush confirms it all."""
    client.declare_queue("bq", capacity=4)
    for i in range(25):
        client.send("bq", b"%d" % i)
    client.send_many("bq", (b"%d" % i for i in range(25, 50)))   # the same records
    client.send("bq", b"last", {"k": "v"})   # headers: applied one by one, after the run
    assert wait_for(lambda: client.stats()["counters"].get("publisher_waits", 0) >= 1)
    with connect(broker.url, heartbeat=HEARTBEAT) as worker:
        got = take(worker.consume("bq", prefetch=3), 51, 3, ack=True)
    assert got == [b"%d" % i for i in range(50)] + [b"last"]
    client.flush(timeout=10)
    assert client.stats()["queues"]["bq"]["acked"] == 51


def test_recv_payloads_takes_encoded_deliveries_without_messages(broker, client):
    with connect(broker.url, heartbeat=HEARTBEAT) as reader:
        sub = reader.subscribe("p.>", capacity=4096)
        barrier(reader)
        for i in range(3000):
            client.publish("p.x" if i % 3 else "p.y", b"%d" % i)
        client.flush()
        assert wait_for(lambda: sub.pending == 3000)
        first = sub.recv_many(10, timeout=5)                 # Messages, then payloads
        rest = []
        while len(rest) < 2990:
            rest += sub.recv_payloads(1000, timeout=5)
        assert [m.payload for m in first] + rest == [b"%d" % i for i in range(3000)]
        assert [m.seq for m in first] == list(range(1, 11))
        assert sub.pending == 0 and sub.recv_payloads(10) == []


def test_connect_without_a_broker_fails_cleanly(endpoint):
    import threading

    before = threading.active_count()
    with pytest.raises(errors.ConnectionLost):
        connect(endpoint.replace(":0", ":1"), timeout=0.3)
    assert wait_for(lambda: threading.active_count() == before, timeout=5)


def test_a_handle_id_used_again_is_armed_afresh(broker, client, zsocket):
    """A raw client may re-send CONSUME under a handle id it already holds.
    The new consumer must get its own wait for room, not inherit the old
    one's: here it fills up at once and, when the ack deadline takes its
    delivery back, must get it again (it used to wait for good)."""
    client.declare_queue("jobs", ack_deadline=1.0)
    client.send("jobs", b"job")
    barrier(client)
    s, _ = raw_session(zsocket, broker.url)

    def consume():
        w = C.Writer()
        w.record(C.CONSUME, 1, "jobs", 1)   # prefetch 1: full with one delivery
        s.send(w.take())

    def next_delivery():
        while s.poll(10000):
            for e in C.Reader(s.recv()).events():
                if e[0] == C.QMSG:
                    (m,) = e[2]
                    assert e[1] == 1 and m.payload == b"job"
                    return m.delivery_count
        raise AssertionError("no delivery")

    consume()
    assert next_delivery() == 1
    consume()   # replaces the full consumer, whose delivery goes back
    assert next_delivery() == 2
    assert next_delivery() == 3   # never acked: taken back and redelivered


def test_a_broker_that_cannot_bind_leaves_no_socket_open(embedded):
    """A start that fails on an endpoint (here: one another broker holds)
    closes the sockets it had made: its context can be terminated, and a
    program that retries does not leak two sockets per attempt."""
    import threading

    from ringcast.broker import Broker

    _, taken = embedded()
    ctx = zmq.Context()
    with pytest.raises(zmq.ZMQError) as failed:
        Broker(["tcp://127.0.0.1:0", taken.endpoints[0]], context=ctx).start()
    assert failed.value.errno == zmq.EADDRINUSE
    term = threading.Thread(target=ctx.term, daemon=True)   # blocks while a socket is open
    term.start()
    term.join(10)
    assert not term.is_alive(), "a socket of the failed broker is still open"
