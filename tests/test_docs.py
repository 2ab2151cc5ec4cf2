"""The README's Python snippets run as written.

Every fenced ``python`` block of README.md runs in a fresh interpreter; one
that connects to the default broker URL gets a broker of its own on a free
port instead (only the URL is substituted). A line ``print(...)  # value``
must print exactly ``value``. A block right after ``<!-- no-test -->`` is
skipped (none is today).
"""

import os
import re
import subprocess
import sys

import pytest

import ringcast
from ringcast.broker import Broker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DEFAULT_URL = "tcp://127.0.0.1:7450"
# children import the very ringcast this run imports (the wheel in CI)
_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ringcast.__file__)))
ENV = dict(os.environ, PYTHONPATH=_PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

_BLOCK = re.compile(r"^(<!-- no-test -->\n)?```python\n(.*?)^```$", re.M | re.S)


def python_blocks(text):
    """``(line, code, skipped)`` of each fenced python block."""
    return [(text.count("\n", 0, m.start(2)), m.group(2), bool(m.group(1)))
            for m in _BLOCK.finditer(text)]


def expected_prints(code):
    """For each top-level ``print(...)`` line, its trailing ``# value`` or None."""
    out = []
    for line in code.splitlines():
        if line.startswith("print("):
            m = re.search(r"\)\s+#\s*(.*)$", line)
            out.append(m.group(1).strip() if m else None)
    return out


def test_the_helpers_find_blocks_and_expectations():
    text = "a\n```python\nprint(1)  # 1\nprint(2)\n```\n<!-- no-test -->\n```python\nx\n```\n"
    assert python_blocks(text) == [(2, "print(1)  # 1\nprint(2)\n", False), (7, "x\n", True)]
    assert expected_prints("print(1)  # 1\nprint(2)\nx = 1  # no print\n") == ["1", None]


with open(README, encoding="utf-8") as _f:
    BLOCKS = python_blocks(_f.read())


def test_the_readme_has_python_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("line,code,skipped", BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_snippet_runs_as_written(line, code, skipped):
    if skipped:
        pytest.skip("marked <!-- no-test --> in README.md")
    broker = None
    if DEFAULT_URL in code:
        broker = Broker("tcp://127.0.0.1:0").start()
        code = code.replace(DEFAULT_URL, broker.endpoints[0])
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=ENV, timeout=30, cwd=ROOT)
    finally:
        if broker is not None:
            broker.stop()
    assert out.returncode == 0 and not out.stderr, f"README.md:{line}\n{out.stderr}"
    printed = out.stdout.splitlines()
    expected = expected_prints(code)
    assert len(printed) == len(expected), (printed, expected)
    for got, want in zip(printed, expected):
        if want is not None:
            assert got == want, f"README.md:{line}: printed {got}, the comment says {want}"
