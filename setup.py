from setuptools import setup

# All metadata lives in pyproject.toml; setup.py only wires in the cffi build.
setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"])
