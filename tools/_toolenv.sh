# shellcheck shell=bash
# Sourced by the tools/check_*.sh scripts (bash). Provides:
#   PY            the interpreter to build and test with ($PYTHON, default python3)
#   TOOLS_VENV    a virtualenv for the packaging tools, on the same Python as
#                 PY so that `python -m build` there builds PY's wheel
#                 ($RINGCAST_TOOLS_VENV, default .venv-tools-X.Y/ in the
#                 repository; git-ignored)
#   tools_need    pip-install packaging tools into TOOLS_VENV (quiet when present)
#   step / pass / fail   uniform progress and result lines
# The tools live apart from the interpreter under test so that installing
# them never changes what the checks measure.
PY=${PYTHON:-python3}
TOOLS_VENV=${RINGCAST_TOOLS_VENV:-$(pwd)/.venv-tools-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}

tools_need() {
    if [ ! -x "$TOOLS_VENV/bin/python" ]; then
        "$PY" -m venv "$TOOLS_VENV"
    fi
    "$TOOLS_VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

step() { printf '\n== %s\n' "$*"; }
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
