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
from fastloss._bench import OthersCPU
from fastloss.losses import boxes as B
from fastloss.testing import torchvision_box_loss

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
    """(boxes1, boxes2) float32 (n, 4): predictions scattered around their targets
    (overlapping, nested and disjoint pairs), made once per session."""
    rng = np.random.default_rng(0)
    c = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(10, 300, (n, 2))
    target = np.concatenate([c, c + wh], -1)
    c1 = c + rng.normal(0, 40, (n, 2))
    pred = np.concatenate([c1, c1 + wh * rng.uniform(0.5, 1.5, (n, 2))], -1)
    return pred.astype(DTYPE), target.astype(DTYPE)


@functools.lru_cache(maxsize=None)
def expected(name: str, n: int) -> float:
    b1, b2 = inputs(n)
    return float(getattr(reference, name)(b1, b2))


def make_call(name, backend, b1, b2, grad):
    if backend == "torch":
        import torch

        t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
        if not grad:
            return lambda: torchvision_box_loss(name, t1, t2).mean()
        t1 = t1.detach().clone().requires_grad_(True)

        def value_and_grad():
            loss = torchvision_box_loss(name, t1, t2).mean()
            (g,) = torch.autograd.grad(loss, t1)
            return loss, g

        return value_and_grad
    return functools.partial(getattr(B, name), b1, b2, return_grad=grad, backend=backend)


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
        result = run_benchmark(benchmark, make_call(name, backend, b1, b2, grad))
    value = _value(result, grad)
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    assert math.isclose(value, expected(name, n), rel_tol=1e-4), (value, expected(name, n))
