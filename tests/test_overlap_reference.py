"""The overlap (Dice-family) NumPy reference against MONAI 1.6.1 and finite differences.

Checks ``fastloss.reference``'s dice_loss, jaccard_loss, tversky_loss and
generalized_dice_loss only -- no kernel is called here.  MONAI runs in float64 under
torch autograd; the MONAI tests skip where torch or MONAI is missing, the finite-difference
and edge-case tests need NumPy only.

What MONAI lacks is composed from its ``reduction="none"`` output in torch: per-class
weights for Tversky, the focal exponent gamma, ignore_empty, and ignore_index for the
generalised Dice (there the activated input and one-hot target are masked in torch, as
MONAI's DiceLoss does internally, and passed without activation).
"""
import itertools
import warnings
import zlib

import numpy as np
import pytest

from fastloss import reference as ref

TIGHT = dict(rtol=1e-10, atol=1e-12)
GDL_TOL = dict(rtol=1e-6, atol=1e-9)        # MONAI's GDL weights come from a float32 T
FD_TOL = dict(rtol=1e-6, atol=1e-8)
SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}
SENTINEL = 255
NAMES = ("dice", "jaccard", "tversky", "generalized_dice")


def _fn(name):
    return getattr(ref, name + "_loss")


def _rng(*key):
    """A generator seeded from the test's parameters (crc32: stable across runs, unlike hash)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _monai():
    pytest.importorskip("torch")
    return pytest.importorskip("monai.losses")


# ------------------------------------------------------------------------------ test data

def _data(C, dims, activation, target, ignore, empty, rng):
    """(input, target, ignore_index) for an input (2, C, *SPATIAL[dims]).

    target: "index" (N, *spatial), "index1" (N, 1, *spatial), "mask" (a hard one-hot
    mask, bool / uint8 / float32 / float64) or "soft" (floats in [0, 1]).  ignore: None,
    "sentinel" (255 at about a fifth of the voxels) or "class" (a real class, 0 for C <= 2
    and 2 for C = 5).  empty: class C - 1 (the foreground for C = 1) absent from sample 0.
    """
    shape = (2, C) + SPATIAL[dims]
    if activation is None:
        x = rng.uniform(0.02, 0.98, size=shape)
    else:
        x = rng.normal(scale=1.5, size=shape)
    y = rng.integers(0, max(C, 2), size=(2,) + SPATIAL[dims])
    e = max(C - 1, 1)
    if empty:
        y[0][y[0] == e] = 0
    if target == "soft":
        t = rng.uniform(0.0, 1.0, size=shape)
        if empty:
            t[0, C - 1] = 0.0
        return x, t, None
    if target == "mask":
        t = (y[:, None] == np.arange(C).reshape((1, C) + (1,) * dims)) if C > 1 else y[:, None]
        dtype = [np.bool_, np.uint8, np.float32, np.float64][rng.integers(4)]
        return x, t.astype(dtype), None
    ii = None
    if ignore == "sentinel":
        ii = SENTINEL
        y[rng.random(y.shape) < 0.2] = SENTINEL
    elif ignore == "class":
        ii = 0 if C <= 2 else 2
    y = y.astype([np.int64, np.int32, np.uint8, np.int16][rng.integers(4)])
    if target == "index1":
        y = y[:, None]
    return x, y, ii


def _dense(x, target, ii):
    """Test-side one-hot float64 target and valid mask (N, 1, ...), both plain NumPy."""
    C = x.shape[1]
    y = np.asarray(target)
    if y.shape == x.shape:
        return y.astype(np.float64), np.ones((x.shape[0], 1) + x.shape[2:])
    y = (y if y.ndim == x.ndim else y[:, None]).astype(np.int64)
    valid = np.ones(y.shape) if ii is None else (y != ii).astype(np.float64)
    if C == 1:
        return (y == 1).astype(np.float64), valid
    onehot = np.stack([(y[:, 0] == c) for c in range(C)], axis=1).astype(np.float64)
    return onehot, valid


def _scored_T(x, target, ii, include_background, batch, q=1):
    t, m = _dense(x, target, ii)
    if not include_background and x.shape[1] > 1:
        t = t[:, 1:]
    axes = tuple(range(2, x.ndim))
    T = np.sum(m * t ** q, axis=((0,) + axes) if batch else axes)
    return T


# ------------------------------------------------------------------- MONAI side

def _monai_target(x, target, ii, squared_pred=False):
    """(target tensor, to_onehot_y) for MONAI.  Index targets go in as (N, 1, ...) labels
    with to_onehot_y, except: C == 1 (MONAI ignores to_onehot_y; the labels are the
    foreground mask, ignored voxels become 0 through its mask), and squared_pred (MONAI's
    one_hot is float32 and its vector_norm of it gives T = ||t||^2 rounded in float32, so
    there a float64 one-hot goes in, with sentinel voxels all-zero: MONAI's one-hot ignore
    path masks exactly those, and for a class index the voxels of that class)."""
    import torch
    C = x.shape[1]
    y = np.asarray(target)
    if y.shape == x.shape:
        return torch.tensor(y.astype(np.float64)), False
    y = (y if y.ndim == x.ndim else y[:, None]).astype(np.int64)
    if C == 1:
        return torch.tensor(y.astype(np.float64)), False
    if squared_pred:
        onehot, valid = _dense(x, target, None)
        if ii is not None and not 0 <= ii < C:
            onehot = onehot * valid * (y != ii)
        return torch.tensor(onehot), False
    return torch.tensor(y), True


def _post(f, weight=None, gamma=1.0, keep=None, reduction="mean"):
    """MONAI's per-entry output -> weight, focal exponent, ignore_empty, reduction (torch)."""
    import torch
    if gamma != 1.0:                 # max(f, 0)^gamma, gradient 0 where f <= 0 (also at 0)
        pos = f > 0
        f = torch.where(pos, torch.where(pos, f, torch.ones_like(f)) ** gamma,
                        torch.zeros_like(f))
    if weight is not None:
        f = f * torch.as_tensor(np.broadcast_to(weight, (f.shape[-1],)).astype(np.float64))
    count = f.numel()
    if keep is not None:
        kt = torch.tensor(keep)
        f = torch.where(kt, f, torch.zeros_like(f))
        count = int(keep.sum())
    if reduction == "none":
        return f
    if reduction == "sum":
        return f.sum()
    return f.sum() / count if count else f.sum() * 0.0


