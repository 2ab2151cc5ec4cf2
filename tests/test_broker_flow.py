"""The broker's per-subscription flow state (``broker._Flow``): messages the
client granted, and bytes sent that no CREDIT covers yet."""

from ringcast import _codec as C
from ringcast.broker import FRAME_TARGET, MAX_CREDIT, _Flow

MIB = 1 << 20


def test_messages_only_when_the_subscription_has_no_byte_bound():
    flow = _Flow(10, 0)
    assert flow.room() == FRAME_TARGET
    flow.wrote(10, 50 * MIB)
    assert flow.room() == 0 and flow.inflight == 0     # out of credit, bytes not counted
    assert flow.granted(3) is True and flow.room() == FRAME_TARGET


def test_bytes_in_flight_stop_the_flow_until_credit_covers_them():
    flow = _Flow(8192, MIB)
    flow.wrote(4, MIB // 2)
    assert flow.room() == FRAME_TARGET
    flow.wrote(4, MIB // 2)
    assert flow.room() == 0                            # 1 MiB in flight: wait for CREDIT
    assert flow.granted(2) is True                     # half of the first write, pro rata
    assert flow.inflight == MIB - MIB // 4
    assert flow.room() == min(FRAME_TARGET, MIB // 4)
    assert flow.granted(1) is False                    # it was not stalled
    flow.granted(100)                                  # more than was sent: all covered
    assert flow.inflight == 0 and not flow.sent
    assert flow.credit == 8192 - 8 + 103


def test_pro_rata_parts_add_up_to_the_bytes_written():
    flow = _Flow(1000, MIB)
    flow.wrote(7, 1001)
    flow.wrote(3, 10)
    for _ in range(10):
        flow.granted(1)
    assert flow.inflight == 0 and not flow.sent


def test_byte_bound_never_below_a_few_credit_bytes():
    # a client grants early only after CREDIT_BYTES: a smaller bound could stall for good
    assert _Flow(10, 1).max_bytes == 4 * C.CREDIT_BYTES


def test_credit_is_capped():
    flow = _Flow(MAX_CREDIT, 0)
    flow.granted(1 << 40)
    assert flow.credit == MAX_CREDIT


def test_a_cli_broker_spins_around_request_traffic_only():
    from ringcast.broker import REQUEST_SPIN, Broker

    adaptive, embedded, fixed = (Broker("tcp://127.0.0.1:0", spin=spin)
                                 for spin in (None, 0.0, 0.002))
    try:
        adaptive._now = 100.0
        assert adaptive._spin_window() == 0.0          # no request traffic: sleep at once
        adaptive._live, adaptive._answer_time = 1, 0.0002
        assert adaptive._spin_window() == 0.0004       # owed: twice as long as answers take
        adaptive._answer_time = 0.002
        assert adaptive._spin_window() == 0.0          # slower services: not worth a spin
        adaptive._live, adaptive._answered = 0, 100.0 - REQUEST_SPIN / 2
        assert adaptive._spin_window() == REQUEST_SPIN  # just answered: the next one is near
        adaptive._answered = 100.0 - 2 * REQUEST_SPIN
        assert adaptive._spin_window() == 0.0
        assert embedded._spin_window() == 0.0
        fixed._live = 0
        assert fixed._spin_window() == 0.002
    finally:
        for b in (adaptive, embedded, fixed):
            b.router.close()
