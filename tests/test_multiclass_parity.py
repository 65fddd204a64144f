"""Multi-class losses through the public API, every backend, against the float64
reference (which tests/test_multiclass_reference.py checks against PyTorch).

The C backend gets the full option matrix; Numba (seconds of compile per
variant) and the CUDA simulator (slow) get a smaller one that still reaches
every kernel and both loop shapes."""
import itertools

import numpy as np
import pytest

import fastloss as fl
from fastloss import reference

from conftest import available, backend_param, compare_with_reference, tol

SHAPES = {"2d": (6, 5), "4d": (3, 4, 5, 6), "1d": (5,)}


def _inputs(shape, dtype, *, seed=0, ignore=False, scale=3.0, label_dtype=np.int64):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * scale).astype(dtype)
    classes = shape[0] if len(shape) == 1 else shape[1]
    row_shape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = rng.integers(0, classes, size=row_shape).astype(label_dtype)
    if ignore and y.ndim:
        y.reshape(-1)[::3] = -100 if np.issubdtype(label_dtype, np.signedinteger) else 255
    return x, y, rng


_compare = compare_with_reference


# ---- cross_entropy, the whole matrix on the C backend ------------------------------------

@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("weighted,ignore,smoothing",
                         list(itertools.product([False, True], [False, True], [0.0, 0.2])))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_index_c(dtype, shape, weighted, ignore, smoothing, reduction):
    shape = SHAPES[shape]
    x, y, rng = _inputs(shape, dtype, ignore=ignore)
    classes = x.shape[0] if x.ndim == 1 else x.shape[1]
    weight = rng.uniform(0.2, 2.0, classes) if weighted else None
    _compare("cross_entropy", "c", x, y, reduction=reduction, dtype=dtype, weight=weight,
             label_smoothing=smoothing)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.0), (True, 0.3)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_probabilities_c(dtype, shape, weighted, smoothing, reduction):
    shape = SHAPES[shape]
    x, _, rng = _inputs(shape, dtype)
    axis = 0 if x.ndim == 1 else 1
    t = rng.dirichlet(np.ones(x.shape[axis]), size=x.size // x.shape[axis])
    t = np.moveaxis(t.reshape(np.delete(x.shape, axis).tolist() + [x.shape[axis]]), -1, axis)
    t = np.ascontiguousarray(t, dtype=dtype)
    weight = rng.uniform(0.2, 2.0, x.shape[axis]) if weighted else None
    _compare("cross_entropy", "c", x, t, reduction=reduction, dtype=dtype, weight=weight,
             label_smoothing=smoothing)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 6)], ids=["2d", "4d"])
