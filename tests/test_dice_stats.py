"""dice_stats / dice_from_stats / dice_grad: the overlap losses from their sums.

They must give what the losses give (on the kernel backends the very same
bits: the same sums, the same _evaluate, the same gradient kernel), combine
over shards of the batch and of the volume, and reject bad arguments.  The
last test runs examples/ddp_dice.py: two torch.distributed (gloo) processes."""
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastloss as fl
from fastloss.losses.overlap import (STATS_LOSSES, dice_from_stats, dice_grad, dice_stats)

from conftest import available, backend_param, to_device, to_host

# the backends compile one overlap kernel family: share the worker that has it
pytestmark = pytest.mark.xdist_group("overlap_kernels")

STATS_ARGS = ("activation", "squared_pred", "ignore_index")


def make_case(shape, target, activation, *, seed=0, ignore_index=None):
    rng = np.random.default_rng(seed)
    n, classes = shape[:2]
    x = rng.normal(size=shape) * 2.0
    if activation is None:
        x = 1.0 / (1.0 + np.exp(-x))
    if target == "mask":
        return x, rng.random(shape) < 0.4
    y = rng.integers(0, 2 if classes == 1 else classes, size=(n,) + shape[2:])
    if ignore_index is not None:
        y.reshape(-1)[::4] = ignore_index
    y[0] = np.where(y[0] == classes - 1, 0, y[0]) if classes > 2 else y[0]   # an absent class
    return x, (y[:, None] if target == "labels_n1" else y).astype(np.int64)


def options(loss, variant, classes):
    """The loss's keyword arguments for one variant (0, 1, 2) of its options."""
    kw = dict(include_background=variant != 1, batch=variant == 2)
    scored = classes - 1 if not kw["include_background"] and classes > 1 else classes
    if loss in ("dice", "jaccard"):
        kw["squared_pred"] = variant == 1
    if loss == "tversky":
        kw.update(alpha=0.3, beta=0.7, gamma=(1.0, 1.5, 0.75)[variant])
    if loss == "generalized_dice":
        kw["w_type"] = ("square", "simple", "uniform")[variant]
    else:
        kw["weight"] = (None, 0.5, np.linspace(0.5, 2.0, scored))[variant]
        kw["ignore_empty"] = variant > 0
    return kw


def split(kw):
    stats_kw = {k: v for k, v in kw.items() if k in STATS_ARGS}
    return stats_kw, {k: v for k, v in kw.items() if k not in STATS_ARGS}


def from_sums(loss, x, y, kw, reduction, backend):
    """(value, grad) through dice_stats -> dice_from_stats -> dice_grad."""
    stats_kw, value_kw = split(kw)
    stats = dice_stats(x, y, backend=backend, **stats_kw)
    assert stats.dtype == np.float64 and isinstance(stats, np.ndarray)
    value, coef = dice_from_stats(stats, loss=loss, reduction=reduction, return_coef=True,
                                  **value_kw)
    only = dice_from_stats(stats, loss=loss, reduction=reduction, **value_kw)
    np.testing.assert_array_equal(only, value)
    return value, dice_grad(x, y, coef, backend=backend, **stats_kw)


def compare(loss, backend, x, y, kw, reduction):
    x_before, y_before = x.copy(), y.copy()
    if backend == "cuda":
        x, y = to_device(x), to_device(y)
    value, grad = from_sums(loss, x, y, kw, reduction, backend)
    want_value, want_grad = getattr(fl, STATS_LOSSES[loss])(
        x, y, reduction=reduction, return_grad=True, backend=backend, **kw)
    want_value, want_grad, grad = to_host(want_value), to_host(want_grad), to_host(grad)
    assert grad.shape == x_before.shape and grad.dtype == x_before.dtype
    assert np.shape(value) == np.shape(want_value)
    value = np.asarray(value).astype(want_value.dtype)   # the loss casts to the input's dtype
    if backend == "numpy":        # the loss is the reference, computed another way
        np.testing.assert_allclose(value, want_value, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-14)
    else:                         # the same sums, formula and kernel: the same bits
        np.testing.assert_array_equal(value, want_value)
        np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(to_host(x), x_before)
    np.testing.assert_array_equal(to_host(y), y_before)


def _cases(targets, activations, variants, reductions):
    """loss x reduction x variant in full; target and activation rotate."""
    rotate = itertools.cycle(itertools.product(targets, activations))
    return [(loss, reduction, variant) + next(rotate)
            for loss in STATS_LOSSES for reduction in reductions for variant in variants]


@pytest.mark.parametrize("loss,reduction,variant,target,activation", _cases(
    ("labels", "labels_n1", "mask"), ("softmax", "sigmoid", None), (0, 1, 2),
    ("mean", "sum", "none")))
