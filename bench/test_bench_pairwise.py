"""pytest-benchmark suite of the pairwise (representation-learning) losses:
every case of ``fastloss._bench.PAIRWISE_CASES`` x backend x mode (forward,
value+grad: the value and the gradients of every embedding input), float32,
D = 128.  Full sizes:

- ``nt_xent_loss``: N = 8192 per view (2N = 16384 views), temperature 0.5;
- ``info_nce_loss[unpaired]``: N = 4096 queries, M = 65536 shared negatives,
  temperature 0.1;
- ``contrastive_loss`` (euclidean, normalized rows, margins 0 / 1,
  reduction mean_nonzero) and ``batch_hard_triplet_loss`` (margin 1,
  euclidean on normalized rows, mean): N = 8192, 1024 classes of 8 in a
  random order;
- ``triplet_margin_loss``: N = 65536 triplets.

The smoke run (``FASTLOSS_BENCH_SMOKE=1`` or ``--benchmark-disable``) uses
N = 64, M = 256 and skips the peak-memory subprocesses.
``FASTLOSS_BENCH_PAIRWISE_SCALE=0.25`` scales every full-size N and M (rounded
to a multiple of 8).

Backends: ``c``, ``numba`` (skipped while ``fastloss.kernels.numba_cpu``
lacks the case's kernels, e.g. ``pair_lse``), ``torch`` (PyTorch CPU: the
usual implementation, ``fastloss._bench._torch_*``: NT-Xent by the masked
(2N, 2N) similarity matrix and cross-entropy; InfoNCE by info-nce-pytorch's
``info_nce``; contrastive and batch-hard all-pairs by ``torch.cdist`` and
label masks; ``F.triplet_margin_loss``) and ``pml`` (pytorch-metric-learning:
NTXentLoss, ContrastiveLoss, BatchHardMiner + TripletMarginLoss), skipped
where ``fastloss._bench.pml_estimate_bytes`` exceeds 12 GB (NTXentLoss at
full size: its (positive pairs x negative pairs) ``n_per_p`` matrix).
torch / pml value+grad = forward + ``torch.autograd.grad`` on leaf tensors
made outside the timed region.  A call slower than 0.2 s is timed in 3 to 5
single-call rounds after one untimed call (``run_pairwise_benchmark``);
faster ones as in the elementwise suite.

Every result is checked against the torch baseline of the same inputs
(computed once per case): the value at rtol 1e-3, and for value+grad each
gradient at a relative (Frobenius) error of 1e-2, so a wrong fast result
cannot pass.

``extra_info``: family="pairwise", case, loss, backend, mode, size (in
words), n, m, d, dtype, fastloss_version, isa, threads, torch_threads,
omp_wait_policy, bytes_read (every input), embedding_bytes (the float
inputs: the gradients' size), the value, others_cpu and, for value+grad outside the
smoke run, peak_extra_bytes: one call in a fresh process
(``fastloss._bench.peak_extra_bytes``), the resident-memory high-water mark
above the level before the call (inputs already built), minus the gradients
returned.  A skipped pml records why in the torch entry (``pml_skipped``).
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest

import fastloss
from fastloss._bench import (PAIRWISE_CASES, PML_LIMIT_BYTES, OthersCPU, make_pairwise_call,
                             make_pairwise_inputs, numba_pairwise_missing, pairwise_peak_code,
                             pairwise_size, peak_extra_bytes, pml_estimate_bytes, wall_timer)

from test_bench_elementwise import run_benchmark, _torch_threads

DTYPE = np.float32
D = 128
FULL = {"nt_xent_loss": (8192, None), "info_nce_loss[unpaired]": (4096, 65536),
        "contrastive_loss": (8192, None), "batch_hard_triplet_loss": (8192, None),
        "triplet_margin_loss": (65536, None)}
SMOKE_N, SMOKE_M = 64, 256
VALUE_RTOL, GRAD_RTOL = 1e-3, 1e-2
BACKENDS = ("c", "numba", "torch", "pml")


SLOW_S = 0.2           # calls slower than this: no extra warm-up, 3 to 5 single-call rounds
SLOW_BUDGET_S = 30.0   # ... fitted to take about this long


def run_pairwise_benchmark(benchmark, fn):
    """``run_benchmark`` of the elementwise suite for fast calls; a call slower
    than SLOW_S (the full sizes take seconds) is timed in 3 to 5 rounds of one
    call after the one untimed call (which compiles, if it must), so a 10 s
    PyTorch call costs 40 s, not 80.  Disabled: one plain call."""
    if benchmark.disabled:
        return benchmark(fn)
    once = wall_timer(fn, 1)                           # compile / first touch, untimed
    if once < SLOW_S:
        return run_benchmark(benchmark, fn)
    rounds = max(3, min(5, int(SLOW_BUDGET_S / once)))
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)


def sizes(label: str, smoke: bool) -> tuple[int, int | None]:
    n, m = FULL[label]
    if smoke:
        return SMOKE_N, (SMOKE_M if m else None)
    scale = float(os.environ.get("FASTLOSS_BENCH_PAIRWISE_SCALE", "1"))
    if scale != 1:
        n, m = (max(16, round(v * scale / 8) * 8) if v else v for v in (n, m))
    return n, m


@functools.lru_cache(maxsize=None)
def inputs(label: str, smoke: bool):
    return make_pairwise_inputs(label, *sizes(label, smoke), D, DTYPE, seed=0)


def _host(t):
    if hasattr(t, "detach"):
        t = t.detach().numpy()
    return np.asarray(t, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def expected(label: str, smoke: bool):
    """(value, gradients) of the torch baseline on the case's inputs, float64."""
    value, grads = make_pairwise_call(label, "torch", inputs(label, smoke), grad=True)()
    return float(value.detach()), tuple(_host(g) for g in grads)


