"""Overlap (Dice-family) losses through the public API, every backend, against
the float64 reference (which tests/test_overlap_reference.py checks against
MONAI and finite differences).

The C backend gets the option matrix: every loss x activation x target kind x
dtype, with the other options (include_background, batch, reduction,
squared_pred, weight, ignore_index, ignore_empty, C, 2-D/3-D) rotated so each
value meets each other's.  Numba (seconds of compile per variant) and the
CUDA simulator (slow) get fewer cases that still reach every kernel path."""
import itertools

import numpy as np
import pytest

import fastloss as fl

from conftest import available, backend_param, compare_with_reference
from fastloss._registry import records

LOSSES = tuple(r.name for r in records("overlap"))
ACTIVATIONS = ("softmax", "sigmoid", None)
TARGETS = ("labels_u8", "labels_i64", "labels_n1", "mask_bool", "mask_u8", "mask_soft")
SPATIAL = {"2d": (5, 7), "3d": (3, 4, 5)}


def make_inputs(shape, dtype, target, activation, *, seed=0, ignore_index=None):
    """Logits (or probabilities for activation=None) and a target of the kind."""
    rng = np.random.default_rng(seed)
    n, classes = shape[:2]
    x = rng.normal(size=shape) * 2.0
    if activation is None:
        x = 1.0 / (1.0 + np.exp(-x))
    x = x.astype(dtype)
    if target.startswith("labels"):
        high = 2 if classes == 1 else classes
        y = rng.integers(0, high, size=(n,) + shape[2:])
        if ignore_index is not None:
            y.reshape(-1)[::4] = ignore_index
        if target == "labels_n1":
            y = y[:, None] if classes > 1 else y
        return x, y.astype(np.int64 if target == "labels_i64" or ignore_index is not None
                           and ignore_index > 255 else np.uint8)
    hard = rng.random(shape) < 0.4
    if target == "mask_bool":
        return x, hard
    if target == "mask_u8":
        return x, hard.astype(np.uint8)
    return x, (rng.random(shape) * hard).astype(dtype)


def _loss_kwargs(name, *, squared, weight, ignore_empty, classes, include_background):
    kw = {}
    if name in ("dice_loss", "jaccard_loss"):
        kw["squared_pred"] = squared
    if name == "tversky_loss":
        kw.update(alpha=0.3, beta=0.7, gamma=1.0 if not squared else 1.5)
    if name == "generalized_dice_loss":
        kw["w_type"] = ("square", "simple", "uniform")[int(squared) + int(ignore_empty)]
        return kw
    scored = classes - 1 if not include_background and classes > 1 else classes
    if weight == "scalar":
        kw["weight"] = 0.5
    elif weight == "vector":
        kw["weight"] = np.linspace(0.5, 2.0, scored)
    kw["ignore_empty"] = ignore_empty
    return kw


compare = compare_with_reference


def _matrix():
    """(loss, activation, target, dtype) in full; the other options rotate."""
    rotate = itertools.cycle(itertools.product(
        [True, False],                 # include_background
        [False, True],                 # batch
        ["mean", "none", "sum"],       # reduction
        [False, True],                 # squared_pred / gamma / w_type
        [None, "scalar", "vector"],    # weight
        [None, 255, 1],                # ignore_index (labels only)
        [False, True],                 # ignore_empty
        [5, 2, 1],                     # classes
        ["2d", "3d"]))
    for name, act, target, dtype in itertools.product(LOSSES, ACTIVATIONS, TARGETS,
                                                      (np.float32, np.float64)):
        opts = next(rotate)
        if act == "softmax" and opts[7] == 1:
            opts = opts[:7] + (2,) + opts[8:]
        yield pytest.param(name, act, target, dtype, opts,
                           id=f"{name}-{act}-{target}-{np.dtype(dtype).name}")


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("name,activation,target,dtype,opts", list(_matrix()))
def test_c_matrix(name, activation, target, dtype, opts):
    include_background, batch, reduction, squared, weight, ignore, ignore_empty, classes, dims = opts
    ignore = ignore if target.startswith("labels") else None
    if ignore == 1 and classes == 1:
        ignore = 255
    shape = (2, classes) + SPATIAL[dims]
    x, y = make_inputs(shape, dtype, target, activation, ignore_index=ignore)
    kw = _loss_kwargs(name, squared=squared, weight=weight, ignore_empty=ignore_empty,
                      classes=classes, include_background=include_background)
    compare(name, "c", x, y, reduction=reduction, activation=activation,
            include_background=include_background, batch=batch, ignore_index=ignore, **kw)


# ---- every backend: each kernel path once --------------------------------------------------