def _monai_value_grad(name, x, target, ii, *, activation=None, include_background=True,
                      squared_pred=False, batch=False, weight=None, ignore_empty=False,
                      reduction="mean", alpha=0.5, beta=0.5, gamma=1.0, w_type="square",
                      smooth_nr=1e-5, smooth_dr=1e-5):
    """MONAI's loss (composed as the module docstring says) and d sum(loss) / d input."""
    import torch
    losses = _monai()
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tgt, onehot_y = _monai_target(x, target, ii, squared_pred and name in ("dice", "jaccard"))
    index = np.asarray(target).shape != x.shape
    ii = ii if index else None
    act = dict(softmax=activation == "softmax", sigmoid=activation == "sigmoid")
    common = dict(include_background=include_background, reduction="none",
                  smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch)
    keep = None
    if ignore_empty:
        keep = _scored_T(x, target, ii, include_background, batch,
                         2 if squared_pred else 1) != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in ("dice", "jaccard"):
            plain = not ignore_empty
            common["reduction"] = reduction if plain else "none"
            loss = losses.DiceLoss(to_onehot_y=onehot_y, squared_pred=squared_pred,
                                   jaccard=name == "jaccard", weight=weight, ignore_index=ii,
                                   **act, **common)(xt, tgt)
            if not plain:
                n_scored = loss.shape[0] if batch else loss.shape[1]
                loss = loss.reshape((n_scored,) if batch else (x.shape[0], n_scored))
                loss = _post(loss, keep=keep, reduction=reduction)
        elif name == "tversky":
            plain = weight is None and gamma == 1.0 and not ignore_empty
            common["reduction"] = reduction if plain else "none"
            loss = losses.TverskyLoss(to_onehot_y=onehot_y, alpha=alpha, beta=beta,
                                      ignore_index=ii, **act, **common)(xt, tgt)
            if not plain:
                loss = _post(loss, weight, gamma, keep, reduction)
        else:
            common["reduction"] = reduction
            gdl = losses.GeneralizedDiceLoss
            if ii is None:
                loss = gdl(to_onehot_y=onehot_y, w_type=w_type, **act, **common)(xt, tgt)
            else:                                   # MONAI's GDL has no ignore_index
                p = {"softmax": lambda v: torch.softmax(v, 1), "sigmoid": torch.sigmoid,
                     None: lambda v: v}[activation](xt)
                t, m = _dense(x, target, ii)
                t, m = torch.tensor(t), torch.tensor(m)
                loss = gdl(w_type=w_type, **common)(p * m, t * m)
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


