"""Every elementwise loss x backend x dtype x reduction x weight x shape, value and
gradient, against the float64 NumPy reference (one tolerance table)."""
import numpy as np
import pytest

import fastloss as fl
from fastloss import reference
from fastloss.testing import CASES, make_inputs

from conftest import KERNEL_BACKENDS, to_device, to_host, tol

#: hyper-parameter variants per loss, beyond the defaults; "ARRAY" marks a
#: parameter given as an array against the last axis
VARIANTS = {
    "mse_loss": [{}],
    "l1_loss": [{}],
    "huber_loss": [{}, {"delta": 0.3}],
    "smooth_l1_loss": [{}, {"beta": 0.0}, {"beta": 2.5}],
    "log_cosh_loss": [{}],
    "quantile_loss": [{}, {"q": 0.1}, {"q": "ARRAY"}],
    "binary_cross_entropy": [{}],
    "binary_cross_entropy_with_logits": [{}, {"pos_weight": 3.0}, {"pos_weight": "ARRAY"}],
    "sigmoid_focal_loss": [{}, {"alpha": -1.0, "gamma": 0.5}, {"gamma": 0.0}],
    "hinge_loss": [{}, {"margin": 0.5, "squared": True}],
}

HOST_SHAPES = [(), (1,), (7,), (3, 4, 5), (0,), (2, 0, 3), (1 << 20) + 3]
LARGE = (1 << 20) + 3
#: (dtype, shape, weight) combinations run under the CUDA simulator, which is slow
CUDA_COMBOS = [(np.float64, (), None), (np.float64, (7,), "full"), (np.float64, (0,), None),
               (np.float64, (3, 4, 5), None), (np.float64, (300,), "trailing"),
               (np.float32, (300,), "full")]


def _cases():
    for name, variants in VARIANTS.items():
        for k, params in enumerate(variants):
            yield pytest.param(name, params, id=f"{name}-{k}")


def _materialise(params, shape, rng):
    """Replace "ARRAY" by an array of quantiles / positive weights on the last axis."""
    out = {}
    for key, value in params.items():
        if value == "ARRAY":
            if not shape:
                return None
            lo, hi = (0.05, 0.95) if key == "q" else (0.2, 5.0)
            value = rng.uniform(lo, hi, shape[-1])
        out[key] = value
    return out


def _weights(kind, shape, rng):
    if kind is None:
        return None
    if kind == "full":
        return rng.uniform(0.1, 2.0, shape)
    if not shape:
        return None
    return rng.uniform(0.1, 2.0, shape[-1:])          # broadcast over leading axes


def _check(fn_name, backend, params, shape, dtype, weight_kind, seed=0):
    rng = np.random.default_rng(seed + len(shape))
    x, y = make_inputs(CASES[fn_name], shape, dtype, seed=seed)
    params = _materialise(params, shape, rng)
    w = _weights(weight_kind, shape, rng)
    if params is None or (weight_kind == "trailing" and w is None):
        pytest.skip("variant needs at least one axis")
    x_before, y_before = x.copy(), y.copy()
    fn = getattr(fl, fn_name)
    ref_fn = getattr(reference, fn_name)
    on_gpu = backend == "cuda"

    def prepare(a):
        if a is None or not isinstance(a, np.ndarray):
            return a
        return to_device(a.astype(dtype)) if on_gpu else a

    kwargs = {k: prepare(v) for k, v in params.items()}
    for reduction in ("mean", "sum", "none"):
        expected, expected_grad = ref_fn(x, y, weight=w, reduction=reduction, return_grad=True,
                                         **params)
        value, grad = fn(prepare(x), prepare(y), weight=prepare(w), reduction=reduction,
                         return_grad=True, backend=backend, **kwargs)
        only_value = fn(prepare(x), prepare(y), weight=prepare(w), reduction=reduction,
                        backend=backend, **kwargs)
        value, grad, only_value = to_host(value), to_host(grad), to_host(only_value)
        assert grad.shape == x.shape and grad.dtype == x.dtype
        if reduction == "none":
            assert value.shape == x.shape and value.dtype == x.dtype
        else:
            assert value.shape == () and value.dtype == x.dtype
            if not on_gpu:
                assert isinstance(fn(x, y, weight=w, reduction=reduction, backend=backend,
                                     **kwargs), np.generic)
        t = tol(dtype)
        np.testing.assert_allclose(value, expected, **t, err_msg=f"value, {reduction}")
        np.testing.assert_array_equal(only_value, value, err_msg="value without grad differs")
        # gradients are compared relative to their own scale (mean divides by N)
        scale = np.max(np.abs(expected_grad)) if expected_grad.size else 1.0
        np.testing.assert_allclose(grad, expected_grad, rtol=t["rtol"],
                                   atol=t["atol"] * max(scale, 1e-30) + 1e-30,
                                   err_msg=f"grad, {reduction}")
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


