"""Bad input to the overlap losses: a clear error naming the argument, raised
before any kernel runs (the backends here never see the call)."""
import numpy as np
import pytest

import fastloss as fl

from conftest import to_device

X = np.zeros((2, 3, 4, 5), np.float32)
Y = np.zeros((2, 4, 5), np.uint8)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(input=np.zeros((2, 3), np.float32), target=np.zeros(2, np.uint8)), ValueError,
     ["input", "(N, C, *spatial)"]),
    (dict(input=np.zeros((2, 1, 4), np.float32), target=np.zeros((2, 4), np.uint8),
          activation="softmax"), ValueError, ["activation", "single channel"]),
    (dict(target=np.full((2, 4, 5), 3, np.uint8)), ValueError,
     ["target", "class index 3", "(0, 0, 0)", "[0, 3)"]),
    (dict(target=np.full((2, 4, 5), -1, np.int64), ignore_index=255), ValueError,
     ["target", "-1", "ignore_index=255"]),
    (dict(input=np.zeros((2, 1, 4), np.float32), target=np.full((2, 4), 2, np.int32)),
     ValueError, ["target", "class index 2", "[0, 2)"]),
    (dict(target=np.zeros((2, 3, 4, 6), np.uint8)), ValueError,
     ["target", "(2, 4, 5)", "(2, 3, 4, 5)", "(2, 3, 4, 6)"]),
    (dict(target=np.zeros((2, 4, 5), np.float32)), TypeError, ["target", "integers", "float32"]),
    (dict(target=np.zeros((2, 3, 4, 5), np.uint8), ignore_index=0), ValueError,
     ["ignore_index", "class-index targets"]),
    (dict(weight=[1.0, 2.0]), ValueError, ["weight", "3 values", "(2,)"]),
    (dict(weight=[1.0, -2.0], include_background=False), ValueError, ["weight", "≥ 0"]),
    (dict(weight=[1.0, np.nan, 1.0]), ValueError, ["weight", "finite"]),
    (dict(smooth_nr=-1e-5), ValueError, ["smooth_nr", "≥ 0"]),
    (dict(smooth_dr=float("inf")), ValueError, ["smooth_dr"]),
    (dict(activation="relu"), ValueError, ["activation", "relu"]),
    (dict(reduction="avg"), ValueError, ["reduction", "avg"]),
    (dict(batch="yes"), TypeError, ["batch"]),
    (dict(ignore_index=1.5), TypeError, ["ignore_index"]),
    (dict(input=np.zeros((2, 3, 4, 5), np.int32)), TypeError, ["input", "float32 or float64"]),
])
def test_dice_errors(kwargs, error, words):
    args = dict(input=X, target=Y)
    args.update(kwargs)
    with pytest.raises(error) as info:
        fl.dice_loss(args.pop("input"), args.pop("target"), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("name,kwargs,words", [
    ("tversky_loss", dict(alpha=-0.1), ["alpha", "≥ 0"]),
    ("tversky_loss", dict(beta=float("nan")), ["beta"]),
    ("tversky_loss", dict(gamma=0.0), ["gamma", "> 0"]),
    ("generalized_dice_loss", dict(w_type="cube"), ["w_type", "cube"]),
    ("jaccard_loss", dict(squared_pred=1), ["squared_pred"]),
])
def test_loss_parameters(name, kwargs, words):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(fl, name)(X, Y, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_gpu_arrays_to_a_cpu_backend_and_mixed_devices():
    with pytest.raises(TypeError, match="GPU"):
        fl.dice_loss(to_device(X), to_device(Y), backend="c")
    with pytest.raises(TypeError, match="different devices"):
        fl.dice_loss(to_device(X), Y)


def test_label_error_comes_before_any_kernel(monkeypatch):
    """The scan raises; the overlap kernel is never called."""
    from fastloss.kernels import native

    def fail(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(native, "overlap", fail)
    y = Y.copy()
    y[1, 2, 3] = 7
    with pytest.raises(ValueError, match=r"class index 7 at position \(1, 2, 3\)"):
        fl.dice_loss(X, y, backend="c")
