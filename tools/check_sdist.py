#!/usr/bin/env python3
"""Check that an sdist holds everything needed to build and test ringcast.

    python tools/check_sdist.py dist/ringcast-X.Y.Z.tar.gz

Required (compared with the source tree this script sits in):
- every src/ringcast/*.pyx, *.pxd, *.pyi, *.py and py.typed;
- every csrc/ file, and every header named by a `cdef extern from "..."`
  in a .pyx/.pxd or by an `#include "..."` in csrc/ (a header the build
  needs but nobody has written down in MANIFEST.in is caught here);
- every tests/ and examples/ file (the wheels are tested from the sdist's
  tests/, which run examples/orders);
- setup.py, pyproject.toml, MANIFEST.in, LICENSE, README.md (when present).
Forbidden: Cython output (src/ringcast/*.c), compiled objects (.so/.pyd/.o),
bytecode, build/ and egg-info leftovers other than the sdist's own PKG-INFO.
Exit status 0 when the sdist is complete, 1 with a list of problems if not.
"""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

from _project import PKG, ROOT, run_file_check

EXTERN_RE = re.compile(r'cdef\s+extern\s+from\s+"([^"<>*]+)"')
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
FORBIDDEN_SUFFIXES = (".so", ".pyd", ".o", ".obj", ".pyc", ".pyo", ".html")


def required_files() -> set[str]:
    need: set[str] = set()
    for pattern in ("*.pyx", "*.pxd", "*.pyi", "*.py", "py.typed"):
        need.update(p.relative_to(ROOT).as_posix() for p in PKG.glob(pattern))
    for base in ("csrc", "tests", "examples"):
        for p in (ROOT / base).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in FORBIDDEN_SUFFIXES:
                need.add(p.relative_to(ROOT).as_posix())
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md"):
        if (ROOT / name).exists():
            need.add(name)
    return need


def referenced_headers(members: dict[str, bytes]) -> dict[str, str]:
    """Header name -> the sdist file that names it, from the sdist's own sources."""
    refs: dict[str, str] = {}
    for name, data in members.items():
        text = data.decode("utf-8", "replace")
        if name.endswith((".pyx", ".pxd")):
            for header in EXTERN_RE.findall(text):
                refs.setdefault(header, name)
        elif name.startswith("csrc/") and name.endswith((".h", ".c")):
            for header in INCLUDE_RE.findall(text):
                refs.setdefault(header, name)
    return refs


def check(sdist: Path) -> list[str]:
    problems: list[str] = []
    with tarfile.open(sdist) as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        if len(tops) != 1:
            return [f"sdist must hold exactly one top-level directory, found {sorted(tops)}"]
        top = tops.pop()
        members: dict[str, bytes] = {}
        for m in tar.getmembers():
            if not m.isfile():
                continue
            rel = m.name[len(top) + 1 :]
            f = tar.extractfile(m)
            members[rel] = f.read() if f is not None and rel.endswith(
                (".pyx", ".pxd", ".h", ".c")
            ) else b""

    for rel in sorted(required_files() - members.keys()):
        problems.append(f"missing from sdist: {rel}")

    include_dirs = ("csrc/", "src/ringcast/", "src/")
    for header, user in sorted(referenced_headers(members).items()):
        if not any(d + header in members for d in include_dirs):
            problems.append(f"missing from sdist: header {header!r} (named in {user})")

    for rel in sorted(members):
        if rel.endswith(FORBIDDEN_SUFFIXES) or "__pycache__" in rel:
            problems.append(f"should not be in sdist: {rel}")
        elif rel.startswith("src/") and rel.endswith(".c"):
            problems.append(f"should not be in sdist (Cython output): {rel}")
        elif rel.startswith(("build/", "dist/", "wheelhouse/")):
            problems.append(f"should not be in sdist (build output): {rel}")
    if "PKG-INFO" not in members:
        problems.append("missing from sdist: PKG-INFO")
    return problems


def main(argv: list[str]) -> int:
    return run_file_check("check_sdist", check, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