@pytest.mark.parametrize("backend", [backend_param("c"), backend_param("numpy")])
def test_matches_the_loss(backend, loss, reduction, variant, target, activation):
    ignore = 1 if target != "mask" and variant == 1 else None
    x, y = make_case((3, 3, 5, 4), target, activation, seed=variant, ignore_index=ignore)
    kw = dict(options(loss, variant, 3), activation=activation, ignore_index=ignore)
    compare(loss, backend, x, y, kw, reduction)


@pytest.mark.parametrize("loss,reduction,variant,target,activation", [
    (loss, reduction, variant) + layout for loss in STATS_LOSSES
    for (reduction, variant), layout in zip([("mean", 1), ("none", 2)],
                                            [("labels", "softmax"), ("mask", "sigmoid")])])
@pytest.mark.parametrize("backend", [backend_param("numba"), backend_param("cuda")])
def test_matches_the_loss_numba_and_cuda(backend, loss, reduction, variant, target,
                                         activation):
    ignore = 1 if target != "mask" and variant == 1 else None
    x, y = make_case((2, 3, 4, 3), target, activation, seed=variant, ignore_index=ignore)
    compare(loss, backend, x, y, dict(options(loss, variant, 3), activation=activation,
                                      ignore_index=ignore), reduction)


def test_float32_single_class_and_3d():
    x, y = make_case((2, 1, 3, 4, 5), "labels", "sigmoid", seed=3)
    compare("dice", "c", x.astype(np.float32), y.astype(np.uint8),
            dict(activation="sigmoid", batch=True), "mean")
    compare("jaccard", "c", x, y, dict(activation="sigmoid", squared_pred=True), "none")


