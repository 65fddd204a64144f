"""pytest-benchmark suite of the PyTorch adapter: one training step's loss work,
``loss = fn(x, y); loss.backward()``, through ``fastloss.torch`` against the
module PyTorch users call today (torch.nn.functional, MONAI, a torch-written
SimCLR NT-Xent), float32 CPU tensors, in the same run.

What it measures beyond the core benchmarks: the adapter's cost (tensor views,
the autograd node, the backward's scaling of the kept gradient).  Each value is
checked against the torch one (rtol 1e-4) so that a wrong formula can't pass as
a fast one.  The smoke run uses small shapes.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastloss._bench import OthersCPU  # noqa: E402
from fastloss.testing import make_inputs, make_multiclass_inputs  # noqa: E402

from test_bench_elementwise import run_benchmark  # noqa: E402


def _simclr_torch(z1, z2, temperature=0.5):
    """NT-Xent as SimCLR code writes it: the (2N)² similarity, the diagonal masked."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return torch.nn.functional.cross_entropy(sim, target)


def _monai_dice(x, y):
    import monai.losses as ml
    return ml.DiceLoss(softmax=True, to_onehot_y=True)(x, y)


# label: (full shape, smoke shape, how to make inputs, fastloss.torch call, torch call)
CASES = {
    "mse_loss": ((10_000_000,), (10_000,), "regression",
                 lambda F, x, y: F.mse_loss(x, y), torch.nn.functional.mse_loss),
    "cross_entropy[llm]": ((2048, 32768), (64, 2048), "classes",
                           lambda F, x, y: F.cross_entropy(x, y),
                           torch.nn.functional.cross_entropy),
    "dice_loss[3d]": ((2, 4, 64, 64, 64), (2, 4, 8, 8, 8), "segmentation",
                      lambda ft, x, y: ft.DiceLoss(softmax=True, to_onehot_y=True)(x, y),
                      _monai_dice),
    "nt_xent_loss": ((4096, 128), (64, 16), "views",
                     lambda F, x, y: F.nt_xent_loss(x, y), _simclr_torch),
}


@functools.lru_cache(maxsize=2)
def inputs(label: str, smoke: bool):
    full, small, kind, *_ = CASES[label]
    shape = small if smoke else full
    if kind == "regression":
        x, y = make_inputs("mse_loss", shape)
        return torch.from_numpy(x), torch.from_numpy(y)
    if kind == "classes":
        x, y = make_multiclass_inputs("cross_entropy[llm]", shape)
        return torch.from_numpy(x), torch.from_numpy(y)
    if kind == "segmentation":
        x, y = make_multiclass_inputs("cross_entropy[seg]", shape)
        return torch.from_numpy(x), torch.from_numpy(y[:, None].astype(np.int64))
    rng = np.random.default_rng(0)
    return (torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)),
            torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)))


def _step(loss_fn, x, y):
    def step():
        leaf = x.detach().requires_grad_()
        loss = loss_fn(leaf, y)
        loss.backward()
        return float(loss.detach())
    return step


@pytest.mark.parametrize("backend", ["fastloss.torch", "torch"])
@pytest.mark.parametrize("label", list(CASES))
def test_training_step(benchmark, smoke, label, backend):
    x, y = inputs(label, smoke)
    *_, ours, theirs = CASES[label]
    if label == "dice_loss[3d]":
        pytest.importorskip("monai")
    import fastloss.torch as ft
    namespace = ft if label == "dice_loss[3d]" else ft.functional
    fn = functools.partial(ours, namespace) if backend == "fastloss.torch" else theirs
    benchmark.group = f"{label}-training-step"
    benchmark.extra_info.update(family="torch-adapter", case=label, backend=backend,
                                mode="forward+backward", shape=list(x.shape))
    with OthersCPU() as others:
        value = run_benchmark(benchmark, _step(fn, x, y))
    reference = _step(theirs, x, y)()
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    assert math.isclose(value, reference, rel_tol=1e-4, abs_tol=1e-6), (value, reference)
