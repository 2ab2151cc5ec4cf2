"""Facts about the source tree that several tools/ scripts read.

Read from the files themselves (without importing ringcast or running
setup.py), so the checks work before anything is built.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "ringcast"


def source_version() -> str:
    """__version__ from src/ringcast/_version.py, the one version source."""
    text = (PKG / "_version.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no __version__ in {PKG / '_version.py'}")
    return match.group(1)


def setup_modules() -> list[str]:
    """The Cython module names of setup.py's MODULES list."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets
        ):
            return [str(v) for v in ast.literal_eval(node.value)]
    raise SystemExit("no MODULES list in setup.py")


def run_file_check(
    tool: str, check: Callable[[Path], list[str]], argv: list[str], usage: str
) -> int:
    """main() of a script that checks one file (an sdist, a wheel): prints each
    problem and a closing OK/FAIL line; exit status 0, 1, or 2 for bad usage."""
    if len(argv) != 2:
        print(usage, file=sys.stderr)
        return 2
    path = Path(argv[1])
    problems = check(path)
    for p in problems:
        print(f"{tool}: {p}", file=sys.stderr)
    if problems:
        print(f"{tool}: FAIL {path.name}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{tool}: OK {path.name}")
    return 0
