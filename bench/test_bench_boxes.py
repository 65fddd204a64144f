"""pytest-benchmark suite of the box regression losses: each loss x backend (c,
numba, torch) x mode (forward, value+grad), 1e6 float32 boxes, mean reduction;
the smoke run (``FASTLOSS_BENCH_SMOKE=1`` or ``--benchmark-disable``) uses 1000
boxes.  ``FASTLOSS_BENCH_BOXES=N`` replaces the size of either run.

torch = torchvision's formulas (ops/_utils.py ``_loss_inter_union``,
giou_loss.py, diou_loss.py, ciou_loss.py) written out below in torch ops,
since torchvision is not importable beside torch 2.13 here; value+grad =
forward + ``torch.autograd.grad`` on a leaf tensor made outside the timed
region.  fastloss runs with its defaults (``check_degenerate=True``: the check
is part of the timed call).

``extra_info``: family="boxes", case/loss, backend, n (boxes), mode, dtype,
bytes_read (boxes1 + boxes2), the loss value (checked against the float64
NumPy reference at rtol 1e-4, so that a wrong formula can't pass as a fast
one) and others_cpu (the share of the CPUs other processes used meanwhile).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest

import fastloss
from fastloss import reference
from fastloss._bench import OthersCPU, make_box_call
from fastloss.losses import boxes as B
from fastloss.testing import make_boxes

from test_bench_elementwise import run_benchmark

DTYPE = np.float32
FULL_N, SMOKE_N = 1_000_000, 1_000
BACKENDS = ("c", "numba", "torch")
LOSSES = tuple(B.BOX_LOSSES)


def n_boxes(smoke: bool) -> int:
    env = os.environ.get("FASTLOSS_BENCH_BOXES")
    return int(float(env)) if env else (SMOKE_N if smoke else FULL_N)


@functools.lru_cache(maxsize=2)
def inputs(n: int):
    """(boxes1, boxes2) float32 (n, 4), made once per session."""
    return make_boxes(n, DTYPE)


@functools.lru_cache(maxsize=None)
def expected(name: str, n: int) -> float:
    b1, b2 = inputs(n)
    return float(getattr(reference, name)(b1, b2))



def _value(result, grad):
    loss = result[0] if grad else result
    if hasattr(loss, "detach"):
        loss = loss.detach()
    return float(np.asarray(loss))


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LOSSES)
def test_boxes(benchmark, smoke, name, backend, grad):
    if backend == "torch":
        pytest.importorskip("torch")
    elif not fastloss.backends()[backend].available:
        pytest.skip(f"backend {backend} unavailable: {fastloss.backends()[backend].reason}")
    n = n_boxes(smoke)
    b1, b2 = inputs(n)
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"boxes-{name}-{mode}"
    benchmark.extra_info.update(family="boxes", case=name, loss=name, backend=backend, n=n,
                                mode=mode, dtype=np.dtype(DTYPE).name,
                                bytes_read=int(b1.nbytes + b2.nbytes))
    with OthersCPU() as others:
        result = run_benchmark(benchmark, make_box_call(name, backend, b1, b2, grad=grad))
    value = _value(result, grad)
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    assert math.isclose(value, expected(name, n), rel_tol=1e-4), (value, expected(name, n))