def _params():
    for label, case in PAIRWISE_CASES.items():
        for backend in BACKENDS:
            if backend == "pml" and not case.pml:
                continue
            for grad in (False, True):
                yield pytest.param(label, backend, grad,
                                   id=f"{label}-{backend}-{'grad' if grad else 'forward'}")


def _pml_skip(label: str, smoke: bool) -> str | None:
    need = pml_estimate_bytes(label, sizes(label, smoke)[0])
    if need is not None and need > PML_LIMIT_BYTES:
        return (f"pml skipped at this size: it would need at least {need / 1e9:,.0f} GB "
                f"(fastloss._bench.pml_estimate_bytes; limit {PML_LIMIT_BYTES / 1e9:g} GB)")
    return None


@pytest.mark.parametrize("label, backend, grad", list(_params()))
def test_pairwise(benchmark, smoke, label, backend, grad):
    case = PAIRWISE_CASES[label]
    if backend in ("torch", "pml"):
        pytest.importorskip("torch")
        if backend == "pml":
            pytest.importorskip("pytorch_metric_learning")
            reason = _pml_skip(label, smoke)
            if reason:
                pytest.skip(reason)
    elif not fastloss.backends()[backend].available:
        pytest.skip(f"backend {backend} unavailable: {fastloss.backends()[backend].reason}")
    elif backend == "numba" and numba_pairwise_missing(case):
        pytest.skip(f"fastloss.kernels.numba_cpu lacks {', '.join(numba_pairwise_missing(case))}"
                    f" (numba's pairwise kernels are not all written yet)")
    if label.startswith("info_nce"):
        pytest.importorskip("info_nce")       # the torch baseline is its formula
    n, m = sizes(label, smoke)
    arrays = inputs(label, smoke)
    ref_value, ref_grads = expected(label, smoke)
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"pairwise-{label}-{mode}"
    benchmark.extra_info.update(family="pairwise", case=label, loss=case.name, backend=backend,
                                mode=mode, size=pairwise_size(case, n, m, D), n=n, m=m, d=D,
                                dtype=np.dtype(DTYPE).name,
                                bytes_read=int(sum(a.nbytes for a in arrays)),
                                embedding_bytes=int(sum(a.nbytes for a in
                                                        arrays[:len(case.embeddings)])),
                                fastloss_version=fastloss.__version__, isa=fastloss.isa(),
                                threads=fastloss.get_num_threads(),
                                torch_threads=_torch_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    if backend == "torch" and case.pml:
        reason = _pml_skip(label, smoke)
        if reason:
            benchmark.extra_info["pml_skipped"] = reason
    call = make_pairwise_call(case, backend, arrays, grad=grad)
    with OthersCPU() as others:
        result = run_pairwise_benchmark(benchmark, call)
    value = _host(result[0] if grad else result).item()
    grads = tuple(_host(g) for g in result[1]) if grad else ()
    del result
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    assert math.isclose(value, ref_value, rel_tol=VALUE_RTOL), (value, ref_value)
    for k, (g, want) in enumerate(zip(grads, ref_grads)):
        assert g.shape == want.shape, (k, g.shape, want.shape)
        err = np.linalg.norm(g - want) / max(np.linalg.norm(want), 1e-30)
        assert err < GRAD_RTOL, f"gradient of {case.embeddings[k]}: relative error {err:.2e}"
    del grads
    if grad and not smoke:
        benchmark.extra_info["peak_extra_bytes"] = peak_extra_bytes(
            pairwise_peak_code(label, backend, n, m, D, np.dtype(DTYPE).name, seed=0))
