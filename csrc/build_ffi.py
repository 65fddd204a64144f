"""cffi (API mode) build of fastloss._native.

Used by setup.py (``cffi_modules=["csrc/build_ffi.py:ffibuilder"]``), or run
directly -- ``python csrc/build_ffi.py`` -- to compile the extension into
``fastloss/`` in place during development.

Flags: portable ones only, so the binary runs on any x86-64 (the AVX2 and
AVX-512 paths are chosen at run time) and compiles on aarch64.  No
-ffast-math (it breaks the rounding tricks in vmath.h and NaN handling), no
-march=native.  ``-ffp-contract=off``: GCC never fuses a*b+c by itself, so
an expression gives the same bits in every loop it is inlined into (value-only
and value+gradient loops agree); vmath.h uses FMA explicitly on the paths
whose target has it.
Extra flags: the environment variable FASTLOSS_CFLAGS (appended, shell-split).
"""

import glob
import os
import shlex

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "fastloss.h")


def _rel(path):
    # setuptools wants source paths relative to the setup.py directory (the
    # working directory of a build); fall back to absolute elsewhere.
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _cdef():
    with open(HEADER, encoding="utf-8") as f:
        text = f.read()
    begin, end = "/* FL_CDEF_BEGIN */", "/* FL_CDEF_END */"
    return text[text.index(begin) + len(begin) : text.index(end)]


CFLAGS = [
    "-O3",
    "-std=c11",
    "-fno-trapping-math",  # else GCC will not vectorise loops with selects
    "-fno-math-errno",
    "-ffp-contract=off",  # FMA only where vmath.h asks for it: same bits in every loop
    "-fvisibility=hidden",
    "-Werror=implicit-function-declaration",
] + shlex.split(os.environ.get("FASTLOSS_CFLAGS", ""))

def _limited():
    # cffi builds CPython (non-debug) extensions for the limited API
    import sys

    return sys.implementation.name == "cpython" and not hasattr(sys, "gettotalrefcount")


def make_builder(relative=True):
    fix = _rel if relative else (lambda p: p)
    builder = cffi.FFI()
    builder.cdef(_cdef())
    builder.set_source(
        "fastloss._native",
        '#include "fastloss.h"',
        sources=[fix(p) for p in sorted(glob.glob(os.path.join(HERE, "*.c")))],
        include_dirs=[fix(HERE)],
        depends=[fix(p) for p in sorted(glob.glob(os.path.join(HERE, "*.h")))],
        extra_compile_args=CFLAGS,
        libraries=["pthread", "m"],
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil
    import tempfile

    # cffi compiles inside tmpdir: absolute paths here.  The result goes where
    # `pip install -e .` puts it, under the same name (cffi builds for the
    # limited API: .abi3.so), so neither build can shadow the other.
    pkg = os.path.join(os.path.dirname(HERE), "fastloss")
    with tempfile.TemporaryDirectory() as tmp:
        so = make_builder(relative=False).compile(tmpdir=tmp, verbose=bool(os.environ.get("VERBOSE")))
        for old in glob.glob(os.path.join(pkg, "_native.*.so")):
            os.remove(old)
        dest = os.path.join(pkg, "_native.abi3.so" if ".abi3." in so or _limited() else os.path.basename(so))
        shutil.copy(so, dest)
        print(dest)
