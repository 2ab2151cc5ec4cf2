#!/usr/bin/env bash
# mypy --strict on tests/typing/example_public_api.py against the source
# tree (src/ringcast: py.typed, the Python modules and the .pyi stubs of the
# extension modules). tests/typing/mypy.ini keeps pyproject's lenient
# [tool.mypy] (ignore_missing_imports) out of this check.
# tools/check_dist.sh runs the same check against the installed wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
MYPYPATH=src python3 -m mypy --strict --config-file tests/typing/mypy.ini --no-incremental \
    tests/typing/example_public_api.py
