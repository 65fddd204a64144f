"""Argument checks shared by every loss and backend: run once, before any kernel.

Every error names the argument, what it got and what was expected.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np

from ._dispatch import is_gpu_array
from ._typing import ArrayLike

REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})   # a set: `in` hashes


class ArrayMeta:
    """Shape, dtype and placement of an argument, read without copying it.

    Host arrays are converted with ``np.asarray`` (zero-copy for NumPy arrays
    and CPU tensors); GPU arrays are described from their
    ``__cuda_array_interface__`` (or a simulated device array's attributes)
    and left where they are.
    """

    __slots__ = ("array", "shape", "dtype", "on_gpu", "contiguous")
    array: Any                  # the host array (np.asarray of the argument) or the GPU object
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    on_gpu: bool
    contiguous: bool

    def __init__(self, obj: ArrayLike, name: str) -> None:
        if is_gpu_array(obj):
            self.on_gpu = True
            self.array = obj
            if hasattr(obj, "__cuda_array_interface__"):
                cai = obj.__cuda_array_interface__
                self.shape = tuple(cai["shape"])
                self.dtype = np.dtype(cai["typestr"])
                strides = cai.get("strides")
                self.contiguous = strides is None or strides == _c_strides(self.shape,
                                                                           self.dtype.itemsize)
            else:  # numba's simulator
                self.shape = tuple(obj.shape)
                self.dtype = np.dtype(obj.dtype)
                self.contiguous = bool(obj.is_c_contiguous())
        else:
            self.on_gpu = False
            try:
                self.array = np.asarray(obj)
            except Exception as exc:  # e.g. a tensor that requires grad
                dtype = str(getattr(obj, "dtype", ""))
                if "float16" in dtype:      # torch.bfloat16 / torch.float16: no NumPy view
                    raise TypeError(f"{name}: dtype {dtype} is not supported by the core API "
                                    f"(float32 or float64); cast it (.float()), or use "
                                    f"fastloss.torch, which computes float16 and bfloat16 "
                                    f"tensors in float32") from exc
                raise TypeError(f"{name}: cannot read {type(obj).__name__} as an array "
                                f"({exc})") from exc
            if not self.array.dtype.isnative:   # big-endian data: computed, as a native copy
                self.array = self.array.astype(self.array.dtype.newbyteorder("="))
            self.shape = self.array.shape
            self.dtype = self.array.dtype
            self.contiguous = self.array.flags.c_contiguous
        if self.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected a real numeric array, got dtype {self.dtype} "
                            f"({type(obj).__name__})")

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


def check_input(obj: ArrayLike, name: str = "input") -> ArrayMeta:
    """The first argument of a loss: a float32 or float64 array."""
    meta = ArrayMeta(obj, name)
    if meta.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {meta.dtype}")
    return meta


def check_same_place(metas: dict[str, ArrayMeta]) -> None:
    """All arrays on the host, or all on the GPU: no silent device copies."""
    places = {name: m.on_gpu for name, m in metas.items()}
    if len(set(places.values())) > 1:
        gpu = [n for n, g in places.items() if g]
        host = [n for n, g in places.items() if not g]
        raise TypeError(f"inputs on different devices: {', '.join(gpu)} on the GPU, "
                        f"{', '.join(host)} on the host; move them to one device first")


def check_shape(meta: ArrayMeta, shape: Sequence[int], name: str,
                expected_name: str = "input") -> None:
    if meta.shape != tuple(shape):
        raise ValueError(f"{name}: shape {meta.shape} does not match {expected_name} shape "
                         f"{tuple(shape)}")


def check_broadcastable(meta: ArrayMeta, shape: Sequence[int], name: str) -> None:
    """``meta`` must broadcast to ``shape`` without changing it."""
    try:
        result = np.broadcast_shapes(meta.shape, tuple(shape))
    except ValueError:
        result = None
    if result != tuple(shape):
        raise ValueError(f"{name}: shape {meta.shape} does not broadcast to the input shape "
                         f"{tuple(shape)}")


def check_reduction(reduction: object) -> None:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'mean', 'sum', 'none', got {reduction!r}")


def check_real(value: object, name: str) -> float:
    if type(value) is float and value == value:     # the common case, without the ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name}: expected a number, got nan")
    return value


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    if type(value) is float and (0.0 < value < math.inf or (allow_zero and value == 0.0)):
        return value                                        # the common case
    value = check_real(value, name)
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite value {bound}, got {value!r}")
    return value


def check_open_unit(value: object, name: str) -> float:
    value = check_real(value, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}: expected a value in the open interval (0, 1), got {value!r}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
