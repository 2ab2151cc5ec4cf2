#!/usr/bin/env python3
"""Compare cibuildwheel's build identifiers with the intended targets.

    python tools/check_cibw_targets.py   (cibuildwheel installed in this interpreter)

Runs `cibuildwheel --print-build-identifiers --platform P` for linux, macos
and windows with the [tool.cibuildwheel] configuration in pyproject.toml
and fails unless each lists exactly CPython 3.9-3.14 for:
manylinux x86_64 + aarch64, musllinux x86_64 (linux); macOS x86_64 + arm64;
Windows AMD64.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ["cp39", "cp310", "cp311", "cp312", "cp313", "cp314"]
EXPECTED = {
    "linux": ["manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64"],
    "macos": ["macosx_x86_64", "macosx_arm64"],
    "windows": ["win_amd64"],
}


def identifiers(platform: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    out = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    return set(out.split())


def main() -> int:
    ok = True
    for platform, tags in EXPECTED.items():
        want = {f"{py}-{tag}" for py in PYTHONS for tag in tags}
        got = identifiers(platform)
        print(f"{platform}: {' '.join(sorted(got))}")
        if got != want:
            ok = False
            if want - got:
                print(f"  missing: {' '.join(sorted(want - got))}", file=sys.stderr)
            if got - want:
                print(f"  unexpected: {' '.join(sorted(got - want))}", file=sys.stderr)
    print("check_cibw_targets: OK" if ok else "check_cibw_targets: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
