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