def test_z_loss_c(dtype, shape):
    x, y, rng = _inputs(shape, dtype, ignore=True)
    _compare("cross_entropy", "c", x, y, reduction="mean", dtype=dtype, z_loss=1e-2,
             label_smoothing=0.1, weight=rng.uniform(0.5, 2, shape[1]))


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("classes,rows,inner", [(1, 5, 1), (2, 7, 1), (3, 4, 9), (1000, 9, 1),
                                                (1000, 2, 3), (50257, 3, 1), (50257, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_class_counts_c(classes, rows, inner, dtype):
    shape = (rows, classes) if inner == 1 else (rows, classes, inner)
    x, y, rng = _inputs(shape, dtype, ignore=True)
    _compare("cross_entropy", "c", x, y, reduction="mean", dtype=dtype,
             label_smoothing=0.1, weight=rng.uniform(0.5, 2, classes))
    _compare("softmax_focal_loss", "c", x, y, reduction="sum", dtype=dtype, gamma=0.5)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("label_dtype", [np.uint8, np.int8, np.int16, np.int32, np.uint16])
def test_label_dtypes_c(label_dtype):
    x, y, _ = _inputs((4, 3, 7), np.float32, ignore=True, label_dtype=label_dtype)
    ignore = -100 if np.issubdtype(label_dtype, np.signedinteger) else 255
    _compare("cross_entropy", "c", x, y, reduction="mean", dtype=np.float32,
             ignore_index=ignore)


# ---- the other losses on the C backend ----------------------------------------------------

OTHER_CASES = [
    ("nll_loss", {}, ["2d", "4d", "1d"]),
    ("nll_loss", {"weight": "W"}, ["2d", "4d"]),
    ("softmax_focal_loss", {}, ["2d", "4d", "1d"]),
    ("softmax_focal_loss", {"gamma": 0.5, "alpha": 0.25}, ["2d", "4d"]),
    ("softmax_focal_loss", {"gamma": 0.0, "alpha": "W", "weight": "W"}, ["2d", "4d"]),
    ("softmax_focal_loss", {"gamma": 3.0, "weight": "W"}, ["2d"]),
    ("multi_margin_loss", {}, ["2d", "1d"]),
    ("multi_margin_loss", {"p": 2, "margin": 0.5, "weight": "W"}, ["2d"]),
    ("multiclass_hinge_loss", {}, ["2d", "1d"]),
    ("multiclass_hinge_loss", {"margin": 2.5}, ["2d"]),
]


def _other_params():
    for name, params, shapes in OTHER_CASES:
        for shape in shapes:
            yield pytest.param(name, params, shape, id=f"{name}-{shape}-{len(params)}")


def _materialise(params, classes, rng):
    return {k: rng.uniform(0.2, 2.0, classes) if v == "W" else v for k, v in params.items()}


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("name,params,shape", list(_other_params()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_other_losses_c(name, params, shape, dtype, reduction):
    shape = SHAPES[shape]
    ignores = name in ("nll_loss", "softmax_focal_loss")
    x, y, rng = _inputs(shape, dtype, ignore=ignores)
    classes = x.shape[0] if x.ndim == 1 else x.shape[1]
    _compare(name, "c", x, y, reduction=reduction, dtype=dtype,
             **_materialise(params, classes, rng))


# ---- every backend: each kernel and both loop shapes ---------------------------------------

BACKEND_CASES = [
    ("cross_entropy", {"label_smoothing": 0.2, "weight": "W", "z_loss": 0.01}, True),
    ("cross_entropy", {}, False),
    ("nll_loss", {"weight": "W"}, True),
    ("softmax_focal_loss", {"gamma": 0.5, "alpha": "W"}, True),
    ("multi_margin_loss", {"p": 2, "weight": "W"}, False),
    ("multiclass_hinge_loss", {}, False),
]


@pytest.mark.parametrize("backend", [backend_param(b) for b in ("numba", "cuda", "numpy")])
@pytest.mark.parametrize("name,params,ignore", BACKEND_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BACKEND_CASES)])
@pytest.mark.parametrize("shape", ["2d", "4d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends(backend, name, params, ignore, shape, dtype):
    if shape == "4d" and name in ("multi_margin_loss", "multiclass_hinge_loss"):
        pytest.skip("2-D only, as PyTorch")
    if backend == "cuda" and dtype == np.float32 and shape == "4d":
        pytest.skip("the simulator is slow: float32 runs on the 2-D shape")
    shape = (5, 4) if shape == "2d" else (2, 3, 4, 3)
    x, y, rng = _inputs(shape, dtype, ignore=ignore)
    _compare(name, backend, x, y, reduction="mean", dtype=dtype,
             **_materialise(params, shape[1], rng))


@pytest.mark.parametrize("backend", [backend_param(b) for b in ("numba", "cuda")])
def test_backends_probabilities_and_long_rows(backend):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 5)) * 2
    t = rng.dirichlet(np.ones(3), size=(2, 5)).transpose(0, 2, 1).copy()
    _compare("cross_entropy", backend, x, t, reduction="sum", dtype=np.float64,
             label_smoothing=0.1, weight=rng.uniform(0.5, 2, 3))
    # a row longer than a block of threads / a segment
    x, y, _ = _inputs((2, 300), np.float64)
    _compare("cross_entropy", backend, x, y, reduction="none", dtype=np.float64,
             label_smoothing=0.1)


# ---- numerics, determinism, edge cases ------------------------------------------------------

KERNELS = [backend_param(b) for b in ("c", "numba")]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 3)], ids=["2d", "3d"])
def test_extreme_logits(backend, dtype, shape):
    rng = np.random.default_rng(1)
    x = rng.choice([-1e4, 1e4, 0.0, 3.0], size=shape).astype(dtype)
    y = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    for name, kw in (("cross_entropy", {"label_smoothing": 0.1}),
                     ("softmax_focal_loss", {"gamma": 0.5}),
                     ("softmax_focal_loss", {"gamma": 2.0})):
        value, grad = getattr(fl, name)(x, y, return_grad=True, backend=backend, **kw)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        ref_value, ref_grad = getattr(reference, name)(x, y, return_grad=True, **kw)
        np.testing.assert_allclose(value, ref_value, rtol=tol(dtype)["rtol"], atol=1e-3)
        np.testing.assert_allclose(grad, ref_grad, **tol(dtype))


