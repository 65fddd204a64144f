"""Value checks that run before a kernel: probabilities in [0, 1], labels ±1.

Host arrays are scanned by the C scanner when the native module is built
(one fast pass), else by NumPy; GPU arrays by the CUDA backend's scanner.
The error names the argument, the first offending position and its value.
"""
from __future__ import annotations

import numpy as np


_NATIVE: list = []   # [module or None], filled on first use


def _native():
    if not _NATIVE:
        from . import native
        _NATIVE.append(native if native.unavailable_reason() is None else None)
    return _NATIVE[0]


def _describe(meta, flat_index):
    position = np.unravel_index(flat_index, meta.shape) if meta.shape else ()
    return tuple(int(i) for i in position)


def _first_bad_host(array, lo=None, hi=None):
    native = _native()
    if native is not None and array.dtype in (np.float32, np.float64):
        flat = np.ascontiguousarray(array).reshape(-1)
        return native.first_outside(flat, lo, hi) if lo is not None else native.first_not_pm1(flat)
    flat = np.asarray(array).reshape(-1)
    bad = ~((flat >= lo) & (flat <= hi)) if lo is not None else ~((flat == 1) | (flat == -1))
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else -1


def _first_bad(meta, lo, hi, gpu_module):
    if meta.on_gpu:
        return gpu_module.first_outside(meta.array, lo, hi) if lo is not None \
            else gpu_module.first_not_pm1(meta.array)
    return _first_bad_host(meta.array, lo, hi)


def _value_at(meta, index):
    if meta.on_gpu:
        return "(on the GPU)"
    return repr(np.asarray(meta.array).reshape(-1)[index].item())


def require_within(meta, name, lo, hi, *, gpu_module=None):
    index = _first_bad(meta, lo, hi, gpu_module)
    if index >= 0:
        raise ValueError(f"{name}: every element must lie in [{lo:g}, {hi:g}]; element "
                         f"{_describe(meta, index)} is {_value_at(meta, index)}")


def require_pm1(meta, name, *, gpu_module=None):
    index = _first_bad(meta, None, None, gpu_module)
    if index >= 0:
        raise ValueError(f"{name}: every element must be -1 or +1; element "
                         f"{_describe(meta, index)} is {_value_at(meta, index)}")
