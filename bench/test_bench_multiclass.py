"""pytest-benchmark suite of the multi-class losses: every case of
``fastloss.testing.MULTICLASS_CASES`` x backend (c, numba, torch) x mode,
float32, mean.  Full size by default (the LLM shape N = 4096, C = 32768, the
segmentation shape (8, 21, 256, 256) with uint8 labels, ...); the smoke run
uses each case's small shape.

``extra_info`` records family="multiclass", the case label, backend, mode,
shape, the loss value (checked against fastloss's C result at rtol 1e-4 so
that a mismatched formula can't pass as a fast one) and, for value+grad, the
peak extra memory of one call beyond its input and its gradient
(``fastloss._bench.peak_extra_memory``: the resident-memory high-water mark,
so PyTorch's allocations count too).  bench/report.py turns them into a table.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import fastloss
from fastloss._bench import OthersCPU, make_multiclass_call, peak_extra_memory
from fastloss.testing import MULTICLASS_CASES, make_multiclass_inputs

from test_bench_elementwise import run_benchmark

BACKENDS = ("c", "numba", "torch")


@functools.lru_cache(maxsize=2)
def inputs(label: str, smoke: bool):
    case = MULTICLASS_CASES[label]
    x, y = make_multiclass_inputs(case, case.smoke_shape if smoke else case.shape)
    ref = float(getattr(fastloss, case.name)(x, y, **case.params))
    return x, y, ref


def _value(result, grad):
    loss = result[0] if grad else result
    if hasattr(loss, "detach"):
        loss = loss.detach()
    return float(np.asarray(loss))


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", list(MULTICLASS_CASES))
def test_multiclass(benchmark, smoke, label, backend, grad):
    if backend == "torch":
        pytest.importorskip("torch")
    elif not fastloss.backends()[backend].available:
        pytest.skip(f"backend {backend} unavailable: {fastloss.backends()[backend].reason}")
    x, y, ref = inputs(label, smoke)
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"{label}-{mode}"
    benchmark.extra_info.update(family="multiclass", case=label, backend=backend, mode=mode,
                                shape=list(x.shape), dtype=x.dtype.name,
                                bytes_read=int(x.nbytes + y.nbytes))
    call = make_multiclass_call(label, backend, x, y, grad=grad)
    with OthersCPU() as others:
        result = run_benchmark(benchmark, call)
    value = _value(result, grad)
    del result
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    if grad:
        extra, result = peak_extra_memory(call, expected_bytes=x.nbytes)
        del result
        benchmark.extra_info["peak_extra_bytes"] = extra
    assert math.isclose(value, ref, rel_tol=1e-4, abs_tol=1e-6), (value, ref)
