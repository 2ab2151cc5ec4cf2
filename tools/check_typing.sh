#!/usr/bin/env bash
# Typed public API checks against the source tree:
#   1. mypy --strict on tests/typing/example_public_api.py, resolving ringcast
#      from src/ (py.typed, the Python modules, the .pyi stubs of the compiled
#      modules). tests/typing/mypy.ini keeps pyproject's lenient [tool.mypy]
#      (ignore_missing_imports) out of this check.
#   2. mypy.stubtest: every src/ringcast/<module>.pyi of a compiled module
#      matches what the compiled module really exposes. Needs the extensions
#      built and importable (pip install . or pip install -e .).
# tools/check_dist.sh runs both against an installed wheel as well.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

MYPYPATH=src "$PY" -m mypy --strict --config-file tests/typing/mypy.ini --no-incremental \
    tests/typing/example_public_api.py

modules=()
for pyx in src/ringcast/*.pyx; do
    name=$(basename "$pyx" .pyx)
    if [ -f "src/ringcast/$name.pyi" ]; then
        modules+=("ringcast.$name")
    else
        echo "FAIL: no stub src/ringcast/$name.pyi for the compiled module ringcast.$name" >&2
        exit 1
    fi
done
"$PY" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" "${modules[@]}" \
    || { echo "FAIL: build the extensions first (pip install -e .)" >&2; exit 1; }
MYPYPATH=src "$PY" -m mypy.stubtest --allowlist tests/typing/stubtest-allowlist.txt "${modules[@]}"