@pytest.mark.parametrize("loss", list(STATS_LOSSES))
@pytest.mark.parametrize("batch", [True, False], ids=["batch", "per-sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_shards_of_the_batch_combine(loss, batch, reduction):
    """Two shards of the batch: summed sums (batch=True) or their rows
    (batch=False) give the loss of the whole batch, and each shard's
    gradient, from the global coefficients, its rows of the full gradient."""
    x, y = make_case((5, 3, 4, 6), "labels", "softmax", seed=7)
    kw = dict(options(loss, 1, 3), batch=batch, activation="softmax")
    stats_kw, value_kw = split(kw)
    shards = [slice(0, 2), slice(2, 5)]
    parts = [dice_stats(x[s], y[s], **stats_kw) for s in shards]
    if batch:
        total = sum(p.sum(axis=0, keepdims=True) for p in parts)      # an all_reduce
        rows = [slice(None)] * 2
    else:
        total = np.concatenate(parts)                                  # an all_gather
        rows = shards
    value, coef = dice_from_stats(total, loss=loss, reduction=reduction, return_coef=True,
                                  **value_kw)
    grad = np.concatenate([dice_grad(x[s], y[s], coef[r], **stats_kw)
                           for s, r in zip(shards, rows)])
    want_value, want_grad = getattr(fl, STATS_LOSSES[loss])(
        x, y, reduction=reduction, return_grad=True, **kw)
    np.testing.assert_allclose(value, want_value, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-15)


def test_shards_of_the_volume_add_up():
    x, y = make_case((2, 3, 6, 5), "labels", "softmax", seed=8, ignore_index=7)
    kw = dict(activation="softmax", ignore_index=7, squared_pred=True)
    whole = dice_stats(x, y, **kw)
    halves = dice_stats(x[:, :, :2], y[:, :2], **kw) + dice_stats(x[:, :, 2:], y[:, 2:], **kw)
    np.testing.assert_allclose(halves, whole, rtol=1e-14)
    np.testing.assert_allclose(dice_stats(x, y, backend="numpy", **kw), whole, rtol=1e-13)


def test_coefficients_are_the_derivatives_of_the_value():
    """coef = (dL/dI, dL/dP), checked by central differences on the sums."""
    rng = np.random.default_rng(9)
    stats = rng.random((3, 4, 3)) * 10 + 1
    for loss in STATS_LOSSES:
        value_kw = dict(alpha=0.3, beta=0.6, gamma=1.4) if loss == "tversky" else {}
        f = lambda s: float(dice_from_stats(s, loss=loss, include_background=False,  # noqa
                                            **value_kw))
        _, coef = dice_from_stats(stats, loss=loss, include_background=False,
                                  return_coef=True, **value_kw)
        for k in (0, 1):
            step = np.zeros_like(stats)
            step[1, 2, k] = 1e-6
            numeric = (f(stats + step) - f(stats - step)) / 2e-6
            np.testing.assert_allclose(coef[1, 2, k], numeric, rtol=1e-6)
        assert not coef[:, 0].any()               # the background is not scored


# ---- bad arguments --------------------------------------------------------------------

STATS = np.ones((2, 3, 3))
X = np.zeros((2, 3, 4, 5))
Y = np.zeros((2, 4, 5), np.uint8)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(loss="dice2"), ValueError, ["loss", "dice2", "'jaccard'"]),
    (dict(stats=np.ones((2, 3))), ValueError, ["stats", "(N, C, 3)", "(2, 3)"]),
    (dict(stats=np.ones((2, 3, 2))), ValueError, ["stats", "(2, 3, 2)"]),
    (dict(stats=np.ones((2, 0, 3))), ValueError, ["stats", "(2, 0, 3)"]),
    (dict(stats=np.ones((2, 3, 3), np.int64)), TypeError, ["stats", "float", "int64"]),
    (dict(stats="sums"), TypeError, ["stats"]),
    (dict(reduction="avg"), ValueError, ["reduction", "avg"]),
    (dict(return_coef="yes"), TypeError, ["return_coef"]),
    (dict(batch=1), TypeError, ["batch"]),
    (dict(smooth_dr=-1.0), ValueError, ["smooth_dr"]),
    (dict(weight=[1.0, 2.0, 3.0], include_background=False), ValueError,
     ["weight", "2 values", "(3,)"]),
    (dict(alpha=0.3), ValueError, ["alpha", "'tversky'", "loss='dice'"]),
    (dict(loss="jaccard", gamma=2.0), ValueError, ["gamma", "'tversky'"]),
    (dict(loss="tversky", beta=-1.0), ValueError, ["beta", "≥ 0"]),
    (dict(w_type="simple"), ValueError, ["w_type", "'generalized_dice'"]),
    (dict(loss="generalized_dice", w_type="cube"), ValueError, ["w_type", "cube"]),
    (dict(loss="generalized_dice", weight=[1.0, 1.0, 1.0]), ValueError, ["weight"]),
    (dict(loss="generalized_dice", ignore_empty=True), ValueError, ["ignore_empty"]),
])
def test_dice_from_stats_errors(kwargs, error, words):
    args = dict(stats=STATS)
    args.update(kwargs)
    with pytest.raises(error) as info:
        dice_from_stats(args.pop("stats"), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("fn,kwargs,error,words", [
    (dice_stats, dict(activation="relu"), ValueError, ["activation", "relu"]),
    (dice_stats, dict(squared_pred=1), TypeError, ["squared_pred"]),
    (dice_stats, dict(target=np.zeros((2, 4, 6), np.uint8)), ValueError,
     ["target", "(2, 4, 5)", "(2, 4, 6)"]),
    (dice_stats, dict(target=np.full((2, 4, 5), 3, np.uint8)), ValueError,
     ["target", "class index 3"]),
    (dice_stats, dict(input=np.zeros((2, 3))), ValueError, ["input", "(N, C, *spatial)"]),
    (dice_stats, dict(target=np.zeros((2, 3, 4, 5)), ignore_index=0), ValueError,
     ["ignore_index", "class-index"]),
    (dice_grad, dict(coef=np.zeros((2, 3))), ValueError, ["coef", "(2, 3, 2)", "(1, 3, 2)"]),
    (dice_grad, dict(coef=np.zeros((3, 3, 2))), ValueError, ["coef", "(3, 3, 2)"]),
    (dice_grad, dict(coef=np.zeros((2, 3, 2), np.int32)), TypeError, ["coef", "int32"]),
    (dice_grad, dict(activation="tanh"), ValueError, ["activation"]),
])
def test_stats_and_grad_errors(fn, kwargs, error, words):
    args = dict(input=X, target=Y)
    if fn is dice_grad:
        args["coef"] = np.zeros((1, 3, 2))
    args.update(kwargs)
    with pytest.raises(error) as info:
        fn(args.pop("input"), args.pop("target"), *(
            [args.pop("coef")] if fn is dice_grad else []), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.skipif(not available("cuda"), reason="the CUDA backend (or simulator) is absent")
def test_gpu_stats_and_coef_are_rejected():
    with pytest.raises(TypeError, match="stats: expected a host array"):
        dice_from_stats(to_device(STATS))
    with pytest.raises(TypeError, match="coef: expected a host array"):
        dice_grad(to_device(X), to_device(Y), to_device(np.zeros((1, 3, 2))))


# ---- torch.distributed --------------------------------------------------------------------

def _gloo():
    torch = pytest.importorskip("torch")
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")


@pytest.mark.timeout(180)
def test_ddp_example_two_processes():
    """examples/ddp_dice.py: each of two gloo ranks all-reduces (or gathers) its
    shard's sums and gets the global loss and its shard's gradient; the script
    checks them against the one-process loss of the whole batch."""
    _gloo()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(root / "examples" / "ddp_dice.py")],
                            env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 3, result.stdout
