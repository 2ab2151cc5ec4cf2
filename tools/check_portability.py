#!/usr/bin/env python3
"""Portability checks of the native code (no MSVC needed).

    python tools/check_portability.py

1. Every csrc/*.h compiles on its own (self-contained includes) as strict
   ISO C11 (what CPython itself requires of a compiler, PEP 7): gcc and
   clang with -std=c11 -pedantic-errors -Wall -Wextra -Wvla -Werror
   (statement expressions, case ranges, zero-length arrays and VLAs, which
   MSVC lacks, are errors here).
2. Each header compiles for 64-bit Windows (LLP64: 32-bit long) with clang
   --target=x86_64-w64-mingw32 against the mingw-w64 UCRT headers, with
   -Wshorten-64-to-32 (Debian/Ubuntu package mingw-w64-x86-64-dev).
3. Preprocessed as MSVC would (clang --target=x86_64-pc-windows-msvc
   -fms-compatibility: _MSC_VER defined, __GNUC__ not; system headers
   replaced by empty stand-ins), no GNU-only token is left in code from
   csrc/: __attribute__, __builtin_*, typeof, __int128, __thread, asm,
   statement expressions. A header may use them only behind
   `#if defined(__GNUC__)` (or similar) with a fallback.
4. Each .pyx is cythonized and the C is compiled with clang -fsyntax-only
   against this Python's headers (what a macOS build does).
5. No .pyx/.pxd declares a POSIX-only header (unistd.h, pthread.h, sys/*,
   endian.h, ...) or calls a GNU builtin directly.
A compiler or header set that is not installed is reported as SKIP.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PKG = ROOT / "src" / "ringcast"

STRICT = ["-std=c11", "-pedantic-errors", "-Wall", "-Wextra", "-Wvla", "-Werror"]
MINGW_INCLUDE = Path("/usr/x86_64-w64-mingw32/include")
WIN64_TARGET = [
    "--target=x86_64-w64-mingw32", "-D_UCRT", "-isystem", str(MINGW_INCLUDE),
    *STRICT, "-Wshorten-64-to-32",
]
MSVC_PREPROCESS = ["--target=x86_64-pc-windows-msvc", "-fms-compatibility", "-std=c11", "-E"]
SYSTEM_INCLUDE = re.compile(r"^\s*#\s*include\s*<([^>]+)>", re.MULTILINE)
GNU_TOKENS = re.compile(
    r"__attribute__|__builtin_\w+|\b__typeof__\b|\btypeof\b|__int128|__thread\b"
    r"|\b__asm__\b|\basm\s*\(|\(\s*\{"
)
POSIX_ONLY = re.compile(
    r'(cdef\s+extern\s+from|#\s*include)\s+[<"]'
    r"(unistd\.h|pthread\.h|sys/[\w/.]+|endian\.h|byteswap\.h|alloca\.h|strings\.h"
    r"|sched\.h|dlfcn\.h|poll\.h|netinet/[\w.]+|arpa/[\w.]+)[>\"]"
)

results: list[tuple[str, str]] = []


def record(status: str, what: str, detail: str = "") -> None:
    results.append((status, what))
    print(f"{status}: {what}")
    if detail:
        print("    " + detail.strip().replace("\n", "\n    "))


def compile_header(cc: str, flags: list[str], header: Path, tmp: Path) -> None:
    tu = tmp / f"tu_{header.stem}.c"
    tu.write_text(f'#include "{header.name}"\nint rc_portability_tu;\n')
    proc = subprocess.run(
        [cc, *flags, "-fsyntax-only", f"-I{CSRC}", str(tu)], capture_output=True, text=True
    )
    mode = " ".join(f for f in flags if f.startswith(("--target", "-std")))
    label = f"{header.name}: {cc} {mode}"
    record("PASS" if proc.returncode == 0 else "FAIL", label, proc.stderr)


def gnu_tokens_after_msvc_preprocessing(clang: str, header: Path, tmp: Path) -> None:
    # Empty stand-ins for the system headers: only the tokens of csrc/ code
    # matter here, and the real MSVC headers are not available.
    fake = tmp / "msvc-sysinclude"
    for h in CSRC.glob("*.h"):
        for name in SYSTEM_INCLUDE.findall(h.read_text()):
            (fake / name).parent.mkdir(parents=True, exist_ok=True)
            (fake / name).touch()
    fake.mkdir(exist_ok=True)
    tu = tmp / f"pp_{header.stem}.c"
    tu.write_text(f'#include "{header.name}"\n')
    proc = subprocess.run(
        [clang, *MSVC_PREPROCESS, "-nostdinc", "-isystem", str(fake), f"-I{CSRC}", str(tu)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        record("FAIL", f"{header.name}: preprocess for MSVC target", proc.stderr)
        return
    hits = []
    current = ""
    for line in proc.stdout.splitlines():
        marker = re.match(r'#\s*\d+\s+"([^"]+)"', line)
        if marker:
            current = marker.group(1)
            continue
        if Path(current).resolve().parent == CSRC.resolve() and GNU_TOKENS.search(line):
            hits.append(f"{Path(current).name}: {line.strip()}")
    record(
        "FAIL" if hits else "PASS",
        f"{header.name}: no unguarded GNU-only construct (MSVC-target preprocessing)",
        "\n".join(hits),
    )


def cython_c_with_clang(clang: str, tmp: Path) -> None:
    include = sysconfig.get_paths()["include"]
    for pyx in sorted(PKG.glob("*.pyx")):
        out = tmp / f"{pyx.stem}.c"
        proc = subprocess.run(
            [sys.executable, "-m", "cython", "-3", "-I", str(ROOT / "src"), "-I", str(CSRC),
             "--module-name", f"ringcast.{pyx.stem}", "-o", str(out), str(pyx)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            record("FAIL", f"{pyx.name}: cython", proc.stderr[-2000:])
            continue
        proc = subprocess.run(
            [clang, "-fsyntax-only", "-std=c99", f"-I{CSRC}", f"-I{include}", str(out)],
            capture_output=True, text=True,
        )
        record("PASS" if proc.returncode == 0 else "FAIL",
               f"{pyx.name}: Cython output compiles with clang", proc.stderr[-2000:])


def pyx_declarations() -> None:
    hits = []
    for src in sorted([*PKG.glob("*.pyx"), *PKG.glob("*.pxd"), *PKG.glob("*.pxi")]):
        for n, line in enumerate(src.read_text().splitlines(), 1):
            if POSIX_ONLY.search(line) or "__builtin_" in line or "__attribute__" in line:
                hits.append(f"{src.name}:{n}: {line.strip()}")
    record("FAIL" if hits else "PASS",
           ".pyx/.pxd declare no POSIX-only header or GNU builtin", "\n".join(hits))


def main() -> int:
    headers = sorted(CSRC.glob("*.h"))
    gcc, clang = shutil.which("gcc"), shutil.which("clang")
    win64 = clang is not None and MINGW_INCLUDE.is_dir()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for header in headers:
            for cc in (gcc, clang):
                if cc:
                    compile_header(cc, STRICT, header, tmp)
            if clang and win64:
                compile_header(clang, WIN64_TARGET, header, tmp)
            if clang:
                gnu_tokens_after_msvc_preprocessing(clang, header, tmp)
        if clang:
            cython_c_with_clang(clang, tmp)
        pyx_declarations()
    for name, cc in (("gcc", gcc), ("clang", clang)):
        if not cc:
            record("SKIP", f"{name} not installed: its checks did not run")
    if clang and not win64:
        record("SKIP", f"no {MINGW_INCLUDE} (mingw-w64-x86-64-dev): Windows LLP64 check not run")
    failed = sum(1 for status, _ in results if status == "FAIL")
    passed = sum(1 for status, _ in results if status == "PASS")
    print(f"check_portability: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