KERNEL_CASES = [  # (activation, target, dtype, squared)
    ("softmax", "labels_u8", np.float32, False),
    ("softmax", "labels_i64", np.float64, True),
    ("sigmoid", "mask_u8", np.float32, False),
    ("sigmoid", "labels_u8", np.float64, False),
    (None, "mask_soft", np.float64, True),
    (None, "labels_u8", np.float32, False),
]


@pytest.mark.parametrize("backend", [backend_param(b) for b in ("c", "numba", "cuda")])
@pytest.mark.parametrize("activation,target,dtype,squared", KERNEL_CASES,
                         ids=[f"{a}-{t}-{np.dtype(d).name}-{'sq' if s else 'lin'}"
                              for a, t, d, s in KERNEL_CASES])
@pytest.mark.parametrize("name", ["dice_loss", "tversky_loss"])
def test_backends(name, backend, activation, target, dtype, squared):
    shape = (2, 3, 4, 5, 6) if backend != "cuda" else (2, 3, 4, 5)
    ignore = 255 if target == "labels_u8" else None
    x, y = make_inputs(shape, dtype, target, activation, ignore_index=ignore)
    kw = dict(squared_pred=squared) if name == "dice_loss" else dict(alpha=0.2, beta=0.8)
    for reduction, batch in (("mean", False), ("none", True)):
        compare(name, backend, x, y, reduction=reduction, activation=activation, batch=batch,
                include_background=batch, ignore_index=ignore, **kw)


# ---- shapes, sizes, determinism -------------------------------------------------------------

