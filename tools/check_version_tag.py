#!/usr/bin/env python3
"""Fail unless a release tag names the version in src/ringcast/_version.py.

    python tools/check_version_tag.py v0.1.0

Used by .github/workflows/wheels.yml before anything is built for a tag,
so a tag can never publish a package whose metadata says another version.
"""

from __future__ import annotations

import sys

from _project import source_version


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    tag = argv[1]
    if tag.startswith("refs/tags/"):
        tag = tag[len("refs/tags/") :]
    version = source_version()
    if tag != f"v{version}":
        print(f"check_version_tag: tag {tag!r} does not match version {version!r}", file=sys.stderr)
        return 1
    print(f"check_version_tag: OK {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
