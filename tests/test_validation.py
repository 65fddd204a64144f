"""Bad input raises a clear error naming the argument, before any kernel runs."""
import numpy as np
import pytest

import fastloss as fl
from fastloss.losses.elementwise import ELEMENTWISE_LOSSES

from conftest import available, to_device

X = np.linspace(0.1, 0.9, 12).reshape(3, 4)
Y = np.full((3, 4), 0.5)
ALL = sorted(ELEMENTWISE_LOSSES)


def _args(name):
    if name == "hinge_loss":
        return X, np.where(X > 0.5, 1.0, -1.0)
    return X, Y


@pytest.mark.parametrize("name", ALL)
def test_shape_mismatch(name):
    x, y = _args(name)
    with pytest.raises(ValueError, match=r"target: shape \(4, 3\) does not match input shape"):
        getattr(fl, name)(x, y.T.copy())


@pytest.mark.parametrize("name", ALL)
def test_unknown_reduction(name):
    with pytest.raises(ValueError, match="reduction: expected one of 'mean', 'sum', 'none', got 'avg'"):
        getattr(fl, name)(*_args(name), reduction="avg")


@pytest.mark.parametrize("name", ALL)
def test_weight_that_does_not_broadcast(name):
    with pytest.raises(ValueError, match=r"weight: shape \(3,\) does not broadcast to the input"):
        getattr(fl, name)(*_args(name), weight=np.ones(3))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.arange(12).reshape(3, 4), np.ones((3, 4), np.complex64),
                                 np.array([["a"] * 4] * 3), np.ones((3, 4), np.float16)],
                         ids=["int", "complex", "str", "float16"])
def test_input_dtype(name, bad):
    with pytest.raises(TypeError, match=r"input: expected a (float32 or float64|real numeric) array"):
        getattr(fl, name)(bad, _args(name)[1])


@pytest.mark.parametrize("name", ALL)
def test_complex_target(name):
    with pytest.raises(TypeError, match="target: expected a real numeric array, got dtype complex128"):
        getattr(fl, name)(X, Y.astype(complex))


@pytest.mark.parametrize("name", ALL)
def test_unknown_backend(name):
    with pytest.raises(ValueError, match="backend: unknown backend 'gpu'"):
        getattr(fl, name)(*_args(name), backend="gpu")


@pytest.mark.parametrize("name", ALL)
def test_return_grad_must_be_bool(name):
    with pytest.raises(TypeError, match="return_grad: expected True or False"):
        getattr(fl, name)(*_args(name), return_grad="yes")


@pytest.mark.parametrize("fn,kwargs,message", [
    (fl.huber_loss, {"delta": 0.0}, r"delta: expected a finite value > 0, got 0.0"),
    (fl.huber_loss, {"delta": -1}, r"delta: expected a finite value > 0, got -1.0"),
    (fl.huber_loss, {"delta": float("inf")}, r"delta: expected a finite value > 0"),
    (fl.smooth_l1_loss, {"beta": -0.5}, r"beta: expected a finite value ≥ 0, got -0.5"),
    (fl.quantile_loss, {"q": 0.0}, r"q: expected a value in the open interval \(0, 1\), got 0.0"),
    (fl.quantile_loss, {"q": 1.5}, r"q: expected a value in the open interval \(0, 1\)"),
    (fl.quantile_loss, {"q": np.array([0.5, 0.2, 1.0, 0.3])}, r"q: every quantile must lie in"),
    (fl.quantile_loss, {"q": np.array([0.5, 0.2])}, r"q: expected a float in \(0, 1\) or a 1-D array of length"),
    (fl.sigmoid_focal_loss, {"gamma": -1.0}, r"gamma: expected a finite value ≥ 0, got -1.0"),
    (fl.sigmoid_focal_loss, {"alpha": 2.0}, r"alpha: expected a value in \[0, 1\]"),
    (fl.huber_loss, {"delta": "1"}, r"delta: expected a real number, got '1'"),
    (fl.huber_loss, {"delta": float("nan")}, r"delta: expected a number, got nan"),
])
def test_parameter_out_of_range(fn, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fn(X, Y, **kwargs)


def test_hinge_margin_and_squared():
    x, y = _args("hinge_loss")
    with pytest.raises(ValueError, match="margin: expected a finite value > 0"):
        fl.hinge_loss(x, y, margin=0)
    with pytest.raises(TypeError, match="squared: expected True or False"):
        fl.hinge_loss(x, y, squared=1)


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_bce_probabilities_out_of_range(backend):
    if not available(backend):
        pytest.skip(fl.backends()[backend].reason)
    x = X.copy()
    x[1, 2] = 1.5
    with pytest.raises(ValueError, match=r"input: every element must lie in \[0, 1\]; element \(1, 2\) is 1.5"):
        fl.binary_cross_entropy(x, Y, backend=backend)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"element \(1, 2\) is nan"):
        fl.binary_cross_entropy(x, Y, backend=backend)
    y = Y.copy()
    y[0, 0] = -0.1
    with pytest.raises(ValueError, match=r"target: every element must lie in \[0, 1\]; element \(0, 0\)"):
        fl.binary_cross_entropy(X, y, backend=backend)


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_hinge_targets_must_be_plus_minus_one(backend):
    if not available(backend):
        pytest.skip(fl.backends()[backend].reason)
    x, y = _args("hinge_loss")
    y = y.copy()
    y[2, 3] = 0.0
    with pytest.raises(ValueError, match=r"target: every element must be -1 or \+1; element \(2, 3\) is 0.0"):
        fl.hinge_loss(x, y, backend=backend)


