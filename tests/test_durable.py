"""Durable queues: the log survives restarts, torn tails and kill -9."""

import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

import ringcast
from ringcast import storage


def open_router(path, **kw):
    return ringcast.Router(data_dir=str(path), **kw)


def drain(consumer, ack=True):
    out = []
    while True:
        try:
            msg = consumer.recv_nowait()
        except ringcast.WouldBlock:
            return out
        out.append(msg)
        if ack:
            msg.ack()


def test_messages_survive_a_restart_and_acks_are_remembered(tmp_path):
    with open_router(tmp_path) as r:
        r.declare_queue("jobs", durable=True)
        for i in range(10):
            r.send("jobs", b"%d" % i, {"n": str(i)})
        c = r.consume("jobs")
        for msg in [c.recv(timeout=1) for _ in range(4)][:3]:
            msg.ack()  # the 4th is delivered but never acked
    with open_router(tmp_path) as r:
        r.declare_queue("jobs", durable=True)
        got = drain(r.consume("jobs"))
    assert [m.payload for m in got] == [b"%d" % i for i in range(3, 10)]
    assert got[0].redelivered and got[0].delivery_count == 2
    assert not got[1].redelivered and got[1].delivery_count == 1
    assert got[1].headers == {"n": "4"} and got[1].timestamp is not None
    with open_router(tmp_path) as r:
        assert r.declare_queue("jobs", durable=True).depth == 0


def test_publishes_on_bound_subjects_are_logged(tmp_path):
    with open_router(tmp_path) as r:
        r.declare_queue("shipping", bind="orders.*", durable=True)
        assert r.publish("orders.placed", b"o1") == 1
        r.publish_many("orders.placed", [b"o2", b"o3"])
    with open_router(tmp_path) as r:
        r.declare_queue("shipping", durable=True)
        got = drain(r.consume("shipping"))
    assert [(m.subject, m.payload) for m in got] == [
        ("orders.placed", b"o1"), ("orders.placed", b"o2"), ("orders.placed", b"o3")]


def test_nack_without_requeue_is_remembered_as_settled(tmp_path):
    with open_router(tmp_path) as r:
        r.declare_queue("q", durable=True, dead_letter="q.dlq")  # declares q.dlq durable too
        r.send("q", b"bad")
        r.consume("q").recv(timeout=1).nack(requeue=False)
    with open_router(tmp_path) as r:
        assert r.declare_queue("q", durable=True, dead_letter="q.dlq").depth == 0
        dead = drain(r.consume("q.dlq"))
    assert [m.payload for m in dead] == [b"bad"]
    assert dead[0].headers["x-dead-letter-reason"] == "rejected"


def segment_files(path, queue):
    d = os.path.join(path, queue)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".seg"))


@pytest.mark.parametrize("damage", ["torn", "flipped"])
def test_a_damaged_tail_is_cut_off_and_logged(tmp_path, caplog, damage):
    with open_router(tmp_path, fsync="never") as r:
        r.declare_queue("q", durable=True)
        for i in range(5):
            r.send("q", b"payload-%d" % i)
    (seg,) = segment_files(tmp_path, "q")
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        if damage == "torn":
            f.truncate(size - 3)  # the last record lost its end
        else:
            f.seek(size - 2)
            f.write(b"\xff\xfe")  # the last record's CRC no longer matches
    with open_router(tmp_path) as r:
        q = r.declare_queue("q", durable=True)
        got = [m.payload for m in drain(r.consume("q"))]
        assert q.stats()["truncated_bytes"] > 0
    assert got == [b"payload-%d" % i for i in range(4)]
    assert any("cutting" in rec.message for rec in caplog.records)
    with open_router(tmp_path) as r:  # the cut log is clean now, and appendable
        r.declare_queue("q", durable=True)
        r.send("q", b"after")
    with open_router(tmp_path) as r:
        r.declare_queue("q", durable=True)
        assert [m.payload for m in drain(r.consume("q"))] == [b"after"]


def test_settled_segments_are_deleted(tmp_path):
    with open_router(tmp_path, fsync="never") as r:
        q = r.declare_queue("q", durable=True, segment_bytes=1024)
        for _ in range(200):
            r.send("q", b"x" * 40)
        assert q.stats()["segments"] > 5
        drain(r.consume("q"))
        assert q.stats()["segments"] <= 2
    assert len(segment_files(tmp_path, "q")) <= 2
    with open_router(tmp_path) as r:
        assert r.declare_queue("q", durable=True).depth == 0