@pytest.mark.parametrize("backend", KERNELS)
def test_all_ignored(backend):
    x, y, _ = _inputs((4, 3, 2), np.float64)
    y[:] = -100
    for name in ("cross_entropy", "nll_loss", "softmax_focal_loss"):
        value, grad = getattr(fl, name)(x, y, return_grad=True, backend=backend)
        assert np.isnan(value)
        np.testing.assert_array_equal(grad, 0.0)
        assert getattr(fl, name)(x, y, reduction="sum", backend=backend) == 0.0
        np.testing.assert_array_equal(getattr(fl, name)(x, y, reduction="none",
                                                        backend=backend), 0.0)


@pytest.mark.parametrize("backend", KERNELS)
def test_masked_logits(backend):
    """-inf logits (masked vocabulary entries) are fine when the row has a finite one."""
    x, y, _ = _inputs((3, 40000), np.float32)
    x[:, 16384:] = -np.inf
    y[:] = [1, 2, 3]
    value, grad = fl.cross_entropy(x, y, return_grad=True, backend=backend)
    ref_value, ref_grad = reference.cross_entropy(x[:, :16384], y, return_grad=True)
    np.testing.assert_allclose(value, ref_value, **tol(np.float32))
    np.testing.assert_allclose(grad[:, :16384], ref_grad, **tol(np.float32))
    np.testing.assert_array_equal(grad[:, 16384:], 0.0)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("shape", [(2, 70000), (3, 7, 1000), (20000, 10)],
                         ids=["split-rows", "tiles", "short-rows"])
def test_thread_count_does_not_change_bits(shape):
    x, y, rng = _inputs(shape, np.float32, ignore=True)
    kw = dict(label_smoothing=0.1, weight=rng.uniform(0.5, 2, shape[1]), return_grad=True)
    results = []
    for threads in (1, 2, 3):
        fl.set_num_threads(threads)
        results.append(fl.cross_entropy(x, y, **kw))
        results.append(fl.cross_entropy(x, y, reduction="none", **kw))
    for value, grad in results[2::2]:
        assert value.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()
    for value, grad in results[3::2]:
        assert value.tobytes() == results[1][0].tobytes()


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("name", ["nll_loss", "softmax_focal_loss"])
def test_thread_count_does_not_change_bits_of_short_rows(name):
    """The gather of nll_loss and the short-row tiles of the softmax losses, on
    enough rows for the label check and the rows to run on several threads."""
    x, y, _ = _inputs((30000, 10), np.float32, ignore=True)
    results = []
    for threads in (1, 2, 3):
        fl.set_num_threads(threads)
        value, grad = getattr(fl, name)(x, y, return_grad=True)
        results.append((value.tobytes(), grad.tobytes()))
    fl.set_num_threads(None)
    assert results[1] == results[0] and results[2] == results[0]


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_isa_path(isa):
    try:
        fl.set_isa(isa)
    except ValueError:
        pytest.skip(f"this CPU has no {isa} path")
    for shape in ((5, 37), (2, 37, 19)):
        x, y, rng = _inputs(shape, np.float32, ignore=True)
        _compare("cross_entropy", "c", x, y, reduction="mean", dtype=np.float32,
                 label_smoothing=0.1, weight=rng.uniform(0.5, 2, 37))
        _compare("softmax_focal_loss", "c", x, y, reduction="sum", dtype=np.float32)
    x, y, _ = _inputs((5, 37), np.float32)
    _compare("multi_margin_loss", "c", x, y, reduction="sum", dtype=np.float32)
    _compare("multiclass_hinge_loss", "c", x, y, reduction="sum", dtype=np.float32)


