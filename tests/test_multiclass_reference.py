"""The multi-class NumPy reference against PyTorch (float64 autograd) and finite differences.

Checks ``fastloss.reference``'s cross_entropy, nll_loss, softmax_focal_loss,
multi_margin_loss and multiclass_hinge_loss only -- no kernel is called here.
"""
import itertools
import zlib

import numpy as np
import pytest

from fastloss import reference as ref

RTOL = dict(rtol=1e-10, atol=1e-12)
C = 5
IGNORE = -100
SHAPES = {"2d": (6, C), "4d": (3, C, 3, 2), "1d": (C,)}
REDUCTIONS = ("none", "sum", "mean")
WEIGHT = np.array([0.5, 2.0, 1.0, 3.0, 0.25])


def _rng(*key):
    """A generator seeded from the test's parameters (crc32: stable across runs, unlike hash)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _logits(shape, rng):
    return rng.normal(scale=2.0, size=shape)


def _labels(shape, rng, ignore):
    """Index targets for an input of ``shape``; returns (target, ignore_index).

    ignore: "absent" (ignore_index=-100, not in the target), "present" (-100 in the
    target), "in_range" (ignore_index=1, a real class, present in the target).
    """
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = rng.integers(0, shape[0] if len(shape) == 1 else shape[1], size=tshape)
    y = np.asarray(y)
    flat = y.reshape(-1)
    if ignore == "present":
        flat[::3] = IGNORE
        return y, IGNORE
    if ignore == "in_range":
        flat[::2] = 1
        return y, 1
    return y, IGNORE


def _probs(shape, rng):
    t = rng.random(shape) + 0.05
    axis = 0 if len(shape) == 1 else 1
    return t / t.sum(axis=axis, keepdims=True)


def _torch_value_grad(fn, x, reduction):
    """fn(x_tensor) -> loss tensor; returns (value, d sum(value) / dx) as NumPy."""
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = fn(xt)
    out.sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


def _check(ref_fn, torch_fn, x, reduction, target_shape):
    val, grad = ref_fn(return_grad=True)
    assert np.asarray(val).dtype == np.float64 and grad.dtype == np.float64
    tval, tgrad = _torch_value_grad(torch_fn, x, reduction)
    if reduction == "none":
        assert np.shape(val) == target_shape
    else:
        assert np.ndim(val) == 0
    assert grad.shape == x.shape
    np.testing.assert_allclose(val, tval, **RTOL)
    np.testing.assert_allclose(grad, tgrad, **RTOL)
    # the value without return_grad is the same
    np.testing.assert_array_equal(ref_fn(return_grad=False), val)


def _target_shape(shape):
    return () if len(shape) == 1 else (shape[0],) + shape[2:]


# --------------------------------------------------------------------------- cross_entropy

@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore", ["absent", "present", "in_range"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_index_vs_torch(shape, smoothing, ignore, weighted, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng("ce", shape, smoothing, ignore, weighted, reduction)
    x = _logits(shape, rng)
    y, ii = _labels(shape, rng, ignore)
    w = WEIGHT if weighted else None
    wt = None if w is None else torch.tensor(w)
    _check(lambda **k: ref.cross_entropy(x, y, weight=w, ignore_index=ii,
                                         label_smoothing=smoothing, reduction=reduction, **k),
           lambda xt: F.cross_entropy(xt, torch.tensor(y), weight=wt, ignore_index=ii,
                                      label_smoothing=smoothing, reduction=reduction),
           x, reduction, _target_shape(shape))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities_vs_torch(shape, smoothing, weighted, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng("ce-prob", shape, smoothing, weighted, reduction)
    x = _logits(shape, rng)
    t = _probs(shape, rng)
    w = WEIGHT if weighted else None
    wt = None if w is None else torch.tensor(w)
    _check(lambda **k: ref.cross_entropy(x, t, weight=w, label_smoothing=smoothing,
                                         reduction=reduction, **k),
           lambda xt: F.cross_entropy(xt, torch.tensor(t), weight=wt,
                                      label_smoothing=smoothing, reduction=reduction),
           x, reduction, _target_shape(shape))


FN_SMOOTHING = [("cross_entropy", 0.0), ("cross_entropy", 0.2), ("nll_loss", 0.0)]


@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("fn,smoothing", FN_SMOOTHING)
def test_all_ignored_batch_mean_is_nan_with_zero_grad(fn, smoothing, weighted):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _logits((4, C), _rng("all-ignored"))
    y = np.full(4, IGNORE)
    w = WEIGHT if weighted else None
    kw = dict(label_smoothing=smoothing) if smoothing else {}
    val, grad = getattr(ref, fn)(x, y, weight=w, return_grad=True, **kw)
    tval, tgrad = _torch_value_grad(
        lambda xt: getattr(F, fn)(xt, torch.tensor(y), weight=None if w is None
                                  else torch.tensor(w), **kw), x, "mean")
    assert np.isnan(val) and np.isnan(tval)
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    np.testing.assert_array_equal(tgrad, np.zeros_like(x))
    # sum and none are plain zeros
    assert getattr(ref, fn)(x, y, weight=w, reduction="sum", **kw) == 0.0
    np.testing.assert_array_equal(getattr(ref, fn)(x, y, weight=w, reduction="none", **kw),
                                  np.zeros(4))


@pytest.mark.parametrize("fn,smoothing", FN_SMOOTHING)
def test_zero_weight_sum_mean_matches_torch(fn, smoothing):
    """Targets only of zero-weight classes (not ignored): the mean is nan (torch: nan even with
    smoothing, whose numerator is not 0); the gradient is nan exactly where torch's is."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _logits((4, C), _rng("zero-wsum"))
    y = np.array([0, IGNORE, 0, 0])
    w = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    kw = dict(label_smoothing=smoothing) if smoothing else {}
    val, grad = getattr(ref, fn)(x, y, weight=w, return_grad=True, **kw)
    tval, tgrad = _torch_value_grad(
        lambda xt: getattr(F, fn)(xt, torch.tensor(y), weight=torch.tensor(w), **kw), x, "mean")
    assert np.isnan(val) and np.isnan(tval)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(tgrad))
    np.testing.assert_array_equal(np.where(np.isnan(grad), 0, grad),
                                  np.where(np.isnan(tgrad), 0, tgrad))
    assert np.isnan(grad).any() and not np.isnan(grad[1]).any()


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_single_class(smoothing, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _logits((4, 1), _rng("c1"))
    y = np.array([0, 0, IGNORE, 0])
    _check(lambda **k: ref.cross_entropy(x, y, label_smoothing=smoothing, reduction=reduction,
                                         **k),
           lambda xt: F.cross_entropy(xt, torch.tensor(y), label_smoothing=smoothing,
                                      reduction=reduction), x, reduction, (4,))
    _check(lambda **k: ref.nll_loss(x, y, reduction=reduction, **k),
           lambda xt: F.nll_loss(xt, torch.tensor(y), reduction=reduction), x, reduction, (4,))
    _check(lambda **k: ref.multi_margin_loss(x, np.zeros(4, int), reduction=reduction, **k),
           lambda xt: F.multi_margin_loss(xt, torch.zeros(4, dtype=torch.long),
                                          reduction=reduction), x, reduction, (4,))
    v, g = ref.multiclass_hinge_loss(x, np.zeros(4, int), reduction=reduction, return_grad=True)
    np.testing.assert_array_equal(v, np.zeros(4) if reduction == "none" else 0.0)
    np.testing.assert_array_equal(g, np.zeros_like(x))


# ------------------------------------------------------------------------------- z_loss

@pytest.mark.parametrize("shape", [SHAPES["2d"], SHAPES["4d"]], ids=["2d", "4d"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_vs_direct_torch_formula(shape, kind, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng("z", shape, kind, reduction)
    x = _logits(shape, rng) + 3.0          # lse well away from 0
    z, eps = 0.3, 0.1
    if kind == "index":
        y, ii = _labels(shape, rng, "present")
        t = torch.tensor(y)
        valid = t != ii
        denom = torch.tensor(WEIGHT)[torch.where(valid, t, 0)][valid].sum()
    else:
        y, ii = _probs(shape, rng), IGNORE
        t = torch.tensor(y)
        valid = torch.ones(_target_shape(shape), dtype=torch.bool)
        denom = valid.sum()

    def direct(xt):
        ce = F.cross_entropy(xt, t, weight=torch.tensor(WEIGHT), ignore_index=ii,
                             label_smoothing=eps, reduction="none")
        rows = ce + torch.where(valid, z * torch.logsumexp(xt, dim=1) ** 2, 0.0)
        return {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denom}[reduction]

    _check(lambda **k: ref.cross_entropy(x, y, weight=WEIGHT, ignore_index=ii,
                                         label_smoothing=eps, z_loss=z, reduction=reduction,
                                         **k),
           direct, x, reduction, _target_shape(shape))
    # and z_loss really changed something
    assert not np.allclose(ref.cross_entropy(x, y, weight=WEIGHT, ignore_index=ii,
                                             label_smoothing=eps, reduction="sum"),
                           ref.cross_entropy(x, y, weight=WEIGHT, ignore_index=ii,
                                             label_smoothing=eps, z_loss=z, reduction="sum"))


# ------------------------------------------------------------------------------ nll_loss

@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("ignore", ["absent", "present", "in_range"])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_vs_torch(shape, ignore, weighted, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng("nll", shape, ignore, weighted, reduction)
    x = _logits(shape, rng)                # nll_loss does not need normalised input
    y, ii = _labels(shape, rng, ignore)
    w = WEIGHT if weighted else None
    wt = None if w is None else torch.tensor(w)
    _check(lambda **k: ref.nll_loss(x, y, weight=w, ignore_index=ii, reduction=reduction, **k),
           lambda xt: F.nll_loss(xt, torch.tensor(y), weight=wt, ignore_index=ii,
                                 reduction=reduction),
           x, reduction, _target_shape(shape))


# ------------------------------------------------------------------------ softmax focal

def _torch_focal(xt, y, alpha, gamma, weight, ignore_index, reduction):
    import torch
    t = torch.tensor(y)
    valid = t != ignore_index
    ys = torch.where(valid, t, 0)
    logpt = torch.log_softmax(xt, dim=1).gather(1, ys.unsqueeze(1)).squeeze(1)
    pt = logpt.exp()
    if alpha is None:
        a = torch.ones_like(logpt)
    elif np.ndim(alpha) == 0:
        a = torch.full_like(logpt, float(alpha))
    else:
        a = torch.tensor(alpha)[ys]
    if weight is not None:
        a = a * torch.tensor(weight)[ys]
    loss = torch.where(valid, -a * (1 - pt) ** gamma * logpt, 0.0)
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / valid.sum()}[reduction]


ALPHAS = {"alpha=None": None, "alpha=0.25": 0.25,
          "alpha=array": np.array([0.1, 0.2, 0.3, 0.4, 0.5])}


@pytest.mark.parametrize("shape", [SHAPES["2d"], SHAPES["4d"]], ids=["2d", "4d"])
@pytest.mark.parametrize("alpha", ALPHAS.values(), ids=ALPHAS.keys())
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("ignore", ["absent", "present"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_softmax_focal_vs_torch(shape, alpha, gamma, weighted, ignore, reduction):
    pytest.importorskip("torch")
    rng = _rng("focal", shape, gamma, weighted, ignore, reduction, np.ndim(alpha))
    x = _logits(shape, rng)
    y, ii = _labels(shape, rng, ignore)
    w = WEIGHT if weighted else None
    _check(lambda **k: ref.softmax_focal_loss(x, y, alpha=alpha, gamma=gamma, weight=w,
                                              ignore_index=ii, reduction=reduction, **k),
           lambda xt: _torch_focal(xt, y, alpha, gamma, w, ii, reduction),
           x, reduction, _target_shape(shape))


def test_softmax_focal_gamma0_is_weighted_cross_entropy_summed():
    x = _logits((6, C), _rng("focal-ce"))
    y, _ = _labels((6, C), _rng("focal-ce-y"), "present")
    a = ref.softmax_focal_loss(x, y, gamma=0.0, weight=WEIGHT, reduction="none",
                               return_grad=True)
    b = ref.cross_entropy(x, y, weight=WEIGHT, reduction="none", return_grad=True)
    np.testing.assert_allclose(a[0], b[0], **RTOL)
    np.testing.assert_allclose(a[1], b[1], **RTOL)
    # but the mean divides by the row count, not the weight sum
    valid = (y != IGNORE).sum()
    np.testing.assert_allclose(ref.softmax_focal_loss(x, y, gamma=0.0, weight=WEIGHT),
                               a[0].sum() / valid, **RTOL)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_softmax_focal_saturated_logits_are_finite(gamma):
    big = 1e4
    x = np.array([[big, -big, 0.0],      # saturated correct: p_y = 1, u = 0
                  [-big, big, 0.0],      # saturated wrong: log p_y = -2e4
                  [big, big, -big]])     # tie: p_y = 1/2
    y = np.array([0, 0, 0])
    val, grad = ref.softmax_focal_loss(x, y, gamma=gamma, reduction="none", return_grad=True)
    assert np.all(np.isfinite(val)) and np.all(np.isfinite(grad))
    # saturated correct row: loss 0; gradient 0 for gamma > 0, (p - onehot) = 0 for gamma 0
    assert val[0] == 0.0
    np.testing.assert_array_equal(grad[0], np.zeros(3))
    # saturated wrong row: u = 1, loss = 2e4, gradient p - onehot = (-1, 1, 0)
    np.testing.assert_allclose(val[1], 2 * big, rtol=1e-15)
    np.testing.assert_allclose(grad[1], [-1.0, 1.0, 0.0], rtol=1e-15, atol=0)
    # tie row: u = 1/2, L = -log 2; d/dx = u^g (1 + g p_y (-L/u)) (p - onehot)
    F = 0.5 ** gamma * (1 + gamma * 0.5 * np.log(2.0) / 0.5)
    np.testing.assert_allclose(val[2], 0.5 ** gamma * np.log(2.0), rtol=1e-11)  # ulp(1e4)
    np.testing.assert_allclose(grad[2], F * np.array([-0.5, 0.5, 0.0]), rtol=1e-11)
    # and the all-reduced forms agree with the rows
    np.testing.assert_allclose(ref.softmax_focal_loss(x, y, gamma=gamma), val.mean(), rtol=1e-15)


def test_softmax_focal_all_ignored():
    x = _logits((3, C), _rng("focal-ign"))
    y = np.full(3, IGNORE)
    val, grad = ref.softmax_focal_loss(x, y, gamma=0.5, alpha=0.25, return_grad=True)
    assert np.isnan(val)
    np.testing.assert_array_equal(grad, np.zeros_like(x))


# ------------------------------------------------------------------- multi margin / hinge

@pytest.mark.parametrize("shape", [SHAPES["2d"], SHAPES["1d"]], ids=["2d", "1d"])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.5])
@pytest.mark.parametrize("weighted", [False, True], ids=["w=None", "w=array"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_margin_vs_torch(shape, p, margin, weighted, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng("mm", shape, p, margin, weighted, reduction)
    x = rng.normal(scale=0.7, size=shape)  # mix of active and inactive hinges
    y, _ = _labels(shape, rng, "absent")
    w = WEIGHT if weighted else None
    wt = None if w is None else torch.tensor(w)
    _check(lambda **k: ref.multi_margin_loss(x, y, p=p, margin=margin, weight=w,
                                             reduction=reduction, **k),
           lambda xt: F.multi_margin_loss(xt, torch.tensor(y), p=p, margin=margin, weight=wt,
                                          reduction=reduction),
           x, reduction, _target_shape(shape))


@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_zero_hinge_has_zero_subgradient(p):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.array([[1.0, 0.0, 0.5, -2.0]])   # class 1: margin - x_y + x_c == 0 exactly
    y = np.array([0])
    val, grad = ref.multi_margin_loss(x, y, p=p, reduction="none", return_grad=True)
    tval, tgrad = _torch_value_grad(
        lambda xt: F.multi_margin_loss(xt, torch.tensor(y), p=p, reduction="none"), x, "none")
    np.testing.assert_allclose(val, tval, **RTOL)
    np.testing.assert_allclose(grad, tgrad, **RTOL)
    assert grad[0, 1] == 0.0 and grad[0, 2] > 0.0


def _optax_hinge(xt, y, margin, reduction):
    import torch
    onehot = torch.nn.functional.one_hot(torch.tensor(y), xt.shape[-1]).to(xt.dtype)
    rows = (xt + margin * (1 - onehot)).max(dim=-1).values - (xt * onehot).sum(-1)
    return {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]


@pytest.mark.parametrize("shape", [SHAPES["2d"], SHAPES["1d"]], ids=["2d", "1d"])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multiclass_hinge_vs_optax_formula(shape, margin, reduction):
    pytest.importorskip("torch")
    rng = _rng("cs", shape, margin, reduction)
    x = rng.normal(size=shape)             # no ties: torch's max picks the unique argmax
    y, _ = _labels(shape, rng, "absent")
    _check(lambda **k: ref.multiclass_hinge_loss(x, y, margin=margin, reduction=reduction, **k),
           lambda xt: _optax_hinge(xt, y, margin, reduction),
           x, reduction, _target_shape(shape))


def test_multiclass_hinge_ties():
    x = np.array([[0.0, 2.0, 2.0, 1.0],    # two maxima among c != y: the first one (1) gets +1
                  [2.0, 2.0, 0.0, 1.0],    # y = 3: maxima 0 and 1, the first (0)
                  [1.0, 0.0, -1.0, -3.0],  # h = margin + 0 - 1 = 0 exactly: no gradient
                  [0.5, 3.0, 1.0, 0.0]])   # y = 1, h = 1 + 1 - 3 < 0
    y = np.array([0, 3, 0, 1])
    val, grad = ref.multiclass_hinge_loss(x, y, reduction="none", return_grad=True)
    np.testing.assert_array_equal(val, [3.0, 2.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad, [[-1, 1, 0, 0], [1, 0, 0, -1], [0] * 4, [0] * 4])


# --------------------------------------------------------- 1-D inputs and finite differences

LOSSES = {
    "ce": lambda x, y, **k: ref.cross_entropy(x, y, weight=WEIGHT, label_smoothing=0.2,
                                              z_loss=0.1, ignore_index=IGNORE, **k),
    "nll": lambda x, y, **k: ref.nll_loss(x, y, weight=WEIGHT, **k),
    "focal": lambda x, y, **k: ref.softmax_focal_loss(x, y, alpha=np.arange(1.0, 6.0),
                                                      gamma=0.5, weight=WEIGHT, **k),
    "focal2": lambda x, y, **k: ref.softmax_focal_loss(x, y, alpha=0.25, gamma=2.0, **k),
    "mm1": lambda x, y, **k: ref.multi_margin_loss(x, y, p=1, margin=0.8, weight=WEIGHT, **k),
    "mm2": lambda x, y, **k: ref.multi_margin_loss(x, y, p=2, weight=WEIGHT, **k),
    "cs": lambda x, y, **k: ref.multiclass_hinge_loss(x, y, margin=1.5, **k),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_dimensional_input_is_a_single_row(name, reduction):
    rng = _rng("1d", name, reduction)
    x = _logits((C,), rng)
    y = np.array(3)
    fn = LOSSES[name]
    val, grad = fn(x, y, reduction=reduction, return_grad=True)
    val2, grad2 = fn(x[None], y[None], reduction=reduction, return_grad=True)
    assert np.shape(val) == () and grad.shape == (C,)
    np.testing.assert_array_equal(val, val2[0] if reduction == "none" else val2)
    np.testing.assert_array_equal(grad, grad2[0])


def test_cross_entropy_probabilities_1d_is_a_single_row():
    rng = _rng("1d-prob")
    x, t = _logits((C,), rng), _probs((C,), rng)
    for reduction in REDUCTIONS:
        val, grad = ref.cross_entropy(x, t, weight=WEIGHT, label_smoothing=0.2, z_loss=0.1,
                                      reduction=reduction, return_grad=True)
        val2, grad2 = ref.cross_entropy(x[None], t[None], weight=WEIGHT, label_smoothing=0.2,
                                        z_loss=0.1, reduction=reduction, return_grad=True)
        np.testing.assert_array_equal(val, val2[0] if reduction == "none" else val2)
        np.testing.assert_array_equal(grad, grad2[0])


def _central_differences(f, x, h=1e-6):
    g = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (np.sum(f(xp)) - np.sum(f(xm))) / (2 * h)
    return g


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_vs_finite_differences(name, reduction):
    rng = _rng("fd", name, reduction)
    x = rng.normal(size=(4, C))
    y = np.array([1, 4, 0, 2])
    if name in ("ce", "nll", "focal", "focal2"):
        y[2] = IGNORE
    fn = LOSSES[name]
    _, grad = fn(x, y, reduction=reduction, return_grad=True)
    fd = _central_differences(lambda v: fn(v, y, reduction=reduction), x)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 1e-3      # not a vacuous all-zero comparison


@pytest.mark.parametrize("smoothing,z", [(0.0, 0.0), (0.2, 0.3)])
def test_cross_entropy_probabilities_gradient_vs_finite_differences(smoothing, z):
    rng = _rng("fd-prob", smoothing, z)
    x = rng.normal(size=(2, C, 2))
    t = _probs(x.shape, rng)
    f = lambda v, **k: ref.cross_entropy(v, t, weight=WEIGHT, label_smoothing=smoothing,  # noqa
                                         z_loss=z, **k)
    _, grad = f(x, return_grad=True)
    np.testing.assert_allclose(grad, _central_differences(f, x), rtol=1e-6, atol=1e-8)


def test_focal_gradient_near_saturation_vs_finite_differences():
    """Large-but-finite margins: u = 1 - p_y tiny, where u^(gamma-1) alone would blow up."""
    x = np.array([[9.0, 0.0, -1.0], [0.0, 7.0, 1.0]])
    y = np.array([0, 1])
    for gamma in (0.5, 2.0):
        f = lambda v, **k: ref.softmax_focal_loss(v, y, gamma=gamma, reduction="sum", **k)  # noqa
        _, grad = f(x, return_grad=True)
        fd = _central_differences(f, x, h=1e-5)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_reference_names_exported():
    for name in ("cross_entropy", "nll_loss", "softmax_focal_loss", "multi_margin_loss",
                 "multiclass_hinge_loss"):
        assert name in ref.__all__ and callable(getattr(ref, name))
    # the elementwise part is untouched
    assert {"mse_loss", "hinge_loss", "sigmoid_focal_loss"} <= set(ref.__all__)


def test_label_combinations_cover_ignored_rows():
    """Sanity of the helpers above: 'present' really puts ignored labels in every shape."""
    for shape, ignore in itertools.product(SHAPES.values(), ["present", "in_range"]):
        y, ii = _labels(shape, _rng("lab", shape, ignore), ignore)
        assert (y == ii).any()
