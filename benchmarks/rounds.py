"""The rounds every benchmark is made of, shared by the pytest-benchmark
files and ``callgrind.py``, so that instruction counts and timings measure
literally the same code."""

from __future__ import annotations

import functools
from typing import Any, Callable, List

from ringcast.bench import fifo_step

#: messages per round: big enough that per-round overhead vanishes, small
#: enough to fit in one ring (capacity RING) without any wait or drop
N = 10_000
RING = 16_384
SUBJECT = "orders.eu.placed"
PAYLOAD = b"x" * 16  # the field notes' 16-byte payload


def drain(recv_many: Callable[[], List[Any]]) -> int:
    """Take every waiting message with recv_many's default chunk size."""
    got = 0
    while True:
        k = len(recv_many())
        if not k:
            return got
        got += k


def blinker_round(receivers: int, payload: bytes = PAYLOAD) -> Callable[[], int]:
    """N sends on a blinker signal whose ``receivers`` each keep the payload;
    the round returns the deliveries."""
    from blinker import Signal

    sig = Signal()
    got: List[Any] = []
    for _ in range(receivers):
        def on_message(sender: Any, payload: Any, _keep: Any = got.append) -> None:
            _keep(payload)
        sig.connect(on_message, weak=False)
    send = sig.send

    def round_() -> int:
        got.clear()
        for _ in range(N):
            send(SUBJECT, payload=payload)
        return len(got)

    return round_


def fifo_round(put: Callable[[Any], Any], get: Callable[[], Any],
               payload: bytes = PAYLOAD) -> Callable[[], int]:
    """N puts then N gets on a FIFO (queue.Queue, deque): the stdlib baselines,
    the very step ``ringcast bench`` runs."""
    return functools.partial(fifo_step(put, get, payload), N)