@pytest.mark.skipif(not available("c"), reason="C extension not built")
@pytest.mark.parametrize("name,kw", [("cross_entropy", {"label_smoothing": 0.2, "z_loss": 0.1}),
                                     ("softmax_focal_loss", {"gamma": 0.5}),
                                     ("multi_margin_loss", {"p": 2}),
                                     ("nll_loss", {})])
def test_gradient_finite_differences(name, kw):
    x, y, rng = _inputs((3, 4), np.float64, scale=1.0)
    fn = getattr(fl, name)
    _, grad = fn(x, y, return_grad=True, **kw)
    h = 1e-6
    numeric = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (fn(up, y, **kw) - fn(down, y, **kw)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_empty_batch():
    x = np.zeros((0, 4))
    y = np.zeros((0,), np.int64)
    assert np.isnan(fl.cross_entropy(x, y))
    assert fl.cross_entropy(x, y, reduction="sum") == 0.0
    value, grad = fl.cross_entropy(x, y, reduction="none", return_grad=True)
    assert value.shape == (0,) and grad.shape == (0, 4)


def test_non_contiguous_input():
    x, y, _ = _inputs((6, 5, 4), np.float64)
    view = x.transpose(0, 1, 2)[:, :, ::2]
    np.testing.assert_allclose(fl.cross_entropy(view, y[:, ::2]),
                               reference.cross_entropy(np.ascontiguousarray(view), y[:, ::2]),
                               **tol(np.float64))


@pytest.mark.skipif(not available("c"), reason="C extension not built")
def test_torch_directly():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, y, rng = _inputs((4, 6, 3, 2), np.float64, ignore=True)
    w = rng.uniform(0.5, 2, 6)
    xt = torch.tensor(x, requires_grad=True)
    expected = F.cross_entropy(xt, torch.tensor(y), weight=torch.tensor(w),
                               label_smoothing=0.15)
    expected.backward()
    value, grad = fl.cross_entropy(x, y, weight=w, label_smoothing=0.15, return_grad=True)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", [backend_param(b) for b in ("c", "numba", "numpy", "cuda")])
def test_nan_scores_in_the_margin_losses(backend, dtype):
    """multiclass_hinge_loss: a nan score anywhere in a row makes that row's value and
    gradient nan (the C max skipped it: 0 on c, nan on numba, 0 on numpy before);
    multi_margin_loss follows PyTorch, whose kernel counts a nan term as inactive."""
    from conftest import to_device, to_host
    x = np.array([[0.5, np.nan, 0.1], [np.nan, 0.2, 0.1], [1.0, 2.0, 3.0],
                  [0.3, 0.2, np.nan]], dtype)
    y = np.array([0, 0, 2, 1])
    args = (to_device(x), to_device(y)) if backend == "cuda" else (x, y)
    value, grad = fl.multiclass_hinge_loss(*args, reduction="none", return_grad=True,
                                           backend=backend)
    value, grad = np.asarray(to_host(value)), np.asarray(to_host(grad))
    assert np.isnan(value).tolist() == [True, True, False, True]
    assert np.isnan(grad).all(axis=1).tolist() == [True, True, False, True]
    assert value[2] == 0 and not grad[2].any()
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.multi_margin_loss(xt, torch.tensor(y), reduction="none")
    want.sum().backward()
    value, grad = fl.multi_margin_loss(*args, reduction="none", return_grad=True,
                                       backend=backend)
    np.testing.assert_allclose(np.asarray(to_host(value)), want.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(to_host(grad)), xt.grad.numpy(), rtol=1e-6)
