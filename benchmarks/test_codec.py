"""Wire codec: encoding N PUB records into one frame, and decoding a frame
straight into the native router, against the same framing done with
``struct`` in Python (what a pure-Python broker would do per message)."""

from __future__ import annotations

import struct

import pytest
from conftest import RING, N

from ringcast import _codec as C
from ringcast._impl import CoreRouter, Ring

SUBJECT = "orders.eu.placed"
_HDR = struct.Struct("<HI")   # subject length, payload length


def _py_encode(items) -> bytes:
    sb = SUBJECT.encode()
    pack = _HDR.pack
    return b"".join([pack(len(sb), len(p)) + sb + p for p in items])


def _py_route(frame: bytes, publish) -> int:
    unpack_from, size = _HDR.unpack_from, _HDR.size
    pos, n, end = 0, 0, len(frame)
    while pos < end:
        ls, lp = unpack_from(frame, pos)
        pos += size
        subject = frame[pos:pos + ls].decode()
        pos += ls
        publish(subject, frame[pos:pos + lp], None)
        pos += lp
        n += 1
    return n


@pytest.fixture
def routed():
    core = CoreRouter(8192)
    ring = Ring(RING, "block")
    core.add(SUBJECT, ring)
    return core, ring


@pytest.mark.benchmark(group="codec-encode")
def test_encode_struct_python(benchmark, record, items):
    record(baseline=True)
    assert benchmark(lambda: len(_py_encode(items))) > 0


@pytest.mark.benchmark(group="codec-encode")
def test_encode_writer_pub(benchmark, record, items):
    record()
    w = C.Writer()

    def round_() -> int:
        pub = w.pub
        for p in items:
            pub(SUBJECT, p)
        return len(w.take())

    assert benchmark(round_) > 0


@pytest.mark.benchmark(group="codec-encode")
def test_encode_writer_pub_many(benchmark, record, items):
    record()
    w = C.Writer()

    def round_() -> int:
        w.pub_many(SUBJECT, items)
        return len(w.take())

    assert benchmark(round_) > 0


@pytest.mark.benchmark(group="codec-route")
def test_route_struct_python(benchmark, record, items, routed):
    record(baseline=True)
    core, ring = routed
    frame = _py_encode(items)

    def round_() -> int:
        n = _py_route(frame, core.publish)
        ring.pop_payloads(n)
        return n

    assert benchmark(round_) == N


@pytest.mark.benchmark(group="codec-route")
def test_route_reader_native(benchmark, record, items, routed):
    record()
    core, ring = routed
    w = C.Writer()
    w.pub_many(SUBJECT, items)
    frame = w.take()

    def round_() -> int:
        n = C.Reader(frame).route(core)
        ring.pop_payloads(n)
        return n

    assert benchmark(round_) == N
    assert ring.pop_payloads(1) == []