def unsettled_on_disk(path, queue):
    """Ids of the messages the log files say are unsettled: what a broker
    killed now would deliver again (None while a record is half written)."""
    ids = set()
    for seg in segment_files(path, queue):
        with open(seg, "rb") as f:
            data = f.read()
        try:
            for kind, ident, _, _ in storage.decode_records(data):
                if kind == storage.MSGS:
                    ids.add(ident)
                elif kind == storage.ACKS:
                    ids.discard(ident)
        except storage.CorruptRecord:
            return None
    return ids


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_acks_reach_the_log_within_an_interval_whatever_the_fsync_policy(tmp_path, fsync):
    """Acks are buffered and written with the next message or at the next
    interval tick. With ``always`` and ``never`` there was no tick: acks
    stayed in memory until the queue took another message, so a process
    killed after its consumers had acked everything (and nothing more was
    sent) delivered all of it again, however long ago it had been acked."""
    with open_router(tmp_path, fsync=fsync) as r:
        r.declare_queue("q", durable=True)
        r.send_many("q", [b"0", b"1", b"2"])
        drain(r.consume("q"))
        deadline = time.monotonic() + 5
        while unsettled_on_disk(tmp_path, "q") != set():
            assert time.monotonic() < deadline, "the acks never reached the log"
            time.sleep(0.005)


def test_fsync_policies(tmp_path):
    with open_router(tmp_path) as r:
        always = r.declare_queue("a", durable=True, fsync="always")
        never = r.declare_queue("n", durable=True, fsync="never")
        interval = r.declare_queue("i", durable=True, fsync="interval")
        for _ in range(5):
            r.send("a", b"x")
            r.send("n", b"x")
        r.send("i", b"x")
        assert always.stats()["fsyncs"] == 5
        assert never.stats()["fsyncs"] == 0
        deadline = time.monotonic() + 5
        while interval.stats()["fsyncs"] == 0:  # the group-commit thread syncs it
            assert time.monotonic() < deadline
            time.sleep(0.005)


def test_decoder_rejects_garbage_with_a_typed_error():
    good = storage.encode_msgs(1, [(5, "a.b", b"payload", {"k": "v"}), (6, "c", b"", None)])
    assert [(k, i) for k, i, *_ in storage.decode_records(good)] == [
        (storage.MSGS, 1), (storage.MSGS, 2)]
    for bad in (good[:-1], b"\x00" * 3, b"\xff\xff\xff\xff" + good[4:],
                good[:8] + bytes([good[8] ^ 1]) + good[9:]):
        with pytest.raises(storage.CorruptRecord):
            list(storage.decode_records(bad))


CHILD = textwrap.dedent("""
    import sys, ringcast
    r = ringcast.Router(data_dir=sys.argv[1], fsync="always")
    r.declare_queue("orders", durable=True)
    start = int(sys.argv[2])
    for i in range(start, start + 100000):
        r.send("orders", b"%d" % i)
        sys.stdout.write("%d\\n" % i)   # confirmed: send() returned after fsync
        sys.stdout.flush()
""")


def test_no_confirmed_message_is_lost_over_repeated_kill_9(tmp_path):
    """A process publishing with fsync=always is SIGKILLed at random moments,
    20 times; every message it confirmed is in the queue afterwards."""
    rng = random.Random(1234)
    confirmed = []
    next_id = 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(next_id)],
                                stdout=subprocess.PIPE, text=True)
        want = rng.randrange(5, 60)
        seen = []
        for line in proc.stdout:
            seen.append(int(line))
            if len(seen) >= want:
                break
        proc.kill()  # SIGKILL (TerminateProcess on Windows): no chance to clean up
        rest, _ = proc.communicate(timeout=10)
        seen.extend(int(x) for x in rest.split())
        assert proc.returncode != 0
        confirmed.extend(seen)
        next_id = (max(seen) + 1000) if seen else next_id + 1000
    with open_router(tmp_path) as r:
        r.declare_queue("orders", durable=True)
        stored = {int(m.payload) for m in drain(r.consume("orders"))}
    missing = set(confirmed) - stored
    assert not missing, f"{len(missing)} confirmed messages lost"
    assert len(confirmed) >= 20 * 5


def test_a_restarted_router_rebuilds_durable_queues_before_anyone_declares(tmp_path):
    with open_router(tmp_path) as r:
        r.declare_queue("shipping", bind="orders.*", durable=True, max_deliver=4,
                        dead_letter="shipping.dlq", max_bytes=1 << 20)
        r.declare_queue("shipping", bind="returns.*")  # a later bind is remembered too
        r.publish("orders.placed", b"o1")
        r.declare_queue("scratch")  # not durable: gone after a restart
    with open_router(tmp_path) as r:
        q = r.queue("shipping")
        assert q.options.max_deliver == 4 and q.bind == ("orders.*", "returns.*")
        assert q.ring.max_bytes == 1 << 20
        assert "scratch" not in r.stats()["queues"]
        assert r.publish("returns.made", b"r1") == 1
        got = drain(r.consume("shipping"))
    assert [m.payload for m in got] == [b"o1", b"r1"]
