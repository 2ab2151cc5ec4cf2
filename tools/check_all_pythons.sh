#!/usr/bin/env bash
# tools/check_dist.sh once per CPython found here (3.9 ... 3.14): build the
# sdist and a wheel from it with that interpreter, repair it, install it
# without a compiler and run the tests. Prints one line per version and
# exits non-zero if any failed; logs in ${TMPDIR:-/tmp}/ringcast-check-X.Y.log.
# Interpreters are looked up as pythonX.Y on PATH, then under pyenv.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
status=0
for v in 3.9 3.10 3.11 3.12 3.13 3.14; do
    py=$(command -v "python$v" || true)
    # a pyenv shim exists for every installed version but runs only the active ones
    if [ -n "$py" ] && ! "$py" -c "" >/dev/null 2>&1; then
        py=""
    fi
    if [ -z "$py" ] && command -v pyenv >/dev/null 2>&1; then
        for d in "$(pyenv root)"/versions/"$v".*; do
            [ -x "$d/bin/python$v" ] && py="$d/bin/python$v"
        done
    fi
    if [ -z "$py" ]; then
        echo "SKIP $v: no interpreter found"
        continue
    fi
    log="${TMPDIR:-/tmp}/ringcast-check-$v.log"
    if PYTHON="$py" bash tools/check_dist.sh > "$log" 2>&1; then
        echo "PASS $v ($py): $(grep -E '^[0-9]+ passed' "$log" | tail -n 1)"
    else
        echo "FAIL $v ($py): $(grep '^FAIL' "$log" | tail -n 1) (log: $log)"
        status=1
    fi
done
exit $status
