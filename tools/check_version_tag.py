#!/usr/bin/env python3
"""Fail unless a release tag names the version in src/ringcast/_version.py.

    python tools/check_version_tag.py v0.1.0

Used by .github/workflows/wheels.yml before anything is built for a tag,
so a tag can never publish a package whose metadata says another version.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

VERSION_FILE = Path(__file__).resolve().parent.parent / "src" / "ringcast" / "_version.py"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    tag = argv[1]
    if tag.startswith("refs/tags/"):
        tag = tag[len("refs/tags/") :]
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', VERSION_FILE.read_text(), re.MULTILINE)
    if match is None:
        print(f"check_version_tag: no __version__ in {VERSION_FILE}", file=sys.stderr)
        return 1
    version = match.group(1)
    if tag != f"v{version}":
        print(f"check_version_tag: tag {tag!r} does not match version {version!r}", file=sys.stderr)
        return 1
    print(f"check_version_tag: OK {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
