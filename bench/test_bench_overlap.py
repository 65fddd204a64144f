"""pytest-benchmark suite of the overlap (Dice-family) losses: every case of
``fastloss.testing.OVERLAP_CASES`` x backend (c, numba, monai) x mode, float32
logits with uint8 labels, softmax inside the loss, mean.  ``monai`` is MONAI's
loss module on PyTorch CPU as its users call it (``softmax=True,
to_onehot_y=True``), forward + ``torch.autograd.grad``.  Full size by default
((2, 4, 128, 128, 128) volumes); the smoke run uses each case's small shape.

``extra_info`` is as in test_bench_multiclass.py (family="overlap"), with the
peak extra memory of one call in both modes, so bench/report.py can judge
the memory target against MONAI's.
"""
from __future__ import annotations

import functools
import math

import pytest

import fastloss
from fastloss._bench import OthersCPU, make_multiclass_call, peak_extra_memory
from fastloss.testing import OVERLAP_CASES, make_multiclass_inputs

from test_bench_elementwise import run_benchmark
from test_bench_multiclass import _value

BACKENDS = ("c", "numba", "monai")


@functools.lru_cache(maxsize=1)
def inputs(label: str, smoke: bool):
    case = OVERLAP_CASES[label]
    x, y = make_multiclass_inputs(case, case.smoke_shape if smoke else case.shape)
    ref = float(getattr(fastloss, case.name)(x, y, **case.params))
    return x, y, ref


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label", list(OVERLAP_CASES))
def test_overlap(benchmark, smoke, label, backend, grad):
    if backend == "monai":
        pytest.importorskip("torch")
        pytest.importorskip("monai")
    elif not fastloss.backends()[backend].available:
        pytest.skip(f"backend {backend} unavailable: {fastloss.backends()[backend].reason}")
    case = OVERLAP_CASES[label]
    x, y, ref = inputs(label, smoke)
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"{label}-{mode}"
    benchmark.extra_info.update(family="overlap", case=label, backend=backend, mode=mode,
                                shape=list(x.shape), dtype=x.dtype.name,
                                bytes_read=int(x.nbytes + y.nbytes))
    call = make_multiclass_call(case, "torch" if backend == "monai" else backend, x, y,
                                grad=grad)
    with OthersCPU() as others:
        result = run_benchmark(benchmark, call)
    value = _value(result, grad)
    del result
    extra, result = peak_extra_memory(call, expected_bytes=x.nbytes if grad else 0)
    del result
    benchmark.extra_info.update(value=value, others_cpu=others.share, peak_extra_bytes=extra)
    assert math.isclose(value, ref, rel_tol=1e-4, abs_tol=1e-6), (value, ref)
