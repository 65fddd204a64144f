"""Same type out as in: every public loss returns the array type of its first argument.

- NumPy (or anything else on the host) in: NumPy arrays and NumPy scalars out.
- A PyTorch tensor in: tensors on the tensor's device (CPU results wrap the
  NumPy result, zero-copy; CUDA results wrap the device array, zero-copy).
- A CuPy array in: CuPy arrays (zero-copy views of the device results).
- A Numba device array (or any other ``__cuda_array_interface__`` object) in:
  Numba device arrays.

A scalar result of a GPU call is a 0-d array on the same device.  Where a
family computes its final scalar on the host (overlap and pairwise losses do
their O(N·C) arithmetic in float64 NumPy), that scalar is copied back to the
device: the call has synchronised already, in the backend.

This module is the one place that knows the array libraries; it imports
neither torch nor CuPy unless it is handed one of their arrays.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import numpy as np

from ._dispatch import is_gpu_array
from ._typing import F

__all__ = ["same_type_as_input"]


#: per array type: its library, "numpy" (anything on the host), "torch", "cupy" or
#: "numba" (any other GPU array); decided once per type
_LIBRARY_OF_TYPE: dict[type, str] = {np.ndarray: "numpy"}


def _library(obj: object) -> str:
    """'numpy' (host), 'torch', 'cupy' or 'numba' (any other GPU array)."""
    cls = type(obj)
    library = _LIBRARY_OF_TYPE.get(cls)
    if library is None:
        module = cls.__module__
        if module.startswith("torch"):
            library = "torch"
        elif module.startswith("cupy"):
            library = "cupy"
        else:
            library = "numba" if is_gpu_array(obj) else "numpy"
            if library == "numpy" and not (module.startswith("numpy") or module == "builtins"):
                return library    # an unknown type: the instance decides, every time
        _LIBRARY_OF_TYPE[cls] = library
    return library


def _check_tensor(tensor: Any, name: str) -> None:
    if tensor.requires_grad:
        raise TypeError(f"{name}: a tensor that requires grad; the core API does not record "
                        f"autograd. Use fastloss.torch (same names as torch.nn.functional), "
                        f"or pass {name}.detach()")


def _numpy_view(value: Any) -> Any:
    """A CPU tensor as the NumPy array sharing its memory; anything else as it is
    (a tensor NumPy cannot view, such as bfloat16, too: the loss then names it in
    its error)."""
    if _library(value) != "torch":
        return value
    try:
        return value.numpy()
    except (TypeError, RuntimeError):
        return value


def _tensor_from_host(value: Any) -> Any:
    import torch   # noqa: PLC0415 (only ever called with torch loaded)
    return torch.from_numpy(np.asarray(value))


def _converter(first: Any) -> Callable[[Any], Any]:
    """A function turning one result (NumPy or Numba device array) into ``first``'s type."""
    library = _library(first)
    if library == "torch":
        import torch   # noqa: PLC0415
        device = first.device
        if device.type == "cpu":
            return _tensor_from_host
        return lambda v: torch.as_tensor(v, device=device)
    if library == "cupy":
        import cupy   # noqa: PLC0415
        return cupy.asarray
    from numba import cuda   # noqa: PLC0415

    def to_device(v: Any) -> Any:
        if isinstance(v, (np.ndarray, np.generic)):
            return cuda.to_device(np.asarray(v))
        return v
    return to_device


@contextlib.contextmanager
def _ordered_with_stream_of(first: Any) -> Iterator[None]:
    """Order the call's kernels after the work queued on ``first``'s stream, and
    that stream's later work after the call's kernels, with two CUDA events: no
    host synchronisation.

    The kernels run on Numba's default stream; the caller's arrays belong to the
    stream their ``__cuda_array_interface__`` names (PyTorch's and CuPy's current
    stream).  Because the events order the two streams, the CUDA backend reads
    the arrays without Numba's own per-array ``stream.synchronize()`` on import
    (``as_cuda_array(..., sync=False)``).
    """
    try:
        stream_ptr = first.__cuda_array_interface__.get("stream")
    except (AttributeError, RuntimeError):
        stream_ptr = None
    from numba import config   # noqa: PLC0415
    if not stream_ptr or getattr(config, "ENABLE_CUDASIM"):
        yield
        return
    from numba import cuda   # noqa: PLC0415
    theirs, ours = cuda.external_stream(stream_ptr), cuda.default_stream()
    # (the ignores: mypy reads numba.cuda as the simulator, whose Event takes no timing)
    ready = cuda.event(timing=False)  # type: ignore[call-arg]
    ready.record(theirs)
    ready.wait(ours)
    try:
        yield
    finally:
        done = cuda.event(timing=False)  # type: ignore[call-arg]
        done.record(ours)
        done.wait(theirs)


def _convert(result: Any, convert: Callable[[Any], Any]) -> Any:
    if isinstance(result, tuple):
        return tuple(_convert(v, convert) for v in result)
    return convert(result)


def same_type_as_input(fn: F) -> F:
    """Decorate a public loss: results come back as its first argument's array type."""
    names = tuple(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first: Any = args[0] if args else kwargs.get(names[0])
        if type(first) is np.ndarray:     # the common case: nothing to convert
            return fn(*args, **kwargs)
        library = _library(first)
        if library == "numpy":
            return fn(*args, **kwargs)
        if library == "torch":
            for name, value in (*zip(names, args), *kwargs.items()):
                if _library(value) == "torch":
                    _check_tensor(value, name)
            if not first.is_cuda:   # host tensors: zero-copy NumPy views, no stream to order
                args = tuple(_numpy_view(v) for v in args)
                kwargs = {k: _numpy_view(v) for k, v in kwargs.items()}
                return _convert(fn(*args, **kwargs), _tensor_from_host)
        with _ordered_with_stream_of(first):
            result = fn(*args, **kwargs)
        return _convert(result, _converter(first))
    return wrapper  # type: ignore[return-value]
