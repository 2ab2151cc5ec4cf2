"""Shared fixtures: the two implementations of the core, side by side.

Like multidict's ``impl`` fixture: every test that takes ``impl`` runs once
against the compiled core (``c``: ``ringcast._ring`` / ``ringcast._router``)
and once against the pure-Python twin (``py``: ``ringcast._ring_py`` /
``ringcast._router_py``). ``--no-c-extensions`` or ``RINGCAST_NO_EXTENSIONS=1``
deselects the ``c`` cases. Keep this file generic; subfolders add their own
conftest.py for their own fixtures.
"""

import importlib
import os
import types

import pytest

IMPLS = ("c", "py")
_MODULES = {"c": ("ringcast._ring", "ringcast._router"),
            "py": ("ringcast._ring_py", "ringcast._router_py")}


def pytest_addoption(parser):
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="skip the tests of the compiled core (impl='c'); "
        "the same as setting RINGCAST_NO_EXTENSIONS=1",
    )


def pytest_configure(config):
    # Hypothesis formats a failing example as a patch with libcst, whose import
    # of mypy_extensions.TypedDict warns; under filterwarnings=error that turns
    # every property-test failure into an INTERNALERROR hiding the example.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


def c_extensions_disabled(config):
    """True when the compiled core must not be tested in this run."""
    env = os.environ.get("RINGCAST_NO_EXTENSIONS", "")
    return config.getoption("--no-c-extensions") or env not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not c_extensions_disabled(config):
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("impl") == "c":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def load_impl(name):
    """A namespace with the core classes and functions of one implementation."""
    ring_mod, router_mod = (importlib.import_module(m) for m in _MODULES[name])
    return types.SimpleNamespace(
        name=name,
        ring_module=ring_mod,
        router_module=router_mod,
        Ring=ring_mod.Ring,
        Message=ring_mod.Message,
        policy_code=ring_mod.policy_code,
        CoreRouter=router_mod.CoreRouter,
        check_subject=router_mod.check_subject,
        check_pattern=router_mod.check_pattern,
        MAX_SUBJECT_LEN=router_mod.MAX_SUBJECT_LEN,
    )


@pytest.fixture(scope="session", params=IMPLS)
def impl(request):
    """The core under test: ``impl.Ring``, ``impl.CoreRouter``... of "c" or "py"."""
    return load_impl(request.param)
