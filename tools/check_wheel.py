#!/usr/bin/env python3
"""Check what a built ringcast wheel holds.

    python tools/check_wheel.py dist/ringcast-X.Y.Z-cp311-cp311-linux_x86_64.whl

- a platform wheel (never py3-none-any: that would be a build that silently
  skipped the extensions);
- one compiled module (.so/.pyd) per Cython module of setup.py's MODULES,
  and a .pyi stub beside each;
- py.typed, _version.py, and METADATA whose Version is the one in
  src/ringcast/_version.py;
- no Cython output (.c), no object files, no tests.
Exit status 0 when all hold, 1 with a list of problems if not.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

from _project import run_file_check, setup_modules, source_version


def check(wheel: Path) -> list[str]:
    problems: list[str] = []
    if wheel.name.endswith("-none-any.whl"):
        problems.append(f"{wheel.name} is a pure wheel: the extension modules were not built")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        meta_text = zf.read(metadata).decode() if metadata else ""

    for mod in setup_modules():
        compiled = [
            n for n in names
            if n.startswith(f"ringcast/{mod}.") and n.endswith((".so", ".pyd"))
        ]
        if len(compiled) != 1:
            problems.append(f"expected one compiled ringcast/{mod} module, found {compiled}")
        if f"ringcast/{mod}.pyi" not in names:
            problems.append(f"missing stub ringcast/{mod}.pyi")

    for required in ("ringcast/__init__.py", "ringcast/_version.py", "ringcast/py.typed"):
        if required not in names:
            problems.append(f"missing {required}")

    match = re.search(r"^Version: (\S+)$", meta_text, re.MULTILINE)
    version = source_version()
    if match is None or match.group(1) != version:
        found = match.group(1) if match else None
        problems.append(f"METADATA Version {found!r} != _version.py {version!r}")

    for n in sorted(names):
        if n.endswith((".c", ".o", ".obj", ".html")) or n.startswith("tests/"):
            problems.append(f"should not be in the wheel: {n}")
    return problems


def main(argv: list[str]) -> int:
    return run_file_check("check_wheel", check, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
