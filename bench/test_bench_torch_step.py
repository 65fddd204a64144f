"""pytest-benchmark suite of a training step's loss work across sizes, eager and
compiled: ``loss = fn(x, y); loss.backward()`` through ``fastloss.torch`` and
through the PyTorch code it replaces, each run eagerly and under
``torch.compile(fullgraph=True)`` (inductor; ``aot_eager`` in the smoke run, which
only checks that everything runs), float32 CPU tensors, all in the same run.

The sizes go from the small ones of a training step (64 × 10 logits, 256
regression targets, N = 256 embeddings) to the large cases of the adapter
benchmark.  Each value is checked against the torch eager one (rtol 1e-4).
Results: ``bench/results/torch-step-*.md``.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastloss._bench import OthersCPU  # noqa: E402

from test_bench_elementwise import run_benchmark  # noqa: E402
from test_bench_torch_adapter import _step  # noqa: E402  (loss = fn(leaf, y); backward)

TF = torch.nn.functional


def _simclr(z1, z2, temperature=0.5):
    """NT-Xent as SimCLR code writes it: the (2N)² similarity, the diagonal masked."""
    z = TF.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return TF.cross_entropy(sim, target)


def _fl():
    import fastloss.torch.functional as F
    return F


# label: (sizes (the first is the smoke size), make inputs(size, rng), fastloss.torch call,
#         the PyTorch call it replaces)
CASES = {
    "cross_entropy": (
        [(64, 10), (1024, 1000), (512, 32768)],
        lambda s, r: (r.standard_normal(s), r.integers(0, s[1], s[0])),
        lambda x, y: _fl().cross_entropy(x, y), TF.cross_entropy),
    "mse_loss": (
        [(256, 1), (1000,), (10_000_000,)],
        lambda s, r: (r.standard_normal(s), r.standard_normal(s)),
        lambda x, y: _fl().mse_loss(x, y), TF.mse_loss),
    "binary_cross_entropy_with_logits": (
        [(256, 80), (4096, 1000)],
        lambda s, r: (r.standard_normal(s), (r.random(s) < 0.3).astype(np.float32)),
        lambda x, y: _fl().binary_cross_entropy_with_logits(x, y),
        TF.binary_cross_entropy_with_logits),
    "huber_loss": (
        [(4096, 16), (10_000_000,)],
        lambda s, r: (r.standard_normal(s), r.standard_normal(s)),
        lambda x, y: _fl().huber_loss(x, y), TF.huber_loss),
    "triplet_margin_loss": (
        [(512, 128), (8192, 128)],
        lambda s, r: (r.standard_normal(s), r.standard_normal((3,) + s)),
        lambda x, y: _fl().triplet_margin_loss(x, y[0], y[1]),
        lambda x, y: TF.triplet_margin_loss(x, y[0], y[1])),
    "nt_xent_loss": (
        [(256, 128), (4096, 128)],
        lambda s, r: (r.standard_normal(s), r.standard_normal(s)),
        lambda x, y: _fl().nt_xent_loss(x, y, temperature=0.5), _simclr),
}

IMPLS = ("fastloss.torch", "torch", "fastloss.torch compiled", "torch compiled")


def _params(smoke):
    for label, (sizes, *_) in CASES.items():
        for size in sizes[:1] if smoke else sizes:
            for impl in IMPLS:
                yield pytest.param(label, size, impl,
                                   id=f"{label}-{'x'.join(map(str, size))}-{impl}")


SMOKE = os.environ.get("FASTLOSS_BENCH_SMOKE") == "1"


def _inputs(label, size):
    rng = np.random.default_rng(0)
    x, y = CASES[label][1](size, rng)
    x = torch.from_numpy(np.asarray(x, np.float32))
    y = torch.from_numpy(np.asarray(y) if np.asarray(y).dtype.kind == "i"
                         else np.asarray(y, np.float32))
    return x, y


@pytest.mark.parametrize("label,size,impl", list(_params(SMOKE)))
def test_training_step(benchmark, label, size, impl):
    x, y = _inputs(label, size)
    ours, theirs = CASES[label][2], CASES[label][3]
    fn = ours if impl.startswith("fastloss") else theirs
    if impl.endswith("compiled"):
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True, backend="aot_eager" if SMOKE else "inductor")
    benchmark.group = f"{label}-{'x'.join(map(str, size))}-training-step"
    benchmark.extra_info.update(family="torch-step", case=label, impl=impl,
                                shape=list(size), mode="forward+backward")
    with OthersCPU() as others:
        value = run_benchmark(benchmark, _step(fn, x, y))
    reference = _step(theirs, x, y)()
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    assert math.isclose(value, reference, rel_tol=1e-4, abs_tol=1e-6), (value, reference)