@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("spatial", [(1,), (17,), (8193,), (3, 2900), (2, 3, 1400)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("classes", [1, 2, 5, 40])
def test_c_sizes(spatial, classes):
    """Volumes of one voxel, odd tails, several units, 1-D to 3-D; many classes
    (smaller tiles)."""
    act = "softmax" if classes > 1 else "sigmoid"
    x, y = make_inputs((2, classes) + spatial, np.float32, "labels_u8", act, ignore_index=255)
    compare("dice_loss", "c", x, y, reduction="mean", activation=act, ignore_index=255)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_c_many_classes_heap_workspace():
    """C > 1024: the tile's workspace no longer fits the stack and comes from the heap."""
    x, y = make_inputs((1, 1100, 40), np.float32, "labels_i64", "softmax")
    compare("dice_loss", "c", x, y, reduction="mean", activation="softmax")
    compare("jaccard_loss", "c", x, y, reduction="sum", activation="softmax")


@pytest.mark.parametrize("backend", [backend_param("c"), backend_param("numba")])
def test_same_bits_for_any_thread_count(backend):
    x, y = make_inputs((2, 4, 30, 31, 20), np.float32, "labels_u8", "softmax", ignore_index=255)
    results = []
    for threads in (1, 2, 3):
        fl.set_num_threads(threads)
        value, grad = fl.dice_loss(x, y, activation="softmax", ignore_index=255,
                                   return_grad=True, backend=backend)
        results.append((value, grad))
    fl.set_num_threads(None)
    for value, grad in results[1:]:
        assert value.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_isa_path(isa):
    if isa not in ("baseline",) and fl.set_isa(None) == "baseline":
        pytest.skip("no x86 SIMD paths here")
    try:
        fl.set_isa(isa)
    except ValueError as exc:
        pytest.skip(str(exc))
    for dtype, target in ((np.float32, "labels_u8"), (np.float64, "mask_u8"),
                          (np.float32, "mask_soft")):
        x, y = make_inputs((2, 3, 9, 70), dtype, target, "softmax")
        for squared in (False, True):
            compare("dice_loss", "c", x, y, reduction="mean", activation="softmax",
                    squared_pred=squared)
        compare("tversky_loss", "c", x, y, reduction="sum", activation="sigmoid")


# ---- edge cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [backend_param(b) for b in ("c", "numba", "numpy")])
@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored(name, backend):
    """Every voxel ignored: the sums are 0, each entry scores 1 - smooth_nr/smooth_dr = 0
    (or is left out with ignore_empty), and the gradient is 0."""
    x, y = make_inputs((2, 3, 4, 5), np.float64, "labels_u8", "softmax")
    y[...] = 255
    kwargs = {} if name == "generalized_dice_loss" else {"ignore_empty": True}
    for extra in ({}, kwargs):
        value, grad = getattr(fl, name)(x, y, activation="softmax", ignore_index=255,
                                        return_grad=True, backend=backend, **extra)
        assert value == 0.0
        assert not grad.any()


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_extreme_logits_are_finite():
    x, y = make_inputs((2, 3, 6, 7), np.float32, "labels_u8", "softmax")
    x = (np.sign(x) * 1e4).astype(np.float32)
    for act in ("softmax", "sigmoid"):
        value, grad = fl.dice_loss(x, y, activation=act, return_grad=True)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        compare("dice_loss", "c", x, y, reduction="mean", activation=act)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_nan_in_nan_out():
    x, y = make_inputs((1, 3, 4, 5), np.float32, "labels_u8", "softmax")
    x[0, 1, 2, 3] = np.nan
    assert np.isnan(fl.dice_loss(x, y, activation="softmax"))


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_empty_class_and_ignore_empty():
    """A class absent from one sample's target: scored near 1 by default, left out with
    ignore_empty (the mean then divides by the entries kept)."""
    x, y = make_inputs((2, 3, 6, 6), np.float64, "labels_u8", "softmax", seed=3)
    y[0][y[0] == 2] = 0
    for ignore_empty in (False, True):
        for reduction in ("mean", "sum", "none"):
            compare("dice_loss", "c", x, y, reduction=reduction, activation="softmax",
                    ignore_empty=ignore_empty)
    full = fl.dice_loss(x, y, activation="softmax", reduction="none")
    kept = fl.dice_loss(x, y, activation="softmax", reduction="none", ignore_empty=True)
    assert kept[0, 2] == 0 and full[0, 2] > 0.9
    np.testing.assert_allclose(fl.dice_loss(x, y, activation="softmax", ignore_empty=True),
                               kept.sum() / 5)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_target_forms_agree():
    """Index labels of every integer dtype, (N, 1, ...) labels and the one-hot mask (bool,
    uint8, float) give the same result."""
    x, y = make_inputs((2, 3, 5, 6), np.float32, "labels_u8", "softmax")
    onehot = y[:, None] == np.arange(3)[None, :, None, None]
    expected = fl.dice_loss(x, y, activation="softmax")
    for target in (y.astype(np.int8), y.astype(np.int16), y.astype(np.uint16),
                   y.astype(np.int32), y.astype(np.int64), y[:, None], onehot,
                   onehot.astype(np.uint8), onehot.astype(np.float32)):
        np.testing.assert_allclose(fl.dice_loss(x, target, activation="softmax"), expected,
                                   rtol=1e-6)


@pytest.mark.parametrize("backend", [backend_param(b) for b in ("c", "numba", "numpy")])
@pytest.mark.parametrize("name", LOSSES)
def test_mean_of_an_empty_batch_is_nan(name, backend):
    """N = 0: MONAI's torch.mean of no entries is nan (it was 0 here); the sum is 0,
    batch=True scores each class of the empty sums (0), the gradient is empty."""
    x, y = make_inputs((2, 3, 4, 5), np.float64, "labels_u8", "softmax")
    x, y = x[:0], y[:0]
    value, grad = getattr(fl, name)(x, y, activation="softmax", return_grad=True,
                                    backend=backend)
    assert np.isnan(value) and grad.shape == x.shape
    assert getattr(fl, name)(x, y, activation="softmax", reduction="sum",
                             backend=backend) == 0.0
    if name != "generalized_dice_loss":
        assert getattr(fl, name)(x, y, activation="softmax", batch=True,
                                 backend=backend) == 0.0


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_strided_input_and_empty_batch():
    x, y = make_inputs((2, 3, 6, 8), np.float32, "labels_u8", "softmax")
    strided = np.asfortranarray(x)
    np.testing.assert_allclose(fl.dice_loss(strided, y, activation="softmax"),
                               fl.dice_loss(x, y, activation="softmax"), rtol=1e-6)
    value, grad = fl.dice_loss(x[:0], y[:0], activation="softmax", return_grad=True,
                               reduction="sum")
    assert value == 0 and grad.shape == (0, 3, 6, 8)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_gradient_matches_finite_differences():
    x, y = make_inputs((1, 3, 3, 4), np.float64, "labels_u8", "softmax", ignore_index=255)
    for name, kw in (("dice_loss", {"squared_pred": True}), ("jaccard_loss", {}),
                     ("tversky_loss", {"gamma": 1.5, "alpha": 0.3, "beta": 0.7}),
                     ("generalized_dice_loss", {})):
        fn = getattr(fl, name)
        _, grad = fn(x, y, activation="softmax", ignore_index=255, return_grad=True, **kw)
        h = 1e-6
        for index in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 1, 1), (0, 0, 0, 1)]:
            up, down = x.copy(), x.copy()
            up[index] += h
            down[index] -= h
            fd = (fn(up, y, activation="softmax", ignore_index=255, **kw) -
                  fn(down, y, activation="softmax", ignore_index=255, **kw)) / (2 * h)
            np.testing.assert_allclose(grad[index], fd, rtol=1e-5, atol=1e-9)
