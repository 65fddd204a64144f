"""Overlap (Dice-family) kernels of the Numba backends, called directly with
kernels.OverlapCall: the statistics (I, P, T) and the gradient from given
coefficients, against a float64 NumPy evaluation of the contract written out
below (the whole activated volume and a one-hot target: what the kernels must
never allocate), on numba_cpu (every activation x target kind / dtype x
squared x input dtype, 2-D and 3-D, volumes over one work unit) and
numba_cuda under the simulator (a few tiny cases, one of them with more
classes than a class window).  Also: the same bits for any thread count,
extreme logits, all-ignored volumes, inputs left untouched, the finish
protocol and the argument errors.

The CPU backend compiles one kernel per input dtype (two here): its cost
dominates this file's time."""
import numpy as np
import pytest

import fastloss as fl
from fastloss.kernels import OverlapCall

from conftest import available, tol, to_device, to_host

pytest.importorskip("numba")

# every test of this file on one xdist worker: each kernel is compiled once
pytestmark = pytest.mark.xdist_group("overlap_kernels")

NO_IGNORE = -2 ** 63
F32, F64 = np.float32, np.float64


# --- the contract, in float64 NumPy --------------------------------------------------------
def spec(call, coef):
    """(stats (N, C, 3), grad (flat)) by kernels.OverlapCall."""
    n, C, S = call.n, call.classes, call.inner
    x = np.asarray(to_host(call.input), np.float64).reshape(n, C, S)
    with np.errstate(over="ignore", invalid="ignore"):
        if call.activation == "softmax":
            e = np.exp(x - x.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        elif call.activation == "sigmoid":
            z = np.exp(-np.abs(x))
            p = np.where(x >= 0, 1 / (1 + z), z / (1 + z))
        else:
            p = x
    target = to_host(call.target)
    if call.target_kind == "labels":
        y = np.asarray(target).astype(np.int64).reshape(n, 1, S)
        t = (y == np.arange(C)[None, :, None] + call.label_base).astype(np.float64)
        valid = np.broadcast_to(y != call.ignore_index, (n, C, S))
    else:
        t = np.asarray(target, np.float64).reshape(n, C, S)
        valid = np.ones((n, C, S), bool)
    q = 2 if call.squared else 1
    pv = np.where(valid, p, 0.0)
    tv = np.where(valid, t, 0.0)
    stats = np.stack([(pv * tv).sum(axis=2), (pv ** q).sum(axis=2), (tv ** q).sum(axis=2)],
                     axis=-1)
    g = coef[:, :, :1] * t + coef[:, :, 1:] * (2 * p if call.squared else 1.0)
    if call.activation == "softmax":
        gx = p * (g - (p * g).sum(axis=1, keepdims=True))
    elif call.activation == "sigmoid":
        gx = g * p * (1 - p)
    else:
        gx = g
    return stats, np.where(valid, gx, 0.0).reshape(-1)


# --- inputs -------------------------------------------------------------------------------
def make_call(shape, dtype, act, target, *, squared=False, ignore=False, want_grad=True,
              seed=0, scale=3.0):
    """An OverlapCall on the host and a random coef; ``target`` is ("labels", dtype)
    or ("mask", "uint8" | "float")."""
    rng = np.random.default_rng(seed)
    n, C = shape[:2]
    S = int(np.prod(shape[2:]))
    x = (rng.standard_normal(n * C * S) * scale).astype(dtype)
    kind, tdt = target
    base = 0
    ignore_index = NO_IGNORE
    if kind == "labels":
        base = 1 if C == 1 else 0
        y = rng.integers(0, C + base, n * S)
        if ignore:
            ignore_index = 255 if tdt == np.uint8 else -100
            y[rng.random(n * S) < 0.25] = ignore_index
            y[0] = ignore_index
        t = y.astype(tdt)
    elif tdt == "uint8":
        t = (rng.random(n * C * S) < 0.4).astype(np.uint8)
    else:
        t = rng.random(n * C * S).astype(dtype)
    call = OverlapCall(input=x, target=t, target_kind=kind, n=n, classes=C, inner=S,
                       activation=act, squared=squared, ignore_index=ignore_index,
                       label_base=base, want_grad=want_grad)
    return call, rng.standard_normal((n, C, 2))


class Finish:
    """finish(stats) -> coef, recording its calls."""

    def __init__(self, coef):
        self.coef = coef
        self.seen = []

    def __call__(self, stats):
        self.seen.append(np.array(stats, copy=True))
        return self.coef


def run(module, call, coef):
    """module.overlap(call, finish), checking the finish protocol and that the
    inputs are untouched; (stats, host grad or None)."""
    before = [np.array(to_host(a), copy=True) for a in (call.input, call.target)]
    finish = Finish(coef)
    stats, grad = module.overlap(call, finish)
    assert isinstance(stats, np.ndarray) and stats.dtype == np.float64
    assert stats.shape == (call.n, call.classes, 3)
    if call.want_grad:
        assert len(finish.seen) == 1
        np.testing.assert_array_equal(finish.seen[0], stats)
        grad = to_host(grad)
        assert grad.dtype == np.dtype(to_host(call.input).dtype)
        assert grad.shape == (call.n * call.classes * call.inner,)
    else:
        assert finish.seen == [] and grad is None
    for a, b in zip(before, (call.input, call.target)):
        np.testing.assert_array_equal(to_host(b), a)
    return stats, grad


def check(call, coef, stats, grad):
    stats_ref, grad_ref = spec(call, coef)
    t = tol(to_host(call.input).dtype)
    np.testing.assert_allclose(stats, stats_ref, **t)
    if grad is not None:
        np.testing.assert_allclose(grad, grad_ref, **t)
        if call.target_kind == "labels":   # ignored voxels: exactly 0 in every class
            y = to_host(call.target).astype(np.int64).reshape(call.n, 1, call.inner)
            g = grad.reshape(call.n, call.classes, call.inner)
            assert not np.broadcast_to(y == call.ignore_index, g.shape)[g != 0].any()


# --- Numba CPU ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu():
    if not available("numba"):
        pytest.skip(fl.backends()["numba"].reason)
    from fastloss.kernels import numba_cpu
    return numba_cpu


TARGETS = [("labels", np.int32, True), ("labels", np.int32, False),
           ("labels", np.int64, True), ("labels", np.int64, False),
           ("labels", np.uint8, True), ("labels", np.uint8, False),
           ("mask", "uint8", False), ("mask", "float", False)]
# 2-D and 3-D volumes, S over one 4096-voxel work unit and not a multiple of it, C in 1, 2, 5
SHAPES = [(2, 5, 67, 65), (1, 2, 17, 16, 19), (3, 1, 9, 7), (2, 5, 4, 3, 5), (1, 2, 70, 61),
          (2, 1, 3, 40, 37)]
CPU_CASES = [(act, target, squared, dtype)
             for act in ("softmax", "sigmoid", "none")
             for target in TARGETS
             for squared in (False, True)
             for dtype in (F32, F64)]


def _case_id(case):
    act, (kind, tdt, ignore), squared, dtype = case
    tname = np.dtype(tdt).name if kind == "labels" else tdt
    return (f"{act}-{kind}-{tname}{'-ignore' if ignore else ''}"
            f"{'-squared' if squared else ''}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("case", CPU_CASES, ids=_case_id)
def test_numba_cpu_matches_spec(cpu, case):
    act, (kind, tdt, ignore), squared, dtype = case
    k = CPU_CASES.index(case)
    call, coef = make_call(SHAPES[k % len(SHAPES)], dtype, act, (kind, tdt), squared=squared,
                           ignore=ignore, seed=k)
    check(call, coef, *run(cpu, call, coef))


def test_numba_cpu_odd_layouts(cpu):
    # 70 classes: tiles of 117 voxels, not dividing the 4096-voxel unit; S = 1; a bool mask
    for shape, act, target in (((2, 70, 50, 93), "softmax", ("labels", np.int64)),
                               ((4, 3, 1), "sigmoid", ("labels", np.int32)),
                               ((2, 3, 9, 8), "softmax", ("mask", "uint8"))):
        call, coef = make_call(shape, F64, act, target, ignore=True, squared=True, seed=5)
        if target[0] == "mask":
            call.target = call.target.astype(bool)
        check(call, coef, *run(cpu, call, coef))


def test_numba_cpu_stats_only(cpu):
    for act, target in (("softmax", ("labels", np.int64)), ("sigmoid", ("mask", "float"))):
        call, coef = make_call((2, 3, 50, 90), F64, act, target, ignore=True, want_grad=False)
        stats, grad = run(cpu, call, coef)
        check(call, coef, stats, None)


def test_numba_cpu_bit_identical_for_any_thread_count(cpu):
    # 12321 voxels a sample: 3 full work units and a partial one, 8 units in all
    cases = [((2, 3, 111, 111), F32, "softmax", ("labels", np.int64), True, False),
             ((2, 3, 111, 111), F64, "sigmoid", ("mask", "float"), False, True),
             ((2, 2, 23, 24, 25), F32, "none", ("labels", np.uint8), True, True)]
    for shape, dtype, act, target, ignore, squared in cases:
        call, coef = make_call(shape, dtype, act, target, ignore=ignore, squared=squared, seed=7)
        results = []
        for threads in (1, 2):
            fl.set_num_threads(threads)
            results.append(run(cpu, call, coef))
        (s1, g1), (s2, g2) = results
        assert s1.tobytes() == s2.tobytes() and g1.tobytes() == g2.tobytes()
        check(call, coef, s1, g1)


def _extreme(call, seed):
    rng = np.random.default_rng(seed)
    x = call.input
    call.input = np.where(rng.random(x.size) < 0.5, -1e4, 1e4).astype(x.dtype)
    call.input[::3] = x[::3]


def test_numba_cpu_extreme_logits_are_finite(cpu):
    for k, act in enumerate(("softmax", "sigmoid", "none")):
        for target in (("labels", np.int32), ("mask", "uint8")):
            for dtype in (F32, F64):
                call, coef = make_call((2, 5, 30, 41), dtype, act, target, ignore=True,
                                       squared=k % 2 == 1, seed=k)
                _extreme(call, k)
                stats, grad = run(cpu, call, coef)
                assert np.isfinite(stats).all() and np.isfinite(grad).all()
                check(call, coef, stats, grad)


def _all_ignored(call):
    call.target[:] = call.ignore_index
    call.input[::5] = np.nan     # ignored voxels are left out whatever their input
    call.input[1::5] = np.inf


def test_numba_cpu_all_ignored_gives_zeros(cpu):
    for act in ("softmax", "sigmoid", "none"):
        for dtype, tdt in ((F32, np.int64), (F64, np.uint8)):
            call, coef = make_call((2, 3, 70, 65), dtype, act, ("labels", tdt), ignore=True)
            _all_ignored(call)
            stats, grad = run(cpu, call, coef)
            assert not stats.any() and not grad.any()


def test_numba_cpu_nan_stays_in_its_sample(cpu):
    call, coef = make_call((2, 3, 10, 10), F64, "softmax", ("labels", np.int64))
    call.input[0 * 300 + 1 * 100 + 7] = np.nan     # sample 0, class 1, voxel 7
    stats, grad = run(cpu, call, coef)
    assert np.isnan(stats[0, :, 1]).all() and np.isfinite(stats[1]).all()
    g = grad.reshape(2, 3, 100)
    assert np.isnan(g[0, :, 7]).all() and np.isfinite(g[1]).all()


def test_numba_cpu_empty_volumes(cpu):
    for shape in ((0, 3, 4, 5), (2, 3, 0, 5)):
        call, coef = make_call(shape, F32, "softmax", ("labels", np.int64))
        stats, grad = run(cpu, call, coef[:shape[0]])
        assert not stats.any() and grad.size == 0


def test_numba_cpu_argument_errors(cpu):
    call, coef = make_call((2, 3, 4, 5), F32, "softmax", ("labels", np.int16))
    with pytest.raises(TypeError, match="target"):
        cpu.overlap(call, Finish(coef))
    call, coef = make_call((2, 3, 4, 5), F32, "softmax", ("mask", "float"))
    call.target = call.target.astype(np.float64)   # a float mask of another dtype
    with pytest.raises(TypeError, match="target"):
        cpu.overlap(call, Finish(coef))
    call.target = call.target[:-1].astype(np.float32)
    with pytest.raises(ValueError, match="target: expected 120 elements"):
        cpu.overlap(call, Finish(coef))
    call, coef = make_call((2, 3, 4, 5), F32, "softmax", ("labels", np.int64))
    with pytest.raises(ValueError, match="finish"):
        cpu.overlap(call, Finish(coef[:, :2]))
    call.activation = "relu"
    with pytest.raises(ValueError, match="activation"):
        cpu.overlap(call, Finish(coef))


# --- CUDA (simulator: a few hundred elements a case) --------------------------------------
@pytest.fixture(scope="module")
def gpu():
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    from fastloss.kernels import numba_cuda
    return numba_cuda


def on_device(call):
    call.input = to_device(call.input)
    call.target = to_device(call.target)
    return call


# (shape, dtype, activation, target, ignore, squared); under the simulator a job is 64
# voxels and a class window 4 classes: C = 5 runs two windows
CUDA_CASES = [
    ((2, 5, 6, 7), F32, "softmax", ("labels", np.int64), True, False),
    ((1, 2, 3, 4, 11), F64, "sigmoid", ("mask", "float"), False, True),
    ((3, 1, 5, 9), F64, "none", ("labels", np.uint8), True, False),
    ((2, 2, 10, 10), F64, "softmax", ("mask", "uint8"), False, True),
    ((1, 5, 8, 9), F32, "sigmoid", ("labels", np.int32), False, True),
]


@pytest.mark.parametrize("case", CUDA_CASES, ids=lambda c: f"{c[2]}-{c[3][0]}-{len(c[0]) - 2}d")
def test_numba_cuda_matches_spec(gpu, case):
    shape, dtype, act, target, ignore, squared = case
    call, coef = make_call(shape, dtype, act, target, ignore=ignore, squared=squared, seed=3)
    call = on_device(call)
    check(call, coef, *run(gpu, call, coef))


def test_numba_cuda_edge_cases(gpu):
    # stats only (finish not called); extreme logits; a bool mask; an all-ignored volume
    call, coef = make_call((2, 3, 4, 5), F64, "softmax", ("labels", np.int32), ignore=True,
                           want_grad=False)
    check(call, coef, *run(gpu, on_device(call), coef))
    call, coef = make_call((1, 3, 5, 8), F32, "softmax", ("labels", np.int64), ignore=True)
    _extreme(call, 1)
    stats, grad = run(gpu, on_device(call), coef)
    assert np.isfinite(stats).all() and np.isfinite(grad).all()
    check(call, coef, stats, grad)
    call, coef = make_call((1, 2, 5, 6), F32, "softmax", ("mask", "uint8"))
    call.target = call.target.astype(bool)
    check(call, coef, *run(gpu, on_device(call), coef))
    call, coef = make_call((1, 2, 6, 7), F32, "sigmoid", ("labels", np.uint8), ignore=True)
    _all_ignored(call)
    stats, grad = run(gpu, on_device(call), coef)
    assert not stats.any() and not grad.any()
