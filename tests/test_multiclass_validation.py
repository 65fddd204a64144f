"""Bad input to the multi-class losses: a clear error naming the argument, raised
before any kernel runs, whatever the backend."""
import re

import numpy as np
import pytest

import fastloss as fl

from conftest import backend_param, to_device, to_host

HOST_BACKENDS = [backend_param(b) for b in ("c", "numba", "numpy")]


def _x(shape=(4, 3, 5)):
    return np.random.default_rng(0).normal(size=shape)


def _y(shape=(4, 5), classes=3):
    return np.random.default_rng(1).integers(0, classes, size=shape)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name", ["cross_entropy", "nll_loss", "softmax_focal_loss"])
def test_label_out_of_range_names_value_and_position(backend, name):
    y = _y()
    y[2, 3] = 7
    y[3, 0] = -5
    with pytest.raises(ValueError, match=r"target: class index 7 at position \(2, 3\) is outside "
                                         r"\[0, 3\) and is not ignore_index=-100"):
        getattr(fl, name)(_x(), y, backend=backend)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_negative_label_and_custom_ignore(backend):
    y = _y()
    y[0, 1] = -100
    with pytest.raises(ValueError, match=r"class index -100 at position \(0, 1\).*ignore_index=-1"):
        fl.cross_entropy(_x(), y, ignore_index=-1, backend=backend)
    y[0, 1] = -1
    assert np.isfinite(fl.cross_entropy(_x(), y, ignore_index=-1, backend=backend))


@pytest.mark.parametrize("backend", [backend_param(b) for b in ("c", "numba")])
def test_bad_label_leaves_outputs_unwritten(backend):
    """The scan runs first: nothing is computed for a batch with a bad label."""
    x = _x((2, 3))
    y = np.array([0, 3])
    x_before = x.copy()
    with pytest.raises(ValueError, match=r"class index 3 at position \(1,\)"):
        fl.cross_entropy(x, y, return_grad=True, backend=backend)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name", ["multi_margin_loss", "multiclass_hinge_loss"])
def test_losses_without_ignore_index_check_every_label(backend, name):
    y = _y((4,))
    y[2] = -100
    with pytest.raises(ValueError, match=r"class index -100 at position \(2,\) is outside "
                                         r"\[0, 3\)$"):
        getattr(fl, name)(_x((4, 3)), y, backend=backend)


def test_float_labels_rejected():
    with pytest.raises(TypeError, match="target: expected integer class indices or class "
                                        "probabilities of the input's shape"):
        fl.cross_entropy(_x(), _y().astype(np.float64))
    with pytest.raises(TypeError, match="target: expected integer class indices, got dtype "
                                        "float64"):
        fl.nll_loss(_x(), _y().astype(np.float64))
    with pytest.raises(TypeError, match="target: expected integer class indices"):
        fl.nll_loss(_x(), _x())   # same shape but nll has no probability targets
    with pytest.raises(TypeError, match="target: expected integer"):
        fl.cross_entropy(_x(), np.zeros((4, 5), bool))


def test_target_shapes():
    with pytest.raises(ValueError, match=r"target: class indices must have shape \(4, 5\).*"
                                         r"got \(4,\)"):
        fl.cross_entropy(_x(), _y((4,)))
    with pytest.raises(TypeError, match="class probabilities of the input's shape"):
        fl.cross_entropy(_x(), np.full((4, 3, 6), 1 / 3))   # wrong-shape probabilities
    with pytest.raises(ValueError, match=r"target: class indices must have shape \(\)"):
        fl.cross_entropy(_x((3,)), np.array([1]))


def test_input_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"input: expected shape \(C,\), \(N, C\) or"):
        fl.cross_entropy(np.float64(1.0), np.int64(0))
    with pytest.raises(ValueError, match=r"input: expected shape \(C,\) or \(N, C\), got "
                                         r"\(4, 3, 5\)"):
        fl.multi_margin_loss(_x(), _y())
    with pytest.raises(ValueError, match=r"input: expected shape \(C,\) or \(N, C\)"):
        fl.multiclass_hinge_loss(_x(), _y())
    with pytest.raises(ValueError, match="input: needs at least one class"):
        fl.cross_entropy(np.zeros((4, 0)), np.zeros(4, np.int64))
    with pytest.raises(TypeError, match="input: expected a float32 or float64 array, got "
                                        "dtype int64"):
        fl.cross_entropy(_y((4, 3)), _y((4,)))


