"""The three per-message hot paths of pub/sub through the broker, in-process
(no sockets, no other processes), best of 7 rounds of 200 frames of 2000
messages, in ns per message:

    python benchmarks/hot_paths.py

- publish: a client's ``publish()`` loop into its Outbox, frames cut and taken;
- route + encode: the broker decoding a PUB frame into a subscription's ring
  and encoding the MSG frame out of it (``Reader.route`` + ``Writer.write_ring``);
- decode + take: a subscriber turning a MSG frame into Message objects.

Multi-process figures (with ZeroMQ, the kernel and wake-ups) are in
broker_bench.py and ``ringcast bench``; docs/benchmarks.md ("Broker").
"""

import time

from ringcast import _codec as C
from ringcast._impl import check_subject
from ringcast.router import Router

PER_FRAME = 2000
SUBJECT = "bench.data"
PAYLOAD = b"x" * 16


def best_ns(step, rounds=9, frames=200):
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(frames):
            step()
        best = min(best, (time.perf_counter() - t) / frames / PER_FRAME)
    return best * 1e9


def publish_step():
    outbox = C.Outbox(check_subject, time.monotonic, 64 << 10, 1 << 30)
    publish = outbox.publish

    def step():
        for _ in range(PER_FRAME):
            publish(SUBJECT, PAYLOAD)
        outbox.cut()
        outbox.take_frames(1 << 30)
    return step


def route_step():
    router = Router()
    ring = router.subscribe("bench.>", capacity=1 << 16).ring
    w = C.Writer(1 << 20)
    for _ in range(PER_FRAME):
        w.record(C.PUB, SUBJECT, None, PAYLOAD)
    frame = w.take()
    counts, subjects = {}, {}

    def step():
        C.Reader(frame, 1 << 20, 1024, subjects).route(router, counts)
        out = C.Writer(1 << 17)
        out.write_ring(ring, 1, 1 << 16, 1 << 17)
        out.take()
    return step


def take_step():
    w = C.Writer(1 << 20)
    for i in range(PER_FRAME):
        w.record(C.MSG, 1, i + 1, SUBJECT, None, PAYLOAD)
    frame = w.take()

    def step():
        (_, _, run), = C.Reader(frame, 1 << 20, 1024, {}).events({})
        run.take()
    return step


if __name__ == "__main__":
    for name, make in (("publish", publish_step), ("route + encode", route_step),
                       ("decode + take", take_step)):
        print(f"{name:16s} {best_ns(make()):6.1f} ns/msg")
