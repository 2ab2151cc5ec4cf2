"""Build the Cython extension modules.

Environment switches (like multidict's and msgspec's):
  RINGCAST_DEBUG_BUILD=1  -O0 -g3, bounds checks on, CYTHON_TRACE
  RINGCAST_SANITIZE=1     build with -fsanitize=address,undefined
  RINGCAST_ANNOTATE=1     write Cython HTML annotation next to the sources
"""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RINGCAST_DEBUG_BUILD") == "1"
SANITIZE = os.environ.get("RINGCAST_SANITIZE") == "1"
MSVC = sys.platform == "win32"

if MSVC:
    cflags = ["/O2"] if not DEBUG else ["/Od", "/Zi"]
    ldflags = []
else:
    cflags = ["-O0", "-g3"] if DEBUG else ["-O3"]
    cflags += ["-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]
    ldflags = []
    if SANITIZE:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
        cflags += san
        ldflags += san

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
    "freethreading_compatible": False,
}

MODULES = ["_ring", "_router", "_codec", "_zsockopt"]

extensions = [
    Extension(
        f"ringcast.{name}",
        [f"src/ringcast/{name}.pyx"],
        include_dirs=["csrc"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
    )
    for name in MODULES
]
missing = [e.sources[0] for e in extensions if not os.path.exists(e.sources[0])]
if missing:  # an sdist that lost a source must not build a wheel without it
    raise SystemExit(f"missing extension sources: {', '.join(missing)}")

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("RINGCAST_ANNOTATE") == "1",
        include_path=["src"],
    ),
)
