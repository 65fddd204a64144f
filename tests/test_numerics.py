"""Extremes: huge and tiny errors, saturated logits, NaN/inf, empty inputs."""
import math

import numpy as np
import pytest

import fastloss as fl
from fastloss import reference

from conftest import KERNEL_BACKENDS, to_device, to_host

BACKENDS = KERNEL_BACKENDS + ["numpy"]


def _call(backend, fn, *arrays, **kwargs):
    if backend == "cuda":
        arrays = [to_device(a) for a in arrays]
        kwargs = {k: to_device(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    result = fn(*arrays, backend=backend, **kwargs)
    if isinstance(result, tuple):
        return tuple(to_host(r) for r in result)
    return to_host(result)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_cosh_extremes(backend, dtype):
    d = np.array([1e30, -1e30, 1e-20, -1e-20, 0.0, 0.25, 40.0, 1e-3], dtype)
    if dtype == np.float32:
        d[:2] = 1e30   # finite in float32
    zero = np.zeros_like(d)
    value, grad = _call(backend, fl.log_cosh_loss, d, zero, reduction="none", return_grad=True)
    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(value[0], abs(float(d[0])) - math.log(2), rtol=1e-6)
    np.testing.assert_allclose(value[2:4], float(d[2]) ** 2 / 2, rtol=1e-5)   # no cancellation
    assert value[4] == 0
    np.testing.assert_allclose(value[5:], reference.log_cosh_loss(d[5:], zero[5:], reduction="none"),
                               rtol=1e-5 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(grad, np.tanh(d.astype(np.float64)), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_logits_are_finite(backend, dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4, 80.0, -80.0], dtype)
    y = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0], dtype)
    for fn, kwargs in [(fl.binary_cross_entropy_with_logits, {}),
                       (fl.binary_cross_entropy_with_logits, {"pos_weight": 5.0}),
                       (fl.sigmoid_focal_loss, {}),
                       (fl.sigmoid_focal_loss, {"gamma": 0.5}),
                       (fl.sigmoid_focal_loss, {"gamma": 0.0, "alpha": -1})]:
        value, grad = _call(backend, fn, x, y, reduction="none", return_grad=True, **kwargs)
        assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (fn.__name__, kwargs)
        ev, eg = getattr(reference, fn.__name__)(x, y, reduction="none", return_grad=True, **kwargs)
        np.testing.assert_allclose(value, ev, rtol=1e-5)
        np.testing.assert_allclose(grad, eg, rtol=1e-5, atol=1e-30)
    # wrong at full confidence: the loss is |x| (times pos_weight for a positive)
    value = _call(backend, fl.binary_cross_entropy_with_logits, x[:2], y[:2], reduction="none")
    np.testing.assert_allclose(value, [1e4, 1e4], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_log_clamp(backend):
    x = np.array([0.0, 1.0, 0.0, 1.0, 1e-30])
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    value, grad = _call(backend, fl.binary_cross_entropy, x, y, reduction="none", return_grad=True)
    np.testing.assert_allclose(value, [100.0, 100.0, 0.0, 0.0, 1e-30], rtol=1e-12)
    np.testing.assert_allclose(grad, [-1e12, 1e12, 0.0, 0.0, 1e-18], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
                                  "log_cosh_loss", "quantile_loss",
                                  "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
                                  "hinge_loss"])
def test_nan_in_nan_out(backend, name):
    x = np.array([0.5, np.nan, -0.25])
    y = np.array([1.0, 1.0, -1.0]) if name == "hinge_loss" else np.array([0.0, 1.0, 1.0])
    value, grad = _call(backend, getattr(fl, name), x, y, reduction="none", return_grad=True)
    assert np.isnan(value[1]) and np.isnan(grad[1])
    assert np.all(np.isfinite(value[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))
    assert np.isnan(_call(backend, getattr(fl, name), x, y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_errors(backend):
    x = np.array([np.inf, -np.inf, 1.0])
    y = np.zeros(3)
    assert _call(backend, fl.mse_loss, x, y, reduction="sum") == np.inf
    value = _call(backend, fl.huber_loss, x, y, reduction="none")
    assert value[0] == np.inf and value[1] == np.inf
    value = _call(backend, fl.log_cosh_loss, x, y, reduction="none")
    assert value[0] == np.inf and value[1] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend, dtype):
    e = np.zeros(0, dtype)
    for fn in (fl.mse_loss, fl.log_cosh_loss, fl.binary_cross_entropy_with_logits):
        assert np.isnan(_call(backend, fn, e, e))
        assert _call(backend, fn, e, e, reduction="sum") == 0
        value, grad = _call(backend, fn, e, e, reduction="none", return_grad=True)
        assert value.shape == (0,) and grad.shape == (0,) and grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_weight_sum_gives_nan_mean(backend):
    x, y, w = np.ones(4), np.zeros(4), np.zeros(4)
    value, grad = _call(backend, fl.mse_loss, x, y, weight=w, return_grad=True)
    assert np.isnan(value) and np.all(np.isnan(grad))      # 0 / 0, as PyTorch


@pytest.mark.parametrize("loss", ["mse_loss", "l1_loss"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_summing_to_zero_divide_as_pytorch(backend, loss):
    """sum(w l) / sum(w) with sum(w) = 0 and a non-zero numerator is ±inf in PyTorch
    (and its gradient ±inf, nan where w l' = 0), not nan."""
    torch = pytest.importorskip("torch")
    x, y, w = np.array([1.0, 2.0, 0.0]), np.zeros(3), np.array([1.0, -2.0, 1.0])
    value, grad = _call(backend, getattr(fl, loss), x, y, weight=w, return_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    per_element = (xt - torch.tensor(y)) ** 2 if loss == "mse_loss" else xt.abs()
    want = (torch.tensor(w) * per_element).sum() / torch.tensor(w).sum()
    want.backward()
    assert float(value) == want.item() == -np.inf
    np.testing.assert_array_equal(np.asarray(grad), xt.grad.numpy())     # [inf, -inf, nan]


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_with_logits_gradient_at_confident_logits(backend, dtype):
    """d/dx is sigmoid(x) - y; written as (1 - y) - sigmoid(-x) it cancels to 0 below
    x = -17 in float32 (-37 in float64).  Exact values from math.exp in float64."""
    x = np.array([-10.0, -20.0, -40.0, -80.0, 10.0, 20.0, 40.0, 80.0])
    for label in (0.0, 1.0):
        for pos_weight in (None, np.array(2.5)):
            a = 1.0 if pos_weight is None else 2.5
            exact = np.array([(1 - label) / (1 + math.exp(-v)) - a * label / (1 + math.exp(v))
                              for v in x])
            _, grad = fl.binary_cross_entropy_with_logits(
                x.astype(dtype), np.full(x.shape, label, dtype), pos_weight=pos_weight,
                reduction="sum", return_grad=True, backend=backend)
            rtol = 1e-5 if dtype == np.float32 else 1e-13
            tiny = np.abs(exact) < np.finfo(dtype).tiny   # exact value below float32's range
            np.testing.assert_allclose(grad[~tiny], exact[~tiny], rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_nan_embeddings_give_nan_on_every_pairwise_path(backend):
    """A NaN coordinate makes its row's and column's distances NaN (a max(d, 0) clamp
    used to drop it to 0 on C), and every pair loss that reads them NaN."""
    e = np.array([[0.0, 0.0], [3.0, 4.0], [np.nan, 1.0], [1.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    d = fl.pairwise_distances(e, backend=backend)
    assert np.isnan(d[2, [0, 1, 3]]).all() and np.isnan(d[[0, 1, 3], 2]).all()
    assert d[0, 1] == pytest.approx(5.0)
    with np.errstate(invalid="ignore"):
        for soft in (False, True):
            rows = fl.batch_hard_triplet_loss(e, labels, soft=soft, reduction="none",
                                              backend=backend)
            assert np.isnan(rows).all()    # every row has row 2 as a positive or negative
        assert np.isnan(fl.contrastive_loss(e, labels, backend=backend))
        assert np.isnan(fl.contrastive_loss(e, labels, normalize_embeddings=False,
                                            backend=backend))


@pytest.mark.parametrize("backend", ["c", "numba"])
def test_a_single_weight_is_a_factor_not_an_array(backend):
    """A (1,) / () weight with mean or sum is applied as a factor: no weight array of
    the input's size on the host (a (1,) weight on 1e6 float64 made an 8 MB copy),
    and the value and gradient of the materialised weight, 0 and negatives included."""
    import tracemalloc
    if not fl.backends()[backend].available:
        pytest.skip(fl.backends()[backend].reason)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal(1_000_000), rng.standard_normal(1_000_000)
    for w in (np.array([2.5]), np.array(0.0), 3.0, np.array([-1.0])):
        full = np.full(x.shape, float(np.asarray(w).reshape(-1)[0]))
        for name in ("mse_loss", "huber_loss", "binary_cross_entropy_with_logits"):
            yy = (y > 0).astype(float) if name.startswith("binary") else y
            for reduction in ("mean", "sum"):
                got = getattr(fl, name)(x, yy, weight=w, reduction=reduction, return_grad=True,
                                        backend=backend)
                want = getattr(fl, name)(x, yy, weight=full, reduction=reduction,
                                         return_grad=True, backend="numpy")
                np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
                np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
    fl.mse_loss(x, y, weight=np.array([2.0]), backend=backend)      # (compiled first)
    tracemalloc.start()
    try:
        fl.mse_loss(x, y, weight=np.array([2.0]), return_grad=True, backend=backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000 + 1_000_000      # the gradient (8 MB) and no weight copy


@pytest.mark.parametrize("backend", ["c", "numba"])
def test_periodic_weight_pos_weight_and_q_are_read_not_materialised(backend):
    """A weight / pos_weight / q that broadcasts along leading axes ((C,) or (1, C)
    over (N, C)) is read periodically by the kernels, as on the GPU: the same values
    and gradients as the materialised operand, for every reduction and dtype, and no
    operand of the input's size on the host (a (C,) weight over 1e6 float64 elements
    made an 8 MB copy).  Strided and leading-axis broadcasts ((N, 1)) still work."""
    import tracemalloc
    if not fl.backends()[backend].available:
        pytest.skip(fl.backends()[backend].reason)
    rng = np.random.default_rng(5)
    n, c = 333, 12
    w_full_buffer = rng.random(2 * c) - 0.2
    cases = [
        ("mse_loss", {"weight": w_full_buffer[:c]}),
        ("mse_loss", {"weight": w_full_buffer[::2][None, :]}),          # strided, (1, C)
        ("l1_loss", {"weight": rng.random((n, 1))}),                     # not periodic
        ("huber_loss", {"weight": w_full_buffer[:c], "delta": 0.7}),
        ("quantile_loss", {"q": rng.random(c) * 0.8 + 0.1}),
        ("quantile_loss", {"q": rng.random(c) * 0.8 + 0.1, "weight": w_full_buffer[:c]}),
        ("binary_cross_entropy_with_logits", {"pos_weight": rng.random(c) * 3}),
        ("binary_cross_entropy_with_logits", {"pos_weight": rng.random((1, c)) * 3,
                                              "weight": w_full_buffer[c:]}),
        ("sigmoid_focal_loss", {"weight": w_full_buffer[c:]}),
    ]
    for dtype in (np.float64, np.float32):
        x = rng.standard_normal((n, c)).astype(dtype)
        y = rng.standard_normal((n, c)).astype(dtype)
        for name, kwargs in cases:
            yy = (y > 0).astype(dtype) if "binary" in name or "focal" in name else y
            for reduction in ("mean", "sum", "none"):
                got = getattr(fl, name)(x, yy, reduction=reduction, return_grad=True,
                                        backend=backend, **kwargs)
                full = {k: (np.broadcast_to(v, x.shape).copy()
                            if k in ("weight", "pos_weight") else v)
                        for k, v in kwargs.items()}
                want = getattr(fl, name)(x, yy, reduction=reduction, return_grad=True,
                                         backend=backend, **full)
                ref = getattr(fl, name)(x.astype(np.float64), yy.astype(np.float64),
                                        reduction=reduction, return_grad=True,
                                        backend="numpy", **kwargs)
                tol = 1e-12 if dtype == np.float64 else 2e-6
                for g, w, r in zip(got, want, ref):
                    assert np.asarray(g).dtype == dtype
                    np.testing.assert_allclose(g, w, rtol=tol, atol=tol,
                                               err_msg=f"{name} {kwargs} {reduction}")
                    np.testing.assert_allclose(g, r, rtol=1e-9 if tol < 1e-9 else 1e-4,
                                               atol=1e-9 if tol < 1e-9 else 1e-5,
                                               err_msg=f"{name} {kwargs} {reduction} ref")
    x, y = rng.standard_normal((100_000, 10)), rng.standard_normal((100_000, 10))
    w, q, pw = rng.random(10), rng.random(10) * 0.8 + 0.1, rng.random(10)
    calls = [lambda: fl.mse_loss(x, y, weight=w, return_grad=True, backend=backend),
             lambda: fl.quantile_loss(x, y, q=q, return_grad=True, backend=backend),
             lambda: fl.binary_cross_entropy_with_logits(x, (y > 0) * 1.0, pos_weight=pw,
                                                         return_grad=True, backend=backend)]
    for call in calls:
        call()                      # (compiled first)
        target_copy = 8_000_000 if call is calls[2] else 0   # (y > 0) * 1.0 itself
        tracemalloc.start()
        try:
            call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8_000_000 + target_copy + 1_000_000   # the gradient, no operand copy