def test_weight_and_alpha():
    with pytest.raises(ValueError, match=r"weight: expected shape \(3,\), one value per class, "
                                         r"got \(4,\)"):
        fl.cross_entropy(_x(), _y(), weight=np.ones(4))
    with pytest.raises(ValueError, match="weight: every value must be finite"):
        fl.cross_entropy(_x(), _y(), weight=np.array([1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"alpha: expected shape \(3,\)"):
        fl.softmax_focal_loss(_x(), _y(), alpha=np.ones(2))
    with pytest.raises(ValueError, match="alpha: per-class values must be ≥ 0"):
        fl.softmax_focal_loss(_x(), _y(), alpha=np.array([0.5, -1.0, 0.5]))
    with pytest.raises(ValueError, match="alpha: expected a finite value ≥ 0"):
        fl.softmax_focal_loss(_x(), _y(), alpha=-0.5)


def test_hyper_parameters():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing"):
            fl.cross_entropy(_x(), _y(), label_smoothing=bad)
    with pytest.raises(TypeError, match="ignore_index: expected an integer, got 1.5"):
        fl.cross_entropy(_x(), _y(), ignore_index=1.5)
    with pytest.raises(ValueError, match="z_loss: expected a finite value ≥ 0"):
        fl.cross_entropy(_x(), _y(), z_loss=-1.0)
    with pytest.raises(ValueError, match="gamma: expected a finite value ≥ 0"):
        fl.softmax_focal_loss(_x(), _y(), gamma=-1.0)
    for p in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match="p: expected 1 or 2"):
            fl.multi_margin_loss(_x((4, 3)), _y((4,)), p=p)
    with pytest.raises(ValueError, match="margin: expected a finite value"):
        fl.multi_margin_loss(_x((4, 3)), _y((4,)), margin=float("inf"))
    with pytest.raises(ValueError, match="margin: expected a finite value > 0"):
        fl.multiclass_hinge_loss(_x((4, 3)), _y((4,)), margin=0.0)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        fl.cross_entropy(_x(), _y(), reduction="avg")
    with pytest.raises(TypeError, match="return_grad: expected True or False"):
        fl.cross_entropy(_x(), _y(), return_grad=1)


def test_probability_targets_reject_ignore_index():
    p = np.full((4, 3, 5), 1 / 3)
    with pytest.raises(ValueError, match="ignore_index: not supported with probability targets"):
        fl.cross_entropy(_x(), p, ignore_index=0)
    assert np.isfinite(fl.cross_entropy(_x(), p, ignore_index=-1))


@pytest.mark.parametrize("backend", [backend_param("cuda")])
def test_gpu_and_host_mixed(backend):
    with pytest.raises(TypeError, match="inputs on different devices"):
        fl.cross_entropy(to_device(_x()), _y())
    with pytest.raises(TypeError, match="weight: on the host but the input is not"):
        fl.cross_entropy(to_device(_x()), to_device(_y()), weight=np.ones(3))
    with pytest.raises(TypeError, match="runs on the CPU only"):
        fl.cross_entropy(to_device(_x()), to_device(_y()), backend="c")
    y = _y()
    y[1, 1] = 9
    with pytest.raises(ValueError, match=r"class index 9 at position \(1, 1\)"):
        fl.cross_entropy(to_device(_x()), to_device(y))


ALL_BACKENDS = [backend_param(b) for b in ("c", "numba", "numpy", "cuda")]
INTEGER_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                  np.uint64]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("loss", ["cross_entropy", "dice_loss"])
def test_labels_at_the_ends_of_every_integer_dtype_are_reported(backend, dtype, loss):
    """The extremes of each label dtype are out of range and reported with their own
    value: none wraps to ignore_index on the way to the kernel (uint64 2**64 - 100
    once read as -100 and was silently ignored)."""
    info = np.iinfo(dtype)
    ends = sorted({info.min, info.max, info.max - 99} - {0, 1})
    x = _x((4, 3)) if loss == "cross_entropy" else _x((2, 3, 4))
    if backend == "cuda" and loss == "dice_loss" and dtype not in (np.int32, np.int64,
                                                                   np.uint8):
        # the GPU overlap kernels read these three label dtypes; others are refused
        # (a conversion would be a hidden copy on the device)
        with pytest.raises(TypeError, match=rf"target: labels of dtype {np.dtype(dtype)} "
                                            r"not supported .*labels: int32, int64, uint8"):
            fl.dice_loss(to_device(x), to_device(np.zeros((2, 4), dtype)), backend=backend)
        return
    if dtype == np.uint64:
        ends += [2**63, 2**64 - 100]
    for end in ends:
        y = np.array([0, 1, 2, 1] if loss == "cross_entropy" else [[0, 1, 2, 1]] * 2, dtype)
        position = (1,) if loss == "cross_entropy" else (0, 1)
        y[position] = end
        args = (to_device(x), to_device(y)) if backend == "cuda" else (x, y)
        with pytest.raises(ValueError, match=rf"class index {end} at position "
                                             rf"{re.escape(str(position))} is outside"):
            getattr(fl, loss)(*args, backend=backend)
        y[position] = 2      # and in range, the dtype computes what int64 labels do
        args = (to_device(x), to_device(y)) if backend == "cuda" else (x, y)
        want = getattr(fl, loss)(x, y.astype(np.int64), backend="numpy")
        np.testing.assert_allclose(np.asarray(to_host(getattr(fl, loss)(*args, backend=backend))),
                                   want, rtol=1e-12)
