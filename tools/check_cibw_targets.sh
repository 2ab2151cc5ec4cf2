#!/usr/bin/env bash
# cibuildwheel --print-build-identifiers for linux, macos and windows must
# list exactly the intended targets (see tools/check_cibw_targets.py).
# Uses the cibuildwheel release pinned in .github/workflows/wheels.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/_toolenv.sh
version=$(sed -n 's/^ *CIBUILDWHEEL_VERSION: *"\([^"]*\)".*/\1/p' .github/workflows/wheels.yml)
[ -n "$version" ] || fail "no CIBUILDWHEEL_VERSION in .github/workflows/wheels.yml"
tools_need "cibuildwheel==$version"
"$TOOLS_VENV/bin/python" tools/check_cibw_targets.py
