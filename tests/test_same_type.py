"""Same type out as in: every public loss returns its first argument's array type.

NumPy in -> NumPy out; a torch tensor -> tensors; a Numba device array -> Numba
device arrays, a scalar result included (a 0-d device array).  CuPy goes through
the same converter (fastloss._convert); it is not installed on the CI machines.
"""
import numpy as np
import pytest

import fastloss as fl
from fastloss import testing

from fastloss._dispatch import is_gpu_array

from conftest import backend_param, to_device


def _calls():
    """(label, function, numpy args, kwargs): one call per public loss family shape."""
    rng = np.random.default_rng(0)
    x, y = testing.make_inputs("mse_loss", (4, 3), np.float64)
    labels = np.array([0, 1, 2, 1])
    seg = rng.standard_normal((2, 3, 4, 4))
    seg_labels = rng.integers(0, 3, (2, 4, 4)).astype(np.int64)
    b1, b2 = testing.make_boxes(3, np.float64)
    return [
        ("mse_loss", fl.mse_loss, (x, y), {}),
        ("cross_entropy", fl.cross_entropy, (x, labels), {}),
        ("dice_loss", fl.dice_loss, (seg, seg_labels), dict(activation="softmax")),
        ("generalized_box_iou_loss", fl.generalized_box_iou_loss, (b1, b2), {}),
        ("nt_xent_loss", fl.nt_xent_loss, (x, y), {}),
        ("contrastive_loss", fl.contrastive_loss, (x, labels), {}),
        ("triplet_margin_loss", fl.triplet_margin_loss, (x, y, x[::-1].copy()), {}),
    ]


CALLS = _calls()


def _leaves(result):
    if isinstance(result, tuple):
        for item in result:
            yield from _leaves(item)
    else:
        yield result


@pytest.mark.parametrize("label,fn,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_numpy_in_numpy_out(label, fn, args, kwargs, reduction):
    for item in _leaves(fn(*args, reduction=reduction, return_grad=True, **kwargs)):
        assert isinstance(item, (np.ndarray, np.generic)) and item.dtype == np.float64


@pytest.mark.parametrize("label,fn,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_tensor_in_tensor_out(label, fn, args, kwargs):
    torch = pytest.importorskip("torch")
    tensors = [torch.from_numpy(a) for a in args]
    value, grads = fn(*tensors, return_grad=True, **kwargs)
    ref_value, ref_grads = fn(*args, return_grad=True, **kwargs)
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    np.testing.assert_allclose(value.numpy(), ref_value, rtol=1e-12)
    for got, want in zip(_leaves(grads), _leaves(ref_grads)):
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("backend", [backend_param("cuda")])
@pytest.mark.parametrize("label,fn,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_device_array_in_device_array_out(label, fn, args, kwargs, backend):
    devices = [to_device(a) for a in args]
    for reduction in ("mean", "none"):
        result = fn(*devices, reduction=reduction, return_grad=True, backend=backend, **kwargs)
        ref = fn(*args, reduction=reduction, return_grad=True, **kwargs)
        for got, want in zip(_leaves(result), _leaves(ref)):
            assert is_gpu_array(got) and hasattr(got, "copy_to_host"), type(got)
            np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-10, atol=1e-12)


def test_gpu_calls_are_ordered_with_the_callers_stream_by_events(monkeypatch):
    """The CUDA kernels run on Numba's default stream; a call on arrays of another
    stream (PyTorch's or CuPy's current one, named in __cuda_array_interface__) waits
    for that stream's queued work, and that stream's later work waits for the call,
    through events: no host synchronisation.  Checked with stand-ins for the CUDA
    objects (the simulator has no streams)."""
    from numba import config, cuda

    from fastloss._convert import _ordered_with_stream_of

    log = []

    class Stream:
        def __init__(self, name):
            self.name = name

    class Event:
        def record(self, stream):
            log.append(("record", stream.name))

        def wait(self, stream):
            log.append(("wait", stream.name))

    class Array:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False),
                                    "version": 3, "stream": 7}

    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0, raising=False)
    monkeypatch.setattr(cuda, "external_stream",
                        lambda ptr: Stream(f"caller {ptr}"), raising=False)
    monkeypatch.setattr(cuda, "default_stream", lambda: Stream("numba"), raising=False)
    monkeypatch.setattr(cuda, "event", lambda timing=False: Event(), raising=False)
    with _ordered_with_stream_of(Array()):
        log.append(("kernels",))
    assert log == [("record", "caller 7"), ("wait", "numba"), ("kernels",),
                   ("record", "numba"), ("wait", "caller 7")]
    log.clear()
    Array.__cuda_array_interface__ = dict(Array.__cuda_array_interface__, stream=None)
    with _ordered_with_stream_of(Array()):      # the default stream: nothing to order
        log.append(("kernels",))
    assert log == [("kernels",)]
