"""Bounded fuzzing of the log record reader: arbitrary and mutated bytes
give intact records or a CorruptRecord, never another exception or a hang;
recovery of a mutated segment never crashes and never invents messages."""

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from ringcast import storage

RECORDS = [storage.encode_msgs(i, [(1000 + i, f"s.{i}", b"p" * i,
                                    {"i": str(i)} if i % 2 else None)]) for i in range(1, 4)]
RECORDS += [storage.encode_msgs(4, [(1004, "s.4", b"pppp", None), (1005, "s.5", b"p" * 5, {})]),
            storage.encode_marks(storage.ACKS, [2]), storage.encode_marks(storage.DELIVERS, [3, 5])]
VALID = b"".join(RECORDS)


def decode_all(data):
    out = []
    try:
        for kind, ident, msg, end in storage.decode_records(data):
            assert 0 < end <= len(data)
            out.append((kind, ident, msg))
    except storage.CorruptRecord as exc:
        assert 0 <= exc.offset < len(data)
    return out


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes(data):
    decode_all(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(VALID)))
def test_mutated_valid_log(flips, cut):
    data = bytearray(VALID[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    got = decode_all(bytes(data))
    # whatever decodes is a prefix of what was written: damage never decodes
    # into a different record (the CRC catches it)
    expected = list(storage.decode_records(VALID))
    assert len(got) <= len(expected)
    for (kind, ident, msg), (k2, i2, m2, _) in zip(got, expected):
        assert (kind, ident) == (k2, i2)
        if msg is not None:
            assert (msg.id, msg.stamp_ns, msg.subject, msg.payload, msg.headers) == (
                m2.id, m2.stamp_ns, m2.subject, m2.payload, m2.headers)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(VALID)), st.binary(max_size=32))
def test_recovery_of_a_damaged_segment(tmp_path_factory, cut, tail):
    d = tmp_path_factory.mktemp("seg")
    with open(os.path.join(d, "%020d.seg" % 1), "wb") as f:
        f.write(VALID[:cut] + tail)
    log = storage.QueueLog(str(d), fsync="never")
    recovered = log.recover()
    ids = [m.id for m in recovered]
    intact = decode_all(VALID[:cut])  # records fully before the damage
    unsettled = {i for k, i, _ in intact if k == storage.MSGS} - {
        i for k, i, _ in intact if k == storage.ACKS}
    assert ids == sorted(set(ids))
    assert unsettled <= set(ids) <= {1, 2, 3, 4, 5}
    log.append([(0, "after", b"x", None)])  # still appendable after any damage
    log.close()
