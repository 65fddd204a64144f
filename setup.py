import glob

from setuptools import Extension, setup

# All metadata lives in pyproject.toml; setup.py only wires in the C builds:
# the kernels (cffi, csrc/build_ffi.py) and the compiled entry point of the
# common small call (csrc/py/fastcall.c, a plain CPython extension that calls
# the kernels through their addresses in fastloss._native).
setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    ext_modules=[Extension("fastloss._fastcall", ["csrc/py/fastcall.c"], include_dirs=["csrc"],
                           extra_compile_args=["-O2", "-std=c11", "-fvisibility=hidden"],
                           # (it fills the kernels' argument structs: rebuild when they change)
                           depends=sorted(glob.glob("csrc/*.h")),
                           optional=True)],
)