def test_gpu_array_to_a_cpu_backend():
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    dx, dy = to_device(X), to_device(Y)
    for backend in ("c", "numba", "numpy"):
        with pytest.raises(TypeError, match=f"GPU arrays but backend='{backend}' runs on the CPU only"):
            fl.mse_loss(dx, dy, backend=backend)


def test_host_array_to_the_cuda_backend():
    with pytest.raises(TypeError, match="backend='cuda' needs GPU arrays"):
        fl.mse_loss(X, Y, backend="cuda")


def test_inputs_on_different_devices():
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    with pytest.raises(TypeError, match="inputs on different devices: input on the GPU, target on the host"):
        fl.mse_loss(to_device(X), Y)
    with pytest.raises(TypeError, match="weight on the GPU"):
        fl.mse_loss(X, Y, weight=to_device(np.ones(4)))


def test_validation_happens_before_any_kernel(monkeypatch):
    """A bad parameter never reaches a backend."""
    from fastloss import _dispatch
    calls = []
    monkeypatch.setattr(_dispatch, "select", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        fl.huber_loss(X, Y, delta=-1)
    with pytest.raises(ValueError):
        fl.mse_loss(X, Y[:2])
    assert calls == []


# ---- errors that once named nothing, or refused what can be computed (issue 17) -----------

@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_big_endian_arrays_are_computed(backend):
    if not fl.backends()[backend].available:
        pytest.skip(fl.backends()[backend].reason)
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 3)), rng.random((4, 3))
    labels = np.array([0, 1, 2, 0])
    volume = rng.random((2, 3, 4))
    calls = [
        (fl.mse_loss, (x, y)), (fl.cross_entropy, (x, labels)),
        (fl.contrastive_loss, (x, np.array([0, 1, 0, 1]))),
        (fl.dice_loss, (volume, np.zeros((2, 4), np.int64))),
    ]
    for fn, args in calls:
        want = fn(*args, backend=backend, return_grad=True)
        swapped = [a.astype(a.dtype.newbyteorder(">")) for a in args]
        before = [a.copy() for a in swapped]
        got = fn(*swapped, backend=backend, return_grad=True)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        for a, b in zip(swapped, before):
            assert a.dtype.byteorder == ">" and np.array_equal(a, b)   # inputs untouched


def test_unclear_errors_now_name_their_argument():
    x, volume = np.random.rand(4, 3), np.random.rand(2, 3, 4)
    labels, vlabels = np.array([0, 1, 2, 0]), np.zeros((2, 4), np.int64)
    with pytest.raises(ValueError, match="ignore_index: expected an integer in int64's range"):
        fl.cross_entropy(x, labels, ignore_index=2**63)
    with pytest.raises(ValueError, match="ignore_index: expected an integer in int64's range"):
        fl.dice_loss(volume, vlabels, ignore_index=-2**64)
    with pytest.raises(TypeError, match="weight: expected a number or a sequence of numbers"):
        fl.dice_loss(volume, vlabels, weight="abc")
    with pytest.raises(TypeError, match=r"q: expected a float in \(0, 1\) or a 1-D array.*bool"):
        fl.quantile_loss(x, x, q=True)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="input: dtype torch.bfloat16 is not supported by the "
                                        "core API.*fastloss.torch"):
        fl.mse_loss(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16))


def test_overlap_losses_take_any_number_of_spatial_axes():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 2, 2, 2, 2))            # four spatial axes, as MONAI allows
    labels = rng.integers(0, 3, (2, 2, 2, 2, 2))
    flat = fl.dice_loss(x.reshape(2, 3, 16), labels.reshape(2, 16), backend="numpy")
    np.testing.assert_allclose(fl.dice_loss(x, labels), flat, rtol=1e-12)
    with pytest.raises(ValueError, match=r"input: expected shape \(N, C, \*spatial\) with one "
                                         r"or more spatial axes"):
        fl.dice_loss(x[:, :, 0, 0, 0, 0], labels[:, 0, 0, 0])
