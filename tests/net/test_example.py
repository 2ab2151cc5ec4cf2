"""The orders example runs end to end as separate processes."""

import os
import subprocess
import sys

import pytest

from .conftest import ENV

RUN = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "orders", "run.py")


@pytest.mark.timeout(90)
def test_orders_example_end_to_end():
    out = subprocess.run([sys.executable, RUN], capture_output=True, text=True, env=ENV,
                         timeout=80)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 orders placed; 5 invoiced by billing; 5 shipped by" in out.stdout
    assert "order 4 (lamp) rejected: out of stock" in out.stdout
    assert "end to end: OK" in out.stdout


def test_the_example_checks_which_orders_were_invoiced_and_shipped_not_only_how_many():
    """run.py's verdict: every placed order invoiced once and shipped once.
    Counting lines let an order invoiced twice stand for one never invoiced."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("orders_run", RUN)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    good = ["orders: order 1 (book) placed", "orders: order 2 (lamp) placed",
            "orders: order 3 (mug) rejected: out of stock",
            "billing: invoiced order 1 (book)", "billing: invoiced order 2 (lamp)",
            "shipping-1: shipped order 2 (lamp)", "shipping-2: shipped order 1 (book)"]
    assert run.all_handled_once(good)
    twice = [line.replace("order 2 (lamp)", "order 1 (book)") if "invoiced" in line
             else line for line in good]
    assert not run.all_handled_once(twice)
    assert not run.all_handled_once(good + ["shipping-1: shipped order 3 (mug)"])
    assert not run.all_handled_once(good[:-1])