@pytest.mark.parametrize("weight_kind", [None, "full", "trailing"])
@pytest.mark.parametrize("shape", HOST_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"]
                         + ["numpy"])
@pytest.mark.parametrize("fn_name,params", list(_cases()))
def test_host_parity(fn_name, params, backend, dtype, shape, weight_kind):
    if shape == LARGE and (backend == "numpy" or weight_kind == "trailing"):
        pytest.skip("large inputs: kernels only, one weight layout suffices")
    shape = (shape,) if isinstance(shape, int) else shape
    _check(fn_name, backend, params, shape, dtype, weight_kind)


@pytest.mark.parametrize("dtype,shape,weight_kind", CUDA_COMBOS, ids=str)
@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b.values[0] == "cuda"])
@pytest.mark.parametrize("fn_name,params", list(_cases()))
def test_cuda_parity(fn_name, params, backend, dtype, shape, weight_kind):
    _check(fn_name, backend, params, shape, dtype, weight_kind)


@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"])
def test_strided_and_non_contiguous_inputs(backend):
    rng = np.random.default_rng(5)
    base = rng.standard_normal((9, 2001))
    x = base[::2, ::3]                       # strided
    y = np.asfortranarray(rng.standard_normal(x.shape))   # F-order
    for fn_name in ("mse_loss", "log_cosh_loss", "binary_cross_entropy_with_logits"):
        target = (y > 0).astype(np.float64) if "logits" in fn_name else y
        v, g = getattr(fl, fn_name)(x, target, reduction="sum", return_grad=True, backend=backend)
        ev, eg = getattr(reference, fn_name)(x, target, reduction="sum", return_grad=True)
        np.testing.assert_allclose(v, ev, **tol(np.float64))
        np.testing.assert_allclose(g, eg, **tol(np.float64))


@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"])
def test_integer_and_bool_targets_are_cast(backend):
    x = np.linspace(-3, 3, 101)
    labels = (x > 0.5)
    for target in (labels, labels.astype(np.int64), labels.astype(np.uint8)):
        v = fl.binary_cross_entropy_with_logits(x, target, backend=backend)
        np.testing.assert_allclose(v, reference.binary_cross_entropy_with_logits(
            x, labels.astype(float)), **tol(np.float64))
    signs = np.where(labels, 1, -1).astype(np.int8)
    np.testing.assert_allclose(fl.hinge_loss(x, signs, backend=backend),
                               reference.hinge_loss(x, signs.astype(float)), **tol(np.float64))


@pytest.mark.parametrize("backend", [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"])
def test_quantile_array_with_one_target_per_row(backend):
    rng = np.random.default_rng(2)
    q = np.array([0.1, 0.5, 0.9])
    pred = rng.standard_normal((50, 3))
    target = rng.standard_normal(50)
    v, g = fl.quantile_loss(pred, target, q=q, return_grad=True, backend=backend)
    ev, eg = reference.quantile_loss(pred, np.repeat(target[:, None], 3, axis=1),
                                     q=q, return_grad=True)
    np.testing.assert_allclose(v, ev, **tol(np.float64))
    np.testing.assert_allclose(g, eg, **tol(np.float64))


def _isa_paths():
    if not fl.backends()["c"].available:
        return [pytest.param(None, marks=pytest.mark.skip(reason=fl.backends()["c"].reason))]
    from fastloss.kernels import native
    best = native.ISA_NAMES.index(native.max_isa())
    return list(native.ISA_NAMES[:best + 1])


@pytest.mark.parametrize("isa", _isa_paths())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn_name,params", list(_cases()))
def test_every_simd_path_of_the_c_kernels(fn_name, params, dtype, isa):
    """Each ISA path the CPU has (baseline, AVX2+FMA, AVX-512), forced in turn."""
    assert fl.set_isa(isa) == isa
    for shape in [(7,), (3, 4, 5), (100_003,)]:
        _check(fn_name, "c", params, shape, dtype, "full")
