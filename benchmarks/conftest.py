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


def _built(src: str) -> bool:
    pkg = os.path.join(src, "ringcast")
    return os.path.isdir(pkg) and any(n.startswith("_ring.") and n.endswith((".so", ".pyd"))
                                      for n in os.listdir(pkg))


# Measure the checkout these benchmarks belong to when it is built in place
# (an installed or editable ringcast elsewhere must not be measured instead);
# otherwise whatever ringcast is installed. The path goes into the JSON.
if _built(_SRC):
    sys.path.insert(0, _SRC)
sys.path.insert(0, _HERE)

from rounds import PAYLOAD, RING, SUBJECT, N  # noqa: E402,F401  (re-exported to the tests)
from summary import render  # noqa: E402


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


def pytest_benchmark_update_machine_info(config: Any, machine_info: Dict[str, Any]) -> None:
    import ringcast
    from ringcast._impl import USE_EXTENSIONS

    machine_info["ringcast"] = {
        "version": ringcast.__version__,
        "path": os.path.dirname(ringcast.__file__),
        "core": "compiled" if USE_EXTENSIONS else "pure-python",
    }


def pytest_report_header(config: Any) -> str:
    import ringcast

    return f"ringcast measured: {os.path.dirname(ringcast.__file__)}"


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
