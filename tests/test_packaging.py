"""Fast packaging checks: version, installed layout, typed API, build config.

The slow checks (building the sdist and wheels, installing without a
compiler, auditwheel, cibuildwheel targets) are scripts under tools/; see
docs/packaging.md. Whether the compiled core is the one loaded is
tests/test_native.py.

``RINGCAST_TEST_INSTALLED=1`` (set by CI and by cibuildwheel's test
command) additionally asserts that ringcast was imported from
site-packages, i.e. that the tests ran against the installed wheel and not
against a source checkout.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import ringcast

PKG_DIR = Path(ringcast.__file__).resolve().parent
ROOT = Path(__file__).resolve().parent.parent
# Source-tree checks need the checkout; they skip when only tests/ was
# copied next to an installed wheel (cibuildwheel, tools/check_dist.sh).
IN_CHECKOUT = (ROOT / "setup.py").is_file() and (ROOT / "src" / "ringcast").is_dir()
needs_checkout = pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source checkout")
EXAMPLE = Path(__file__).resolve().parent / "typing" / "example_public_api.py"
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]


def _compiled_modules() -> list[str]:
    """Names of the extension modules shipped beside ringcast/__init__.py."""
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    names = set()
    for path in PKG_DIR.iterdir():
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is not None:
            names.add(path.name[: -len(suffix)])
    return sorted(names)


def test_version_matches_package_metadata():
    assert ringcast.__version__ == importlib.metadata.version("ringcast")


def test_version_has_one_source():
    from ringcast import _version

    assert ringcast.__version__ is _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([abrc]+\d+|\.dev\d+|\.post\d+)?", ringcast.__version__)


def test_cli_version_agrees(capsys, monkeypatch):
    try:
        importlib.import_module("ringcast.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "ringcast.cli":
            raise
        pytest.skip("ringcast.cli not written yet")
    (entry,) = [
        ep for ep in importlib.metadata.distribution("ringcast").entry_points
        if ep.group == "console_scripts" and ep.name == "ringcast"
    ]
    main = entry.load()
    monkeypatch.setattr(sys, "argv", ["ringcast", "--version"])
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert ringcast.__version__ in out.split(), out


@pytest.mark.skipif(
    os.environ.get("RINGCAST_TEST_INSTALLED") != "1",
    reason="set RINGCAST_TEST_INSTALLED=1 when testing an installed wheel",
)
def test_imported_from_the_installed_wheel():
    site_dirs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    assert PKG_DIR.parent in site_dirs, (
        f"ringcast was imported from {PKG_DIR}, not from site-packages {sorted(site_dirs)}"
    )
    if os.environ.get("RINGCAST_NO_EXTENSIONS", "") in ("", "0"):
        ring = importlib.import_module("ringcast._ring")
        assert Path(ring.__file__).resolve().parent == PKG_DIR


def test_typed_package_ships_marker_and_stubs():
    assert (PKG_DIR / "py.typed").is_file()
    compiled = _compiled_modules()
    if os.environ.get("RINGCAST_NO_EXTENSIONS", "") in ("", "0"):
        assert compiled, f"no compiled modules in {PKG_DIR}"
    missing = [name for name in compiled if not (PKG_DIR / f"{name}.pyi").is_file()]
    assert not missing, f"compiled modules without a .pyi stub: {missing}"


def test_typing_example_runs():
    # The example checked by mypy --strict must also be true at runtime. It
    # runs in its own process: its asyncio.run() would otherwise replace the
    # event loop pytest-asyncio keeps for this thread (an unclosed-loop
    # ResourceWarning on Python 3.9).
    if sys.version_info < (3, 11):
        pytest.importorskip("typing_extensions")
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    result = ast.literal_eval(out.strip().splitlines()[-1])
    assert result == {
        "pubsub": [b"order-1", b"order-2", b"order-3"],
        "queue": 1,
        "reply": b"stock:widget",
        "aio": b"tick",
        "remote": b"order-9",
        "remote_reply": b"stock:lamp",
        "aio_remote": b"tick",
    }


@needs_checkout
def test_every_cython_module_has_a_stub_and_its_headers():
    tree = ast.parse((ROOT / "setup.py").read_text())
    modules = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets)
    )
    src = ROOT / "src" / "ringcast"
    pyx = sorted(p.stem for p in src.glob("*.pyx"))
    assert set(pyx) <= set(modules), f"a .pyx that setup.py would not build: {pyx}"
    for name in pyx:
        assert (src / f"{name}.pyi").is_file(), f"src/ringcast/{name}.pyi is missing"
    for source in [*src.glob("*.pyx"), *src.glob("*.pxd")]:
        for header in re.findall(r'cdef\s+extern\s+from\s+"([^"<>*]+)"', source.read_text()):
            assert (ROOT / "csrc" / header).is_file(), f"{source.name} needs csrc/{header}"


@needs_checkout
def test_build_targets_agree():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires = config["project"]["requires-python"]
    assert requires == f">={PYTHONS[0]}"
    cibw = config["tool"]["cibuildwheel"]
    assert cibw["build"] == [f"cp{v.replace('.', '')}-*" for v in PYTHONS]
    assert cibw["linux"]["archs"] == ["x86_64", "aarch64"]
    assert cibw["macos"]["archs"] == ["x86_64", "arm64"]
    assert cibw["windows"]["archs"] == ["AMD64"]
    # the test command must run against the wheel, from the copied tests
    assert cibw["test-sources"] == ["tests", "examples", "pyproject.toml", "README.md"]
    assert "tests" in cibw["test-command"]
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    matrix = re.search(r"python: \[(.*)\]", ci)
    assert matrix is not None
    assert [v.strip().strip('"') for v in matrix.group(1).split(",")] == PYTHONS
