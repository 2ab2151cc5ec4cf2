"""Shared set-up for the pytest-benchmark micro-benchmarks.

Run (outside the default test paths, so ``pytest`` alone never runs them)::

    python -m pytest benchmarks -p no:cacheprovider --benchmark-columns=min,median,rounds

Every benchmark processes a batch of ``N`` messages per round and records
``msgs`` (messages per round), ``deliveries`` (messages x receivers) and
whether it is a baseline in ``benchmark.extra_info``. After pytest-benchmark's
own tables, a per-message summary prints M msgs/s, M deliveries/s and the
ratio of every row against its group's baseline (``summary.py`` renders the
same table from a ``--benchmark-json`` file).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
_SRC = os.path.join(os.path.dirname(_HERE), "src")
try:  # an installed ringcast wins; a source checkout built in place also works
    import ringcast  # noqa: F401
except ImportError:
    sys.path.insert(0, _SRC)
sys.path.insert(0, _HERE)

from summary import render  # noqa: E402

#: messages per round: big enough that per-round overhead vanishes, small
#: enough to fit in one ring (capacity RING) without any wait or drop
N = 10_000
RING = 16_384
SUBJECT = "orders.eu.placed"
PAYLOAD = b"x" * 16  # the field notes' 16-byte payload


@pytest.fixture
def payload() -> bytes:
    return PAYLOAD


@pytest.fixture
def items() -> list:
    return [PAYLOAD] * N


@pytest.fixture
def record(benchmark: Any) -> Callable[..., None]:
    """``record(msgs=N, receivers=1, baseline=False)`` tags the benchmark."""

    def tag(msgs: int = N, receivers: int = 1, baseline: bool = False, **extra: Any) -> None:
        info: Dict[str, Any] = benchmark.extra_info
        info.update(msgs=msgs, deliveries=msgs * receivers, receivers=receivers,
                    baseline=baseline, **extra)

    return tag


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    session = getattr(terminalreporter.config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = [b.as_dict(include_data=False) for b in session.benchmarks if b]
    text = render(rows)
    if text:
        terminalreporter.write_sep("-", "per-message rates and ratios (from the median round)")
        terminalreporter.write_line(text)
