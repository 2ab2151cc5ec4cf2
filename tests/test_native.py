"""The compiled core is what ``import ringcast`` uses.

A broken or missing build must fail here rather than let the suite pass on
the slow pure-Python twin. The only way to skip is to ask for the twin
explicitly with ``RINGCAST_NO_EXTENSIONS=1``.
"""

import importlib
import importlib.machinery
import os

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("RINGCAST_NO_EXTENSIONS") == "1",
    reason="RINGCAST_NO_EXTENSIONS=1 selects the pure-Python core on purpose",
)

COMPILED = ("ringcast._ring", "ringcast._router", "ringcast._codec", "ringcast._zsockopt")


def _is_extension_file(path):
    return any(path.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


@pytest.mark.parametrize("name", COMPILED)
def test_core_module_is_a_compiled_extension(name):
    mod = importlib.import_module(name)
    assert mod.__file__ is not None
    assert _is_extension_file(mod.__file__), f"{name} was loaded from {mod.__file__}"
    assert isinstance(mod.__spec__.loader, importlib.machinery.ExtensionFileLoader)


def test_extension_suffix_check_rejects_python_sources():
    # the check above must be able to fail: a .py twin is not an extension
    import ringcast._ring_py

    assert not _is_extension_file(ringcast._ring_py.__file__)


def test_package_selects_the_native_core():
    import ringcast
    import ringcast._impl as selected
    import ringcast._ring as native_ring
    import ringcast._router as native_router

    assert selected.USE_EXTENSIONS is True
    assert ringcast.Message is native_ring.Message
    assert selected.Ring is native_ring.Ring
    assert selected.policy_code is native_ring.policy_code
    assert selected.CoreRouter is native_router.CoreRouter
    assert selected.check_subject is native_router.check_subject
    assert selected.check_pattern is native_router.check_pattern
    assert ringcast.MAX_SUBJECT_LEN == native_router.MAX_SUBJECT_LEN


def test_embedded_router_is_built_on_the_native_core():
    import ringcast._ring as native_ring
    import ringcast._router as native_router
    import ringcast.router

    assert ringcast.router.CoreRouter is native_router.CoreRouter
    assert ringcast.router.Ring is native_ring.Ring