# ------------------------------------------------------------ the grid against MONAI
#
# Per loss: every combination of activation x C x target kind x batch (less the ones MONAI
# lacks: softmax with C = 1, an (N, 1, ...) index target with C = 1), and the remaining
# options chosen greedily from seeded random candidates to cover as many value pairs as
# possible (a cheap pairwise design: a few hundred cases in all).

MAIN = dict(activation=("softmax", "sigmoid", None), C=(1, 2, 5),
            target=("index", "index1", "mask", "soft"), batch=(False, True))
COMMON = dict(include_background=(True, False), reduction=("mean", "sum", "none"),
              ignore=(None, "sentinel", "class"), empty=(False, True), dims=(1, 2, 3))
SECONDARY = {
    "dice": dict(COMMON, squared_pred=(False, True), weight=("none", "scalar", "array"),
                 ignore_empty=(False, True)),
    "tversky": dict(COMMON, ab=((0.5, 0.5), (0.3, 0.7), (0.9, 0.2)), gamma=(1.0, 0.75, 2.0),
                    weight=("none", "scalar", "array"), ignore_empty=(False, True)),
    "generalized_dice": dict(COMMON, w_type=("square", "simple", "uniform")),
}
SECONDARY["jaccard"] = SECONDARY["dice"]


def _n_scored(c):
    return c["C"] - 1 if (c["C"] > 1 and not c["include_background"]) else c["C"]


def _valid(c):
    if c["activation"] == "softmax" and c["C"] == 1:
        return False                               # MONAI ignores softmax there; we raise
    if c["target"] == "index1" and c["C"] == 1:
        return False                               # (N, 1, ...) is then a mask
    if c["target"] in ("mask", "soft") and c["ignore"] is not None:
        return False                               # ignore_index is for index targets
    if c.get("weight", "none") != "none" and _n_scored(c) == 1:
        return False                               # MONAI drops the weight (own test below)
    return True


