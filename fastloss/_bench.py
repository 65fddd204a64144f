"""Timing helpers and the ``python -m fastloss info | bench | check`` commands.

One place for each measuring idea, shared by the command line, the
pytest-benchmark suite (``bench/``) and the GPU script (``bench/gpu_bench.py``):

- :func:`median_time`: median seconds per call of a callable;
- :func:`make_call`: a no-argument callable computing one loss on one backend
  (PyTorch included), forward or value + gradient;
- :func:`read_bandwidth`: the machine's plain-read bandwidth, the ceiling of the
  memory-bound losses.

numba and torch are imported lazily, inside functions, so that importing this
module (and ``import fastloss``) stays cheap.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

import fastloss
from fastloss.testing import (BOX_LOSS_NAMES, CASES, MULTICLASS_CASES, OVERLAP_CASES, Case,
                              MulticlassCase, make_boxes, make_inputs, make_multiclass_inputs,
                              torchvision_box_loss)

__all__ = ["median_time", "wall_timer", "quiet_openmp", "make_call", "bytes_read", "read_bandwidth",
           "cpu_backends", "torch_available", "gpu_name", "to_host", "OthersCPU", "main",
           "make_multiclass_call", "make_box_call", "peak_extra_memory", "peak_extra_bytes",
           "PAIRWISE_CASES", "make_pairwise_inputs", "make_pairwise_call"]

CPU_COMPILED = ("c", "numba")        # the compiled CPU backends, in order of preference
BASELINES = ("numpy", "torch")       # what they are compared with
MODES = {False: "forward", True: "value+grad"}


# --------------------------------------------------------------------------- timing

#: the OpenMP wait policy of the environment before :func:`quiet_openmp` (None: unset)
_USER_POLICY: list[str | None] = []


def quiet_openmp() -> str | None:
    """Make OpenMP threads sleep, not spin, while they wait (unless the caller chose,
    or ``FASTLOSS_BENCH_OMP=default`` asks to leave the policy as it is).

    With GNU OpenMP's default policy, waiting threads spin; when other processes
    hold the cores, a parallel region then waits for descheduled threads, and a
    PyTorch or numba call of 0.1 ms takes 16 ms (measured on this project's
    2-core machine with one core busy elsewhere): that times the scheduler, not
    the code.  Must run before numba or torch loads libgomp.  Returns the policy.

    But PASSIVE also makes every parallel region wake sleeping threads: torch's
    small calls then cost 3-4x more (cross_entropy 64 x 10: 24 instead of 6.5 us
    here), so the small-call comparison runs under the user's policy instead.
    """
    if not _USER_POLICY:
        _USER_POLICY.append(os.environ.get("OMP_WAIT_POLICY"))
    if os.environ.get("FASTLOSS_BENCH_OMP") == "default":
        return os.environ.get("OMP_WAIT_POLICY")
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def wall_timer(fn: Callable[[], object], number: int) -> float:
    """Seconds for ``number`` back-to-back calls of ``fn``, by the wall clock."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1,
                min_time: float = 2e-3,
                timer: Callable[[Callable[[], object], int], float] = wall_timer) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` rounds, after ``warmup`` calls.

    Each round runs ``fn`` often enough to last about ``min_time`` seconds, so
    that microsecond calls are not lost in the clock's resolution.  ``timer``
    measures one round (``wall_timer``, or CUDA events in ``bench/gpu_bench.py``).
    """
    for _ in range(warmup):
        fn()
    number = 1
    if min_time > 0:
        once = timer(fn, 1)
        number = max(1, min(100_000, math.ceil(min_time / max(once, 1e-9))))
    return statistics.median(timer(fn, number) / number for _ in range(repeats))


# --------------------------------------------------------------------------- calls

def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_backends() -> list[str]:
    """The compiled CPU backends that can run here."""
    info = fastloss.backends()
    return [name for name in CPU_COMPILED if name in info and info[name].available]


def bytes_read(x, y) -> int:
    """Bytes of input a loss must read: input + target."""
    return int(x.nbytes + y.nbytes)


def make_call(case: Case | str, backend: str, x, y, *, grad: bool = False,
              reduction: str = "mean") -> Callable[[], object]:
    """A no-argument callable computing ``case``'s loss of (x, y) on ``backend``.

    ``backend`` is a fastloss backend name (None: its automatic choice) or
    ``"torch"``.  With ``grad`` it
    returns the value and the gradient with respect to ``x``: fastloss in its
    fused pass (``return_grad=True``), PyTorch by forward + autograd backward
    on a leaf tensor made here, outside whatever is timed.
    ``torch.autograd.grad`` returns a fresh gradient each call, so nothing
    accumulates in ``.grad`` between rounds.
    """
    if isinstance(case, str):
        case = CASES[case]
    params = dict(case.params)
    if backend == "torch":
        torch_fn = case.torch_fn
        assert torch_fn is not None, f"{case.name}: no torch implementation"
        import torch

        xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))
        if not grad:
            return lambda: torch_fn(xt, yt, None, reduction, **params)
        xt = xt.detach().clone().requires_grad_(True)

        def value_and_grad():
            loss = torch_fn(xt, yt, None, reduction, **params)
            (g,) = torch.autograd.grad(loss, xt)
            return loss, g

        return value_and_grad
    fn = getattr(fastloss, case.name)
    return functools.partial(fn, x, y, reduction=reduction, return_grad=grad,
                             backend=backend, **params)


def make_multiclass_call(case: MulticlassCase | str, backend: str, x, y, *,
                         grad: bool = False) -> Callable[[], object]:
    """Like :func:`make_call`, for a case of ``MULTICLASS_CASES`` or
    ``OVERLAP_CASES`` (mean reduction)."""
    if isinstance(case, str):
        case = MULTICLASS_CASES[case]
    params = dict(case.params)
    if backend == "torch":
        torch_fn = case.torch_fn
        assert torch_fn is not None, f"{case.name}: no torch implementation"
        import torch

        xt = torch.from_numpy(np.asarray(x))
        yt = torch.from_numpy(np.asarray(y).astype(np.int64))   # torch wants int64 labels
        if not grad:
            return lambda: torch_fn(xt, yt, **params)
        xt = xt.detach().clone().requires_grad_(True)

        def value_and_grad():
            loss = torch_fn(xt, yt, **params)
            (g,) = torch.autograd.grad(loss, xt)
            return loss, g

        return value_and_grad
    fn = getattr(fastloss, case.name)
    return functools.partial(fn, x, y, return_grad=grad, backend=backend, **params)


def make_box_call(name: str, backend: str, b1, b2, *, grad: bool = False) -> Callable[[], object]:
    """Like :func:`make_call`, for a box loss (mean reduction); ``torch`` runs
    torchvision's formulas (``fastloss.testing.torchvision_box_loss``)."""
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
    return functools.partial(getattr(fastloss, name), b1, b2, return_grad=grad, backend=backend)


# --------------------------------------------------------------------------- pairwise

@dataclass(frozen=True)
class PairwiseCase:
    """A pairwise (representation-learning) benchmark case: the fastloss
    function, its keyword arguments, the names of its inputs in call order
    (``embeddings``: the float arrays a gradient is taken of; ``labels``:
    an int64 (N,) class array last, or none) and the numba_cpu kernels it
    needs (a numba backend without them is skipped)."""

    label: str
    name: str
    params: dict
    embeddings: tuple[str, ...]
    labels: bool = False
    kernels: tuple[str, ...] = ()
    pml: bool = False                   # pytorch-metric-learning has this loss


PAIRWISE_CASES: dict[str, PairwiseCase] = {c.label: c for c in [
    PairwiseCase("nt_xent_loss", "nt_xent_loss", {"temperature": 0.5}, ("z1", "z2"),
                 kernels=("pair_lse", "pair_softmax_product"), pml=True),
    PairwiseCase("info_nce_loss[unpaired]", "info_nce_loss",
                 {"temperature": 0.1, "negative_mode": "unpaired"},
                 ("query", "positive_key", "negative_keys"),
                 kernels=("pair_lse", "pair_softmax_product")),
    PairwiseCase("contrastive_loss", "contrastive_loss",
                 {"pos_margin": 0.0, "neg_margin": 1.0, "distance": "euclidean",
                  "normalize_embeddings": True, "reduction": "mean_nonzero"},
                 ("embeddings",), labels=True,
                 kernels=("pair_contrastive_stats", "pair_contrastive_grad"), pml=True),
    PairwiseCase("batch_hard_triplet_loss", "batch_hard_triplet_loss",
                 {"margin": 1.0, "distance": "euclidean", "normalize_embeddings": True,
                  "reduction": "mean"},
                 ("embeddings",), labels=True, kernels=("pair_hardest",), pml=True),
    PairwiseCase("triplet_margin_loss", "triplet_margin_loss", {"margin": 1.0},
                 ("anchor", "positive", "negative"), kernels=("triplet_rows",)),
]}
PAIRWISE_CLASS_SIZE = 8            # labelled cases: N / 8 classes of 8 embeddings each
PML_LIMIT_BYTES = 12e9             # pml is skipped where its estimate exceeds this


def pairwise_size(case: PairwiseCase | str, n: int, m: int | None = None, d: int = 128) -> str:
    """The size of a case in words: 'N=8192 x 2 views, D=128'."""
    if isinstance(case, str):
        case = PAIRWISE_CASES[case]
    if case.name == "nt_xent_loss":
        return f"N={n} x 2 views, D={d}"
    if case.name == "info_nce_loss":
        return f"N={n}, M={m or n} negatives, D={d}"
    if case.labels:
        return f"N={n}, {max(1, n // PAIRWISE_CLASS_SIZE)} classes, D={d}"
    return f"N={n} triplets, D={d}"


def make_pairwise_inputs(case: PairwiseCase | str, n: int, m: int | None = None, d: int = 128,
                         dtype=np.float32, seed: int = 0) -> tuple:
    """The inputs of a case in call order: n rows of width d (nt_xent: n per
    view; info_nce: n queries and m negatives, default n).  Positives are noisy
    copies of their anchor; the labelled cases get n / 8 classes of 8 in a
    random order, around class centres in a random 8-dimensional subspace (so
    that their distances vary and some negative pairs fall inside the margin);
    triplet negatives are a little farther than the positives (about half of
    the triplets active)."""
    if isinstance(case, str):
        case = PAIRWISE_CASES[case]
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    if case.name == "nt_xent_loss":
        z1 = normal(n, d)
        out: tuple[np.ndarray, ...] = (z1, z1 + 0.5 * normal(n, d))
    elif case.name == "info_nce_loss":
        q = normal(n, d)
        out = (q, q + 0.5 * normal(n, d), normal(m or n, d))
    elif case.labels:
        classes = max(1, n // PAIRWISE_CLASS_SIZE)
        labels = rng.permutation(np.arange(n, dtype=np.int64) % classes)
        centres = normal(classes, 8) @ normal(8, d) / np.float32(math.sqrt(8))
        out = (centres[labels] + 0.6 * normal(n, d), labels)
    else:
        a = normal(n, d)
        out = (a, a + normal(n, d), a + 1.1 * normal(n, d))
    return tuple(x if x.dtype.kind in "iu" else np.ascontiguousarray(x, dtype)
                 for x in out)


def numba_pairwise_missing(case: PairwiseCase | str) -> list[str]:
    """The numba_cpu kernels the case needs that the module lacks (numba's
    pairwise kernels may be work in progress); [] when it has them all."""
    if isinstance(case, str):
        case = PAIRWISE_CASES[case]
    from fastloss.kernels import numba_cpu
    return [k for k in case.kernels if not hasattr(numba_cpu, k)]


def pml_estimate_bytes(case: PairwiseCase | str, n: int) -> float | None:
    """A rough lower bound of pytorch-metric-learning's memory for the case
    (None: pml has no such loss).  NTXentLoss builds ``n_per_p``, a
    (positive pairs) x (negative pairs) float matrix, 2N x 2N(2N - 2), with a
    bool mask and a product of the same shape: 9 bytes per element.
    ContrastiveLoss and BatchHardMiner index all N(N - 1) ordered pairs
    (int64 pairs, float distances): about 40 bytes per pair."""
    if isinstance(case, str):
        case = PAIRWISE_CASES[case]
    if not case.pml:
        return None
    if case.name == "nt_xent_loss":
        return 9.0 * (2 * n) * (2 * n) * (2 * n - 2)
    return 40.0 * n * (n - 1)


def _torch_nt_xent(z1, z2, *, temperature):
    """SimCLR's NT-Xent as usually written: the (2N, 2N) similarity matrix,
    its diagonal masked with -inf, cross-entropy with targets i + N mod 2N."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = (torch.arange(2 * n) + n) % (2 * n)
    return F.cross_entropy(sim, targets)


def _torch_info_nce(query, positive_key, negative_keys, *, temperature, negative_mode):
    """info-nce-pytorch's ``info_nce`` (the package when it imports, else the
    same formula: normalize, positive logits, query @ negatives.T, cat,
    cross-entropy with target 0)."""
    try:
        from info_nce import info_nce
    except ImportError:
        import torch
        import torch.nn.functional as F

        q, k, neg = (F.normalize(t, dim=-1) for t in (query, positive_key, negative_keys))
        logits = torch.cat([torch.sum(q * k, dim=1, keepdim=True), q @ neg.T], dim=1)
        return F.cross_entropy(logits / temperature,
                               torch.zeros(len(logits), dtype=torch.long))
    return info_nce(query, positive_key, negative_keys, temperature=temperature,
                    negative_mode=negative_mode)


def _torch_label_masks(labels):
    import torch

    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    return pos, ~same


def _torch_distances(x, normalize):
    import torch
    import torch.nn.functional as F

    z = F.normalize(x, dim=1) if normalize else x
    return torch.cdist(z, z)


def _torch_contrastive(x, labels, *, pos_margin, neg_margin, distance, normalize_embeddings,
                       reduction):
    """pml's ContrastiveLoss written all-pairs: the (N, N) cdist of the
    normalized rows, label masks, the mean of the nonzero positive-pair losses
    plus the mean of the nonzero negative-pair losses."""
    import torch
    import torch.nn.functional as F

    assert distance == "euclidean" and reduction == "mean_nonzero"
    d = _torch_distances(x, normalize_embeddings)
    pos, neg = _torch_label_masks(labels)
    zero = d.new_zeros(())
    lp = torch.where(pos, F.relu(d - pos_margin), zero)
    ln = torch.where(neg, F.relu(neg_margin - d), zero)
    return lp.sum() / (lp > 0).sum().clamp(min=1) + ln.sum() / (ln > 0).sum().clamp(min=1)


def _torch_batch_hard(x, labels, *, margin, distance, normalize_embeddings, reduction):
    """Batch-hard triplet written all-pairs: the (N, N) cdist, masked max over
    the positives and min over the negatives per row, relu, mean over the
    anchors having both."""
    import torch.nn.functional as F

    assert distance == "euclidean" and reduction == "mean"
    d = _torch_distances(x, normalize_embeddings)
    pos, neg = _torch_label_masks(labels)
    d_ap = d.masked_fill(~pos, float("-inf")).max(dim=1).values
    d_an = d.masked_fill(~neg, float("inf")).min(dim=1).values
    valid = pos.any(dim=1) & neg.any(dim=1)
    return F.relu(margin + d_ap - d_an)[valid].mean()


def _torch_triplet(a, p, n, *, margin):
    import torch.nn.functional as F

    return F.triplet_margin_loss(a, p, n, margin=margin)


_TORCH_PAIRWISE: dict[str, Callable[..., Any]] = {"nt_xent_loss": _torch_nt_xent, "info_nce_loss": _torch_info_nce,
                   "contrastive_loss": _torch_contrastive,
                   "batch_hard_triplet_loss": _torch_batch_hard,
                   "triplet_margin_loss": _torch_triplet}


def _pml_pairwise(case: PairwiseCase):
    """pytorch-metric-learning's loss for the case, as a function of the
    case's tensors: NTXentLoss on [z1; z2] with labels [0..N-1, 0..N-1];
    ContrastiveLoss (its default LpDistance normalizes, AvgNonZeroReducer);
    BatchHardMiner + TripletMarginLoss with a MeanReducer (the mean over the
    mined anchors, as fastloss's reduction="mean")."""
    import torch
    from pytorch_metric_learning import losses, miners, reducers

    p = case.params
    if case.name == "nt_xent_loss":
        loss_fn = losses.NTXentLoss(temperature=p["temperature"])

        def nt_xent(z1, z2):
            idx = torch.arange(z1.shape[0])
            return loss_fn(torch.cat([z1, z2]), torch.cat([idx, idx]))

        return nt_xent
    if case.name == "contrastive_loss":
        assert p["distance"] == "euclidean" and p["normalize_embeddings"]
        return losses.ContrastiveLoss(pos_margin=p["pos_margin"], neg_margin=p["neg_margin"])
    if case.name == "batch_hard_triplet_loss":
        assert p["distance"] == "euclidean" and p["normalize_embeddings"]
        miner = miners.BatchHardMiner()
        loss_fn = losses.TripletMarginLoss(margin=p["margin"], reducer=reducers.MeanReducer())
        return lambda x, labels: loss_fn(x, labels, miner(x, labels))
    raise ValueError(f"pytorch-metric-learning has no benchmark of {case.label}")


def make_pairwise_call(case: PairwiseCase | str, backend: str, arrays, *,
                       grad: bool = False) -> Callable[[], object]:
    """Like :func:`make_call`, for a case of ``PAIRWISE_CASES`` and its inputs
    (``make_pairwise_inputs``).  ``backend``: a fastloss backend, ``"torch"``
    (the usual PyTorch implementation: ``_torch_*`` above) or ``"pml"``
    (pytorch-metric-learning).  With ``grad`` the call returns the value and
    the gradients of every embedding input (a tuple, also for one input):
    fastloss's ``return_grad=True``; torch / pml forward plus
    ``torch.autograd.grad`` on leaf tensors made here, outside the call."""
    if isinstance(case, str):
        case = PAIRWISE_CASES[case]
    if backend in ("torch", "pml"):
        import torch

        tensors = [torch.from_numpy(np.asarray(a)) for a in arrays]
        fn = _pml_pairwise(case) if backend == "pml" else functools.partial(
            _TORCH_PAIRWISE[case.name], **case.params)
        if not grad:
            return lambda: fn(*tensors)
        k = len(case.embeddings)
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors[:k]]
        rest = tensors[k:]

        def value_and_grad():
            loss = fn(*leaves, *rest)
            return loss, torch.autograd.grad(loss, leaves)

        return value_and_grad
    fn = functools.partial(getattr(fastloss, case.name), *arrays, return_grad=grad,
                           backend=backend, **case.params)
    if not grad or len(case.embeddings) > 1:
        return fn

    def value_and_grads():              # one embedding input: its gradient as a 1-tuple
        value, g = fn()
        return value, (g,)

    return value_and_grads


def peak_extra_memory(fn: Callable[[], object], expected_bytes: int = 0):
    """(bytes, fn's result): how far the process's resident memory rose above
    its level before the call, minus ``expected_bytes`` (the outputs), read
    from the kernel's high-water mark (reset first through
    /proc/self/clear_refs).  Counts every allocator (NumPy, PyTorch, C);
    None where /proc does not offer it."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
    except OSError:
        return None, fn()
    result = fn()
    peak = _status_kb("VmHWM")
    return max(0, (peak - before) * 1024 - expected_bytes), result


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


_PEAK_CHILD = """
import json, sys
from fastloss._bench import peak_extra_memory
expected_bytes, warmup = 0, None
{code}
if warmup is not None:
    warmup()
extra, result = peak_extra_memory(call, expected_bytes=expected_bytes)
del result
print("\\nPEAK_EXTRA_BYTES " + json.dumps(extra))
"""


def peak_extra_bytes(code: str, *, timeout: float = 900.0) -> int | None:
    """Peak extra memory of ONE call, measured in a fresh Python process.

    ``code`` is Python source run there first; it must define ``call`` (the
    no-argument callable measured, its inputs already built) and may define
    ``expected_bytes`` (the outputs it returns, e.g. the gradients: not
    "extra", subtracted) and ``warmup`` (a callable run just before, such as
    the same call at a tiny size, so that one-time costs -- lazy imports,
    thread pools, numba's compilation -- are not counted).  Then
    :func:`peak_extra_memory` measures the call: the resident-memory
    high-water mark (VmHWM, reset through /proc/self/clear_refs just before)
    minus the resident size before the call (VmRSS: interpreter, libraries
    and the inputs), minus ``expected_bytes``.  A fresh process, because in a
    long-lived one memory freed earlier but kept by the allocator is reused
    without raising the resident size, which hides part of a call's
    allocations.  Every allocator counts (NumPy, PyTorch, C, numba).  The
    child gets this fastloss (its parent folder first on PYTHONPATH) and this
    environment (OMP_WAIT_POLICY, thread counts).  None where /proc does not
    offer the counters; a failing child raises RuntimeError with its output.
    """
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _PEAK_CHILD.format(code=code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_EXTRA_BYTES ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"peak_extra_bytes: the child failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    import json
    return json.loads(lines[-1].split(" ", 1)[1])


def pairwise_peak_code(label: str, backend: str, n: int, m: int | None = None, d: int = 128,
                       dtype: str = "float32", seed: int = 0) -> str:
    """The ``peak_extra_bytes`` code of one value+grad call of a pairwise case:
    a warm-up call of the same case and backend at a tiny size (N = 64,
    M = 256), then the inputs, then the call; ``expected_bytes`` = the
    gradients it returns (the size of the embedding inputs)."""
    return (f"from fastloss._bench import PAIRWISE_CASES, make_pairwise_inputs, "
            f"make_pairwise_call\n"
            f"case = PAIRWISE_CASES[{label!r}]\n"
            f"warmup = make_pairwise_call(case, {backend!r}, make_pairwise_inputs(case, 64, "
            f"256, {d}, {dtype!r}, 1), grad=True)\n"
            f"arrays = make_pairwise_inputs(case, {n}, {m!r}, {d}, {dtype!r}, {seed})\n"
            f"call = make_pairwise_call(case, {backend!r}, arrays, grad=True)\n"
            f"expected_bytes = sum(a.nbytes for a in arrays[:len(case.embeddings)])\n")


class OthersCPU:
    """Share of the machine's CPUs that *other* processes used while the block ran
    (Linux ``/proc/stat`` busy time minus this process's own), so that a report
    can flag timings taken on a busy machine; ``share`` is None elsewhere."""

    share: float | None = None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)      # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self._start = (self._busy(), sum(os.times()[:2]), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy0, own0, wall0 = self._start
        busy1, own1, wall1 = self._busy(), sum(os.times()[:2]), time.perf_counter()
        if busy0 is not None and busy1 is not None and wall1 > wall0:
            others = (busy1 - busy0) - (own1 - own0)
            self.share = max(0.0, others / ((wall1 - wall0) * (os.cpu_count() or 1)))
        return False


# --------------------------------------------------------------------------- bandwidth

def read_bandwidth(n: int = 100_000_000, *, threads: int | None = None, repeats: int = 5,
                   array: np.ndarray | None = None) -> float:
    """The machine's plain-read bandwidth in GB/s (10^9 bytes per second).

    Best of ``repeats`` passes of ``np.max`` over an ``n``-element float32 array
    split across ``threads`` Python threads (default: fastloss's thread count).
    NumPy releases the GIL in reductions and its float32 max is SIMD and
    branch-free, so this is a read loop bounded by memory, not arithmetic
    (``np.sum`` is not: its pairwise float32 sum runs at half the speed here).
    The array is written first so that its pages are mapped before timing.
    """
    a = np.ones(n, dtype=np.float32) if array is None else array
    threads = threads or fastloss_threads()
    parts = np.array_split(a, threads)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.max, parts))                    # warm the threads and caches
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.max, parts))
            best = min(best, time.perf_counter() - start)
    return a.nbytes / best / 1e9


def fastloss_threads() -> int:
    try:
        return int(fastloss.get_num_threads())
    except Exception:                                    # noqa: BLE001 - best effort
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- info

def gpu_name(cuda) -> str:
    """The current CUDA device's name (the simulator's device has none)."""
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator device")
    return name.decode() if isinstance(name, bytes) else str(name)


def _gpu_line() -> str:
    """What numba.cuda sees (numba imported here, lazily)."""
    try:
        from numba import cuda
    except Exception as exc:                             # noqa: BLE001
        return f"none (numba.cuda does not import: {exc})"
    try:
        if not cuda.is_available():
            return "none (numba.cuda.is_available() is False)"
        dev = cuda.get_current_device()
        sim = " [simulator: NUMBA_ENABLE_CUDASIM=1]" if os.environ.get(
            "NUMBA_ENABLE_CUDASIM") == "1" else ""
        cc = getattr(dev, "compute_capability", None)
        return gpu_name(cuda) + (f", compute capability {cc[0]}.{cc[1]}" if cc else "") + sim
    except Exception as exc:                             # noqa: BLE001
        return f"none ({type(exc).__name__}: {exc})"


def cmd_info(args) -> int:
    print(f"fastloss {fastloss.__version__}  (python {platform.python_version()}, "
          f"numpy {np.__version__}, {platform.machine()})")
    print("backends:")
    for name, b in fastloss.backends().items():
        status = "available" if b.available else "unavailable"
        reason = "" if b.available else f": {b.reason}"
        print(f"  {name:<6} {status}{reason}")
    print(f"C SIMD path: {fastloss.isa() or 'none'}")
    print(f"threads: {fastloss.get_num_threads()}  (cpu_count {os.cpu_count()})")
    print(f"GPU: {_gpu_line()}")
    if args.torch:
        try:
            import torch
            print(f"torch: {torch.__version__} ({torch.get_num_threads()} threads)")
        except ImportError:
            print("torch: not installed")
    return 0


# --------------------------------------------------------------------------- bench

def _progress(total: int):
    """A tqdm bar on stderr, or a stand-in with the same two methods if tqdm is missing."""
    try:
        from tqdm import tqdm
        # disable=None: no bar when stderr is not a terminal (logs, CI)
        return tqdm(total=total, file=sys.stderr, leave=False, unit="run", disable=None)
    except ImportError:
        class _Quiet:
            def update(self, k=1): pass
            def set_description_str(self, s): pass
            def close(self): pass
        return _Quiet()


def _split(text: str | None, allowed: Iterable[str], what: str) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)}; expected some of "
                         f"{', '.join(allowed)}")
    return names


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _ratio(base: float | None, t: float) -> str:
    """base's time over t as a speed-up, with two significant digits or so."""
    if not base:
        return "-"
    r = base / t
    return f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def cmd_bench(args) -> int:
    if args.small:
        dtype = np.dtype(args.dtype)
        names = {label.split("[")[0] for entries in SMALL_CALLS.values() for label, _ in entries}
        _bench_small(args, dtype, _split(args.losses, sorted(names), "loss") or names,
                     [False, True] if args.grad else [False])
        return 0
    if args.report:
        from fastloss._report import cmd_report     # matplotlib and the sizes grid live there
        return cmd_report(args)
    dtype = np.dtype(args.dtype)
    families = {"multiclass": MULTICLASS_CASES, "overlap": OVERLAP_CASES}
    all_names = list(CASES) + sorted({c.name for cases in families.values()
                                      for c in cases.values()}) + list(BOX_LOSS_NAMES) + \
        [c.name for c in PAIRWISE_CASES.values()]
    chosen = _split(args.losses, all_names, "loss") or all_names
    losses = [name for name in chosen if name in CASES]
    have_torch = torch_available()
    default_backends = cpu_backends() + ["numpy"] + (["torch"] if have_torch else [])
    backends = _split(args.backends, list(CPU_COMPILED) + list(BASELINES),
                      "backend") or default_backends
    if "torch" in backends and not have_torch:
        raise SystemExit("backend torch asked for but torch does not import")
    unavailable = [b for b in backends if b in CPU_COMPILED and b not in cpu_backends()]
    if unavailable:
        info = fastloss.backends()
        raise SystemExit("; ".join(f"backend {b} unavailable: {info[b].reason}"
                                   for b in unavailable))
    modes = [False, True] if args.grad else [False]

    results: dict[tuple[str, bool, str], float] = {}
    first: dict[tuple[str, bool, str], float] = {}
    inputs = {name: make_inputs(name, args.n, dtype, seed=0) for name in losses}
    bar = _progress(len(losses) * len(modes) * len(backends))
    others = OthersCPU().__enter__()
    try:
        for backend in backends:              # backend outermost: its threads stay warm
            for name in losses:
                x, y = inputs[name]
                for grad in modes:
                    bar.set_description_str(f"{name} {backend} {MODES[grad]}")
                    call = make_call(name, backend, x, y, grad=grad)
                    start = time.perf_counter()
                    call()                                   # compiles, if it must
                    first[name, grad, backend] = time.perf_counter() - start
                    results[name, grad, backend] = median_time(call, repeats=args.repeats,
                                                               warmup=0)
                    bar.update()
    finally:
        bar.close()
        others.__exit__(None, None, None)

    rows = []
    for name in losses:
        for grad in modes:
            t_np = results.get((name, grad, "numpy"))
            t_torch = results.get((name, grad, "torch"))
            for backend in backends:
                t = results[name, grad, backend]
                rows.append([name, MODES[grad], backend, f"{t * 1e3:.3f}",
                             f"{bytes_read(*inputs[name]) / t / 1e9:.2f}", _ratio(t_np, t), _ratio(t_torch, t),
                             f"{first[name, grad, backend] * 1e3:.1f}"])
    print(f"fastloss {fastloss.__version__}: n = {args.n:,} {dtype.name}, mean reduction, "
          f"{fastloss_threads()} threads, C SIMD path {fastloss.isa() or 'none'}; "
          f"median of {args.repeats}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"GB/s of input + target read; "
          f"value+grad in torch = forward + autograd backward")
    print(_table(["loss", "mode", "backend", "median ms", "GB/s", "vs numpy", "vs torch",
                  "1st call ms"], rows))
    for family, cases in families.items():
        _bench_cases(args, family, [c for c in cases.values() if c.name in chosen], dtype,
                     backends, modes)
    _bench_boxes(args, [name for name in BOX_LOSS_NAMES if name in chosen], dtype, backends,
                 modes)
    _bench_pairwise(args, [c for c in PAIRWISE_CASES.values() if c.name in chosen], dtype,
                    backends, modes)
    if "torch" in backends:
        sys.stdout.flush()
        _bench_small_in_child(args)
    if others.share is not None and others.share > 0.25:
        print(f"warning: other processes used {others.share:.0%} of the CPUs meanwhile; "
              f"parallel code waits for descheduled threads, so these figures understate it")
    return 0


def multiclass_shape(case: MulticlassCase, n: int, keep_ndim: bool = False) -> tuple[int, ...]:
    """The case's layout scaled to about n logits: (n // C, C), or one sample
    (1, C, h, w) of a square image; with ``keep_ndim`` one sample with as many
    spatial axes as the case has (a cube for a 3-D case)."""
    classes = case.shape[1]
    if len(case.shape) == 2:
        return (max(1, n // classes), classes)
    dims = len(case.shape) - 2 if keep_ndim else 2
    per_class = max(1, n // classes)
    side = math.isqrt(per_class) if dims == 2 else round(per_class ** (1 / dims))
    return (1, classes) + (max(1, side),) * dims


def _time_backends(make, backends, modes, repeats):
    """{(backend, grad): median seconds} of ``make(backend, grad)()``, after one
    untimed call (it compiles, if it must)."""
    times = {}
    for backend in backends:
        for grad in modes:
            call = make(backend, grad)
            call()
            times[backend, grad] = median_time(call, repeats=repeats, warmup=0)
    return times


def _timing_rows(lead, times, backends, modes, bases=("numpy", "torch")):
    """Table rows: ``lead`` (the case's columns), mode, backend, median ms and the
    speed-up against each base backend measured in the same call."""
    return [[*lead, MODES[grad], backend, f"{times[backend, grad] * 1e3:.3f}",
             *(_ratio(times.get((base, grad)), times[backend, grad]) for base in bases)]
            for grad in modes for backend in backends]


_FAMILY_TITLES = {
    "multiclass": "multi-class losses, {dtype}, mean reduction (torch: the usual "
                  "implementation, int64 labels):",
    "overlap": "overlap (Dice-family) losses, {dtype} logits, uint8 labels, softmax inside, "
               "mean reduction (torch: MONAI's loss module, to_onehot_y=True):",
}


def _bench_cases(args, family, cases, dtype, backends, modes):
    """The multi-class or overlap cases at about ``args.n`` logits, on the same
    backends (the NumPy reference included, at this size); the torch column of
    the overlap losses is MONAI's, when it imports."""
    if not cases:
        return
    if family == "overlap" and "torch" in backends:
        try:
            import monai  # noqa: F401
        except ImportError:
            backends = [b for b in backends if b != "torch"]
    rows = []
    for case in cases:
        shape = multiclass_shape(case, args.n)
        x, y = make_multiclass_inputs(case, shape, dtype, seed=0)
        times = _time_backends(lambda backend, grad: make_multiclass_call(case, backend, x, y,
                                                                          grad=grad),
                               backends, modes, args.repeats)
        rows += _timing_rows([case.label, "x".join(map(str, shape))], times, backends, modes)
    print("\n" + _FAMILY_TITLES[family].format(dtype=dtype.name))
    print(_table(["case", "shape", "mode", "backend", "median ms", "vs numpy", "vs torch"], rows))


def _bench_boxes(args, names, dtype, backends, modes):
    """The box losses on n / 4 boxes (n coordinates), on the same backends."""
    if not names:
        return
    b1, b2 = make_boxes(max(1, args.n // 4), dtype)
    rows = []
    for name in names:
        times = _time_backends(lambda backend, grad: make_box_call(name, backend, b1, b2,
                                                                   grad=grad),
                               backends, modes, args.repeats)
        rows += _timing_rows([name, str(len(b1))], times, backends, modes)
    print(f"\nbox losses, {dtype.name} (x1, y1, x2, y2), mean reduction (torch: torchvision's "
          f"formulas in torch ops):")
    print(_table(["loss", "boxes", "mode", "backend", "median ms", "vs numpy", "vs torch"], rows))


def pairwise_bench_sizes(case: PairwiseCase, n: int) -> tuple[int, int | None]:
    """(N, M) of a pairwise case at about ``n`` elements: N = sqrt(n) rows rounded
    down to a multiple of 8 (at least 16; N per view for NT-Xent), M = 4 N
    InfoNCE negatives; the row-wise triplet loss gets n / 128 rows."""
    if case.name == "triplet_margin_loss":
        return max(1, n // 128), None
    rows = max(16, math.isqrt(max(1, n)) // 8 * 8)
    return rows, (4 * rows if case.name == "info_nce_loss" else None)


def _bench_pairwise(args, cases, dtype, backends, modes):
    """The pairwise losses at D = 128, N from ``args.n`` (:func:`pairwise_bench_sizes`),
    on the compiled backends asked for (numba where it has the case's kernels)
    and torch (the usual implementation, as in bench/test_bench_pairwise.py);
    the NumPy reference is left out (it builds the float64 matrices)."""
    if not cases:
        return
    d, rows = 128, []
    for case in cases:
        use = [b for b in backends if b in CPU_COMPILED or b == "torch"]
        if "numba" in use and numba_pairwise_missing(case):
            use.remove("numba")
        n, m = pairwise_bench_sizes(case, args.n)
        arrays = make_pairwise_inputs(case, n, m, d, dtype, seed=0)
        times = _time_backends(lambda backend, grad: make_pairwise_call(case, backend, arrays,
                                                                        grad=grad),
                               use, modes, args.repeats)
        rows += _timing_rows([case.label, pairwise_size(case, n, m, d)], times, use, modes,
                             bases=("torch",))
    print(f"\npairwise losses, {dtype.name}, D = {d} (value+grad: every embedding input's "
          f"gradient; torch: the usual implementation, all-pairs matrices; numba only where "
          f"it has the kernels):")
    print(_table(["case", "size", "mode", "backend", "median ms", "vs torch"], rows))


# --------------------------------------------------------------------------- small calls

#: the sizes of a training step, per family: (case label, shape), each compared with
#: its peer (torch, MONAI, pml) in one run.  Elementwise: n elements; multi-class and
#: overlap: the input's shape; boxes: boxes; pairwise: N rows (D = 128).  Read by
#: ``python -m fastloss bench`` (the "small calls" table) and bench/test_bench_small_calls.py.
SMALL_CALLS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "elementwise": tuple((name, (n,)) for name in CASES for n in (100, 1000, 10_000)),
    "multiclass": (
        ("cross_entropy[llm]", (32, 10)), ("cross_entropy[llm]", (64, 10)),
        ("cross_entropy[llm]", (256, 1000)), ("cross_entropy[smooth]", (256, 1000)),
        ("cross_entropy[seg]", (2, 21, 32, 32)), ("nll_loss", (64, 10)),
        ("nll_loss", (1000, 1000)), ("softmax_focal_loss[seg]", (2, 21, 32, 32)),
        ("multi_margin_loss", (256, 100)), ("multiclass_hinge_loss", (256, 100))),
    "overlap": tuple((label, (2, 2, 64, 64)) for label in OVERLAP_CASES),
    "boxes": tuple((name, (256,)) for name in BOX_LOSS_NAMES),
    "pairwise": tuple((label, (256 if PAIRWISE_CASES[label].name == "triplet_margin_loss"
                               else 128,)) for label in PAIRWISE_CASES),
}


def small_call(family: str, label: str, shape: tuple[int, ...], backend: str, grad: bool,
               dtype=np.float32) -> Callable[[], object]:
    """The call of :data:`SMALL_CALLS` entry (label, shape) on ``backend`` (a fastloss
    backend, or ``"torch"`` for the peer: torch, MONAI or pml's usual code)."""
    if family == "elementwise":
        x, y = make_inputs(label, shape, dtype, seed=0)
        return make_call(label, backend, x, y, grad=grad)
    if family in ("multiclass", "overlap"):
        row_case = (MULTICLASS_CASES if family == "multiclass" else OVERLAP_CASES)[label]
        x, y = make_multiclass_inputs(row_case, shape, dtype, seed=0)
        return make_multiclass_call(row_case, backend, x, y, grad=grad)
    if family == "boxes":
        b1, b2 = make_boxes(shape[0], dtype)
        return make_box_call(label, backend, b1, b2, grad=grad)
    case = PAIRWISE_CASES[label]
    arrays = make_pairwise_inputs(case, shape[0], 4 * shape[0] if case.name == "info_nce_loss"
                                  else None, 128, dtype, seed=0)
    return make_pairwise_call(case, backend, arrays, grad=grad)


def _bench_small_in_child(args) -> None:
    """The small-call table in a fresh process under the user's OpenMP wait policy
    (see :func:`quiet_openmp`): ``python -m fastloss bench --small``."""
    import subprocess
    env = dict(os.environ, FASTLOSS_BENCH_OMP="default")
    env.pop("OMP_WAIT_POLICY", None)
    if _USER_POLICY and _USER_POLICY[0] is not None:
        env["OMP_WAIT_POLICY"] = _USER_POLICY[0]
    command = [sys.executable, "-m", "fastloss", "bench", "--small", "--dtype", args.dtype,
               "--repeats", str(args.repeats)]
    if args.losses:
        command += ["--losses", args.losses]
    if args.grad:
        command.append("--grad")
    subprocess.run(command, env=env, check=True)


def _bench_small(args, dtype, chosen, modes):
    """Fastloss's automatic backend against the peer at the sizes of a training step,
    forward and value+grad, in the same run (median of at least 9 rounds)."""
    if not torch_available():
        print("\nsmall calls: skipped (torch, the peer, does not import)")
        return
    rows = []
    repeats = max(9, args.repeats)
    for family, entries in SMALL_CALLS.items():
        for label, shape in entries:
            name = label.split("[")[0]
            if name not in chosen:
                continue
            if family == "overlap":
                try:
                    import monai  # noqa: F401
                except ImportError:
                    continue
            for grad in modes:
                times = {}
                for backend in (None, "torch"):
                    call = small_call(family, label, shape, backend, grad, dtype)
                    call()
                    times[backend] = median_time(call, repeats=repeats, warmup=1)
                rows.append([family, label, "x".join(map(str, shape)), MODES[grad],
                             f"{times[None] * 1e6:.1f}", f"{times['torch'] * 1e6:.1f}",
                             _ratio(times["torch"], times[None])])
    print(f"\nsmall calls, {dtype.name} (the sizes of a training step): fastloss's automatic "
          f"backend against the peer (torch; MONAI for overlap; torch's usual code for the "
          f"pairwise losses), median of {repeats}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; 'vs peer' > 1x: fastloss is faster")
    print(_table(["family", "case", "size", "mode", "fastloss us", "peer us", "vs peer"],
                 rows))


# --------------------------------------------------------------------------- check

def to_host(value):
    """A NumPy array of a backend's result (device arrays copied back)."""
    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    return np.asarray(value)


def _close(got, want, rtol: float) -> bool:
    got, want = to_host(got).astype(np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return bool(np.allclose(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True))


def cmd_check(args) -> int:
    """Every loss, every available backend, against backend="numpy"."""
    info = fastloss.backends()
    wanted = _split(args.backends, ("c", "numba", "cuda"), "backend") or ("c", "numba", "cuda")
    names = [b for b in wanted if b in info and info[b].available]
    dtypes = [np.dtype(d) for d in args.dtypes.split(",")]
    tol = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-10}
    failures = 0
    for b in wanted:
        if b in info and not info[b].available:
            print(f"skip  {b}: {info[b].reason}")
    for name, case in CASES.items():
        fn = getattr(fastloss, name)
        for dtype in dtypes:
            x, y = make_inputs(case, args.n, dtype, seed=1)
            for reduction in ("mean", "sum", "none"):
                ref_v, ref_g = fn(x, y, reduction=reduction, return_grad=True,
                                  backend="numpy", **case.params)
                for backend in names:
                    xa, ya = x, y
                    if backend == "cuda":                # fastloss never copies: we do
                        from numba import cuda
                        xa, ya = cuda.to_device(x), cuda.to_device(y)
                    for grad in (False, True):
                        what = (f"{name:<33} {backend:<6} {dtype.name:<8} {reduction:<5} "
                                f"{MODES[grad]}")
                        try:
                            out = fn(xa, ya, reduction=reduction, return_grad=grad,
                                     backend=backend, **case.params)
                            ok = (_close(out[0], ref_v, tol[dtype])
                                  and _close(out[1], ref_g, tol[dtype])) if grad \
                                else _close(out, ref_v, tol[dtype])
                            verdict = "ok" if ok else "mismatch"
                        except Exception as exc:         # noqa: BLE001 - report, go on
                            verdict, ok = f"error: {type(exc).__name__}: {exc}", False
                        failures += not ok
                        if not ok or args.verbose:
                            print(f"{verdict:<8} {what}")
    total = len(CASES) * len(dtypes) * 3 * len(names) * 2
    print(f"{total - failures}/{total} ok ({', '.join(names)} vs numpy, n = {args.n})")
    return 1 if failures else 0


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastloss",
                                     description="fastloss: information, benchmark, self-test")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="version, backends, C SIMD path, threads, GPU")
    p.add_argument("--no-torch", dest="torch", action="store_false",
                   help="don't import torch to report its version")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="time every loss on each CPU backend, NumPy and PyTorch")
    p.add_argument("--n", type=int, default=1_000_000, help="elements (default 1e6)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--losses", help="comma-separated loss names (default: all)")
    p.add_argument("--backends", help="comma-separated: c, numba, numpy, torch "
                                      "(default: all available)")
    p.add_argument("--grad", action="store_true", help="also time value + gradient")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--report", metavar="DIR",
                   help="instead of the tables: time each family across sizes, both modes, "
                        "and write DIR/README.md with PNG charts (needs matplotlib; "
                        "'{tag}' in DIR becomes <cpu>-<cores>core-<date>; --backends may "
                        "also name monai, pml; --n and --grad do not apply)")
    p.add_argument("--small", action="store_true",
                   help="only the small-call table (the sizes of a training step, against "
                        "the peer), in this process and under this environment's OpenMP "
                        "wait policy; a plain bench runs it so in a child process")
    p.add_argument("--sizes", help="with --report: comma-separated element counts, from "
                                   "which each family sizes its inputs (default "
                                   "1e4,1e5,1e6,1e7)")
    p.add_argument("--quick", action="store_true",
                   help="with --report: tiny sizes (1e3,1e4), 3 rounds: a plumbing check")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check", help="every loss on every backend vs the NumPy reference")
    p.add_argument("--n", type=int, default=1003, help="elements (default 1003: odd)")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--backends", help="comma-separated: c, numba, cuda (default: all "
                                      "available; numba's first compile of each kernel "
                                      "dominates the time)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the ok lines too")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("cuda-check", add_help=False,
                       help="compile every recorded CUDA kernel launch to PTX and cubin for "
                            "sm_80 and sm_90, no GPU needed (--help: its options)")

    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["cuda-check"]:       # its own parser (its --help too)
        from . import _cuda_check
        return _cuda_check.main(given[1:])
    args = parser.parse_args(argv)
    args.argv = given    # the report names its command
    if not getattr(args, "small", False):
        quiet_openmp()             # before any numba/torch import (see its docstring)
    return args.func(args)