def _cases(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    sec = SECONDARY[name]
    keys = list(MAIN) + list(sec)
    covered = set()
    out = []
    for main in itertools.product(*MAIN.values()):
        base = dict(zip(MAIN, main))
        best, best_gain = None, -1
        for _ in range(60):
            c = dict(base, **{k: v[rng.integers(len(v))] for k, v in sec.items()})
            if not _valid(c):
                continue
            pairs = {((a, repr(c[a])), (b, repr(c[b]))) for a, b in itertools.combinations(keys, 2)}
            gain = len(pairs - covered)
            if gain > best_gain:
                best, best_gain, best_pairs = c, gain, pairs
        if best is None:
            continue                               # an invalid main combination
        covered |= best_pairs
        out.append(best)
    return out


def _case_id(c):
    short = {"activation": "act", "include_background": "bg", "reduction": "",
             "squared_pred": "sq", "ignore_empty": "ie", "target": ""}
    return "-".join(f"{short.get(k, k)}{'=' if short.get(k, k) else ''}{v}"
                    for k, v in c.items())


GRID = [pytest.param(name, c, id=f"{name}-{i}-{_case_id(c)}")
        for name in NAMES for i, c in enumerate(_cases(name))]


def _weight_value(c):
    return {"none": None, "scalar": 1.5,
            "array": np.array([0.5, 2.0, 1.0, 3.0, 0.25])[:_n_scored(c)]}[c.get("weight", "none")]


def _options(name, c):
    """Keyword arguments shared by the reference and _monai_value_grad (minus ignore_index)."""
    kw = dict(activation=c["activation"], include_background=c["include_background"],
              batch=c["batch"], reduction=c["reduction"])
    if name in ("dice", "jaccard"):
        kw.update(squared_pred=c["squared_pred"], weight=_weight_value(c),
                  ignore_empty=c["ignore_empty"])
    elif name == "tversky":
        kw.update(alpha=c["ab"][0], beta=c["ab"][1], gamma=c["gamma"], weight=_weight_value(c),
                  ignore_empty=c["ignore_empty"])
    else:
        kw.update(w_type=c["w_type"])
    return kw


def _expected_shape(name, c, N=2):
    if c["reduction"] != "none":
        return ()
    if name == "generalized_dice":
        return (1,) if c["batch"] else (N,)
    return (_n_scored(c),) if c["batch"] else (N, _n_scored(c))


@pytest.mark.parametrize("name,case", GRID)
def test_vs_monai(name, case):
    _monai()
    rng = _rng(name, sorted(case.items(), key=str))
    x, target, ii = _data(case["C"], case["dims"], case["activation"], case["target"],
                          case["ignore"], case["empty"], rng)
    x0, t0 = x.copy(), np.array(target, copy=True)
    kw = _options(name, case)
    val, grad = _fn(name)(x, target, ignore_index=ii, return_grad=True, **kw)
    np.testing.assert_array_equal(x, x0)                       # inputs untouched
    np.testing.assert_array_equal(target, t0)
    assert np.asarray(val).dtype == np.float64 and grad.dtype == np.float64
    assert np.shape(val) == _expected_shape(name, case)
    assert grad.shape == x.shape
    mval, mgrad = _monai_value_grad(name, x, target, ii, **kw)
    tol = TIGHT if (name != "generalized_dice" or case["w_type"] == "uniform") else GDL_TOL
    np.testing.assert_allclose(val, mval.reshape(np.shape(val)), **tol)
    np.testing.assert_allclose(grad, mgrad, **tol)
    np.testing.assert_array_equal(_fn(name)(x, target, ignore_index=ii, **kw), val)


def test_grid_covers_every_value_and_key_pairs():
    """The greedy design really contains every option value, per loss, and the pairs that
    matter most (e.g. softmax with background dropped and a class ignored)."""
    for name in NAMES:
        cases = [c for n, c, in (p.values for p in GRID) if n == name]
        for key, values in dict(MAIN, **SECONDARY[name]).items():
            for v in values:
                assert any(c[key] == v for c in cases), (name, key, v)
        want = [dict(activation="softmax", include_background=False, ignore="class"),
                dict(batch=True, empty=True), dict(ignore="sentinel", include_background=False),
                dict(C=1, target="index", ignore="sentinel")]
        if name != "generalized_dice":
            want += [dict(batch=True, ignore_empty=True, empty=True), dict(C=5, weight="array")]
        for w in want:
            assert any(all(c[k] == v for k, v in w.items()) for c in cases), (name, w)


# ---------------------------------------------------------- targeted MONAI comparisons

@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
@pytest.mark.parametrize("C,include_background", [(1, True), (2, False)])
def test_weight_with_one_scored_class_departs_from_monai(name, C, include_background):
    """MONAI applies weight only when more than one class is scored; the reference always
    does, so there it is weight x MONAI's unweighted value."""
    torch = pytest.importorskip("torch")
    losses = _monai()
    rng = _rng("w1", name, C)
    x, y, _ = _data(C, 2, "sigmoid", "index", None, False, rng)
    val = _fn(name)(x, y, activation="sigmoid", include_background=include_background,
                    weight=2.5, reduction="sum")
    tgt, onehot_y = _monai_target(x, y, None)
    cls = losses.TverskyLoss if name == "tversky" else losses.DiceLoss
    kw = {} if name == "tversky" else dict(weight=2.5, jaccard=name == "jaccard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls(sigmoid=True, to_onehot_y=onehot_y, include_background=include_background,
                reduction="sum", **kw)(torch.tensor(x), tgt)
    np.testing.assert_allclose(val, 2.5 * m.item(), **TIGHT)


@pytest.mark.parametrize("name", ["dice", "jaccard"])
def test_squared_pred_with_monai_one_hot_is_float32_close(name):
    """MONAI's to_onehot_y path under squared_pred: T = ||t||^2 from a float32 one-hot (the
    reason the grid passes a float64 one-hot there) -- agrees to float32 precision only."""
    torch = pytest.importorskip("torch")
    losses = _monai()
    x, y, ii = _data(5, 2, "softmax", "index", "sentinel", False, _rng("sq32", name))
    xt = torch.tensor(x, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True,
                               jaccard=name == "jaccard", ignore_index=ii)(
            xt, torch.tensor(y.astype(np.int64))[:, None])
    loss.backward()
    val, grad = _fn(name)(x, y, activation="softmax", squared_pred=True, ignore_index=ii,
                          return_grad=True)
    np.testing.assert_allclose(val, loss.item(), rtol=1e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ii", [-1, 5, 7])
def test_other_sentinels_vs_monai(name, ii):
    """A negative sentinel, and sentinels just past / well past the classes."""
    _monai()
    rng = _rng("sent", name, ii)
    x, y, _ = _data(5, 2, "softmax", "index", None, False, rng)
    y = y.astype(np.int64)
    y[rng.random(y.shape) < 0.25] = ii
    kw = dict(activation="softmax", include_background=False, reduction="none")
    val, grad = _fn(name)(x, y, ignore_index=ii, return_grad=True, **kw)
    mval, mgrad = _monai_value_grad(name, x, y, ii, **kw)
    tol = TIGHT if name != "generalized_dice" else GDL_TOL
    np.testing.assert_allclose(val, mval.reshape(val.shape), **tol)
    np.testing.assert_allclose(grad, mgrad, **tol)


@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_generalized_dice_empty_class_vs_monai(w_type, batch, include_background):
    """Class 3 is absent from the whole batch, class 1 from sample 0 only: their infinite
    weights become the largest finite weight of the sample (of the batch with batch=True)."""
    _monai()
    rng = _rng("gdl-empty", w_type, batch, include_background)
    x = rng.normal(size=(2, 4, 5, 6))
    y = rng.integers(0, 3, size=(2, 5, 6))
    y[0][y[0] == 1] = 2
    for reduction in ("none", "mean"):
        kw = dict(activation="softmax", w_type=w_type, batch=batch,
                  include_background=include_background, reduction=reduction)
        val, grad = ref.generalized_dice_loss(x, y, return_grad=True, **kw)
        mval, mgrad = _monai_value_grad("generalized_dice", x, y, None, **kw)
        np.testing.assert_allclose(val, mval.reshape(np.shape(val)), **GDL_TOL)
        np.testing.assert_allclose(grad, mgrad, **GDL_TOL)


def test_generalized_dice_empty_class_weight_is_sample_max():
    """The rule written out: sample 0 has T = (4, 0, 2) -> w = (1/16, 1/4, 1/4), its own max
    (not sample 1's: T = (1, 3, 2), w = (1, 1/9, 1/4)); with batch, T = (5, 3, 4), no inf."""
    rng = _rng("gdl-max")
    p = rng.uniform(0.05, 0.95, size=(2, 3, 1, 6))
    y = np.array([[[0, 0, 2, 0, 2, 0]], [[1, 0, 1, 1, 2, 2]]])
    t = np.stack([(y == c) for c in range(3)], axis=1).astype(float)
    I, S = (p * t).sum(axis=(2, 3)), (p + t).sum(axis=(2, 3))
    w = np.array([[1 / 16, 1 / 4, 1 / 4], [1, 1 / 9, 1 / 4]])
    expect = 1 - (2 * (w * I).sum(1) + 1e-5) / ((w * S).sum(1) + 1e-5)
    np.testing.assert_allclose(ref.generalized_dice_loss(p, y, reduction="none"), expect,
                               rtol=1e-14)
    wb = 1 / np.array([5.0, 3.0, 4.0]) ** 2
    expect_b = 1 - (2 * (wb * I.sum(0)).sum() + 1e-5) / ((wb * S.sum(0)).sum() + 1e-5)
    np.testing.assert_allclose(ref.generalized_dice_loss(p, y, batch=True, reduction="none"),
                               [expect_b], rtol=1e-14)


# ------------------------------------------------------------------ finite differences

def _central_differences(f, x, h=1e-6):
    g = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (np.sum(f(xp)) - np.sum(f(xm))) / (2 * h)
    return g


FD_CASES = {
    "plain": dict(),
    "no-bg": dict(include_background=False),
    "batch": dict(batch=True),
    "sentinel": dict(ignore="sentinel", include_background=False),
    "class": dict(ignore="class", C=3),
    "C1-labels": dict(C=1, activation="sigmoid", ignore="sentinel"),
    "C1-mask": dict(C=1, activation="sigmoid", target="mask"),
    "soft": dict(target="soft", activation="sigmoid"),
    "probs": dict(activation=None, target="mask"),
    "empty": dict(empty=True, batch=True),
    "3d": dict(dims=3, C=2, activation="sigmoid"),
}
FD_LOSS_OPTIONS = {
    "dice": [dict(), dict(squared_pred=True, weight=0.5),
             dict(ignore_empty=True, weight=2.0)],
    "jaccard": [dict(), dict(squared_pred=True), dict(ignore_empty=True)],
    "tversky": [dict(alpha=0.3, beta=0.7), dict(alpha=0.9, beta=0.2, gamma=0.75),
                dict(gamma=2.0, ignore_empty=True, weight=1.5)],
    "generalized_dice": [dict(w_type="square"), dict(w_type="simple"), dict(w_type="uniform")],
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", FD_CASES, ids=FD_CASES.keys())
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_gradient_vs_finite_differences(name, case, variant):
    c = dict(dict(C=3, dims=2, activation="softmax", target="index", ignore=None, empty=False),
             **FD_CASES[case])
    rng = _rng("fd", name, case, variant)
    x, target, ii = _data(c["C"], c["dims"], c["activation"], c["target"], c["ignore"],
                          c["empty"], rng)
    x = x[:, :, :3] if c["dims"] == 2 else x                     # (2, C, 3, 6): 36 C points
    target = target[..., :3, :] if c["dims"] == 2 else target
    kw = dict(FD_LOSS_OPTIONS[name][variant], activation=c["activation"],
              include_background=c.get("include_background", True), batch=c.get("batch", False))
    for reduction in ("mean", "none"):
        f = lambda v, **k: _fn(name)(v, target, ignore_index=ii, reduction=reduction,  # noqa
                                     **kw, **k)
        _, grad = f(x, return_grad=True)
        np.testing.assert_allclose(grad, _central_differences(f, x), **FD_TOL)
        assert np.abs(grad).max() > 1e-4                         # not vacuously zero
        if ii is not None:
            _, m = _dense(x, target, ii)
            assert np.all(grad * (1 - m) == 0)                   # ignored voxels get 0


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
def test_per_class_weight_gradient_vs_finite_differences(name):
    x, y, ii = _data(4, 2, "softmax", "index", "sentinel", True, _rng("fdw", name))
    kw = dict(activation="softmax", include_background=False, weight=[0.5, 2.0, 3.0],
              ignore_index=ii, ignore_empty=True)
    if name == "tversky":
        kw.update(alpha=0.2, beta=0.8, gamma=1.5)
    f = lambda v, **k: _fn(name)(v, y, **kw, **k)  # noqa
    _, grad = f(x, return_grad=True)
    np.testing.assert_allclose(grad, _central_differences(f, x), **FD_TOL)


# --------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [False, True])
def test_all_voxels_ignored(name, batch):
    """No valid voxel: I = P = T = 0, so every entry is 1 - smooth_nr / smooth_dr = 0 and
    the gradient is 0; with ignore_empty nothing is kept: mean 0.0, gradient 0."""
    rng = _rng("allign", name, batch)
    x = rng.normal(size=(2, 3, 4, 5))
    y = np.full((2, 4, 5), SENTINEL)
    kw = dict(activation="softmax", batch=batch, ignore_index=SENTINEL)
    val, grad = _fn(name)(x, y, reduction="none", return_grad=True, **kw)
    np.testing.assert_array_equal(val, np.zeros_like(val))
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    if name != "generalized_dice":
        val, grad = _fn(name)(x, y, ignore_empty=True, return_grad=True, **kw)
        assert val == 0.0 and np.ndim(val) == 0
        np.testing.assert_array_equal(grad, np.zeros_like(x))
    if pytest.importorskip("torch") and name in ("dice", "jaccard", "tversky"):
        mval, mgrad = _monai_value_grad(name, x, y, SENTINEL, activation="softmax",
                                        batch=batch, reduction="mean")
        np.testing.assert_allclose(mval, 0.0, atol=1e-15)
        np.testing.assert_array_equal(mgrad, np.zeros_like(x))


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
def test_empty_class_entry_and_ignore_empty(name):
    """Class 2 absent from sample 0: that entry is 1 - smooth_nr / (a P + smooth_dr), about 1
    (a = 1 for dice, 2 for jaccard, alpha for tversky); ignore_empty drops just that entry."""
    rng = _rng("empty", name)
    x = rng.normal(size=(2, 3, 4, 5))
    y = rng.integers(0, 3, size=(2, 4, 5))
    y[0][y[0] == 2] = 1
    kw = dict(activation="sigmoid", alpha=0.3, beta=0.7) if name == "tversky" else \
        dict(activation="sigmoid")
    none = _fn(name)(x, y, reduction="none", **kw)
    P = ref._sigmoid(x[0, 2]).sum()
    a = {"dice": 1.0, "jaccard": 2.0, "tversky": 0.3}[name]
    np.testing.assert_allclose(none[0, 2], 1 - 1e-5 / (a * P + 1e-5), rtol=1e-14)
    kept = _fn(name)(x, y, reduction="none", ignore_empty=True, **kw)
    assert kept[0, 2] == 0.0
    keep = np.ones((2, 3), bool)
    keep[0, 2] = False
    np.testing.assert_array_equal(kept[keep], none[keep])
    np.testing.assert_allclose(_fn(name)(x, y, ignore_empty=True, **kw), none[keep].mean(),
                               rtol=1e-14)
    np.testing.assert_allclose(_fn(name)(x, y, ignore_empty=True, reduction="sum", **kw),
                               none[keep].sum(), rtol=1e-14)
    # batch=True: class 2 still occurs in sample 1, so nothing is dropped
    np.testing.assert_array_equal(
        _fn(name)(x, y, batch=True, ignore_empty=True, reduction="none", **kw),
        _fn(name)(x, y, batch=True, reduction="none", **kw))


def test_focal_tversky_clamps_at_zero():
    """1 - TI <= 0 gives 0 and gradient 0 for gamma != 1; gamma == 1 is not clamped.
    TI > 1 happens when smooth_nr > smooth_dr on an empty volume, or with inputs above 1."""
    x = np.full((1, 2, 3), 0.5)
    y = np.full((1, 3), SENTINEL)
    kw = dict(smooth_nr=1.0, smooth_dr=0.5, ignore_index=SENTINEL, reduction="none")
    np.testing.assert_array_equal(ref.tversky_loss(x, y, **kw), [[-1.0, -1.0]])
    val, grad = ref.tversky_loss(x, y, gamma=2.0, return_grad=True, **kw)
    np.testing.assert_array_equal(val, [[0.0, 0.0]])
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    # p = 2 on a target voxel (activation None): I = 2, P = 2, T = 1 -> TI = 4/3
    x = np.array([[[2.0, 0.0], [0.0, 0.0]]])
    y = np.array([[0, 1]])
    val, grad = ref.tversky_loss(x, y, gamma=0.5, smooth_nr=0.0, smooth_dr=0.0,
                                 reduction="none", return_grad=True)
    assert val[0, 0] == 0.0 and np.all(grad[0, 0] == 0.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_none_shapes(name, batch, include_background):
    x = _rng("shape", name).normal(size=(3, 4, 2, 5))
    y = np.arange(30).reshape(3, 2, 5) % 4
    val = _fn(name)(x, y, activation="softmax", batch=batch,
                    include_background=include_background, reduction="none")
    c = 4 if include_background else 3
    want = {(False, False): (3, c), (False, True): (c,), (True, False): (3,), (True, True): (1,)}
    assert val.shape == want[name == "generalized_dice", batch]
    for reduction in ("sum", "mean"):
        red = _fn(name)(x, y, activation="softmax", batch=batch,
                        include_background=include_background, reduction=reduction)
        assert np.ndim(red) == 0 and red.dtype == np.float64
        np.testing.assert_allclose(red, getattr(val, reduction)(), rtol=1e-14)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [0, 2])
def test_ignoring_a_class_removes_its_voxels_from_every_sum(name, k):
    """ignore_index = k (a real class) is the same as relabelling class k to a sentinel and
    ignoring that: its voxels leave I, P and T of every class, class k's own T included."""
    rng = _rng("ignk", name, k)
    x = rng.normal(size=(2, 4, 3, 5))
    y = rng.integers(0, 4, size=(2, 3, 5))
    a = _fn(name)(x, y, activation="softmax", ignore_index=k, reduction="none",
                  return_grad=True)
    b = _fn(name)(x, np.where(y == k, SENTINEL, y), activation="softmax",
                  ignore_index=SENTINEL, reduction="none", return_grad=True)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-14)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize("name", NAMES)
def test_index_and_one_hot_targets_agree(name):
    """(N, *spatial), (N, 1, *spatial) and any integer dtype, and the one-hot mask as bool,
    uint8 or float: the same loss."""
    rng = _rng("same", name)
    x = rng.normal(size=(2, 4, 3, 5))
    y = rng.integers(0, 4, size=(2, 3, 5))
    onehot = np.stack([(y == c) for c in range(4)], axis=1)
    base = _fn(name)(x, y, activation="softmax", reduction="none", return_grad=True)
    for t in (y[:, None], y.astype(np.uint8), y.astype(np.int16), onehot,
              onehot.astype(np.uint8), onehot.astype(np.float32)):
        got = _fn(name)(x, t, activation="softmax", reduction="none", return_grad=True)
        np.testing.assert_array_equal(got[0], base[0])
        np.testing.assert_array_equal(got[1], base[1])
    # C == 1: binary labels (N, *spatial) are the mask (N, 1, *spatial) of the foreground
    xb = x[:, :1]
    yb = (y == 1).astype(np.int64)
    a = _fn(name)(xb, yb, activation="sigmoid", return_grad=True)
    b = _fn(name)(xb, yb[:, None].astype(bool), activation="sigmoid", return_grad=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", NAMES)
def test_float32_input_is_computed_in_float64(name):
    rng = _rng("f32", name)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=(2, 4, 4))
    val, grad = _fn(name)(x, y, activation="softmax", return_grad=True)
    val64, grad64 = _fn(name)(x.astype(np.float64), y, activation="softmax", return_grad=True)
    assert grad.dtype == np.float64 and np.asarray(val).dtype == np.float64
    assert val == val64
    np.testing.assert_array_equal(grad, grad64)


def test_reference_names_exported():
    for name in NAMES:
        assert name + "_loss" in ref.__all__ and callable(_fn(name))
    assert {"mse_loss", "cross_entropy"} <= set(ref.__all__)
