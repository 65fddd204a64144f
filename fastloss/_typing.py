"""Type aliases of the public API, shared by every module that declares it.

The arrays are duck-typed: a loss takes a NumPy array (or anything
``np.asarray`` reads: lists, scalars, CPU tensors), a PyTorch tensor, a CuPy
array or a Numba device array (anything with ``__cuda_array_interface__``),
and returns results of its first argument's array type (see
:mod:`fastloss._convert`).  No static type spans all of those without
importing their libraries, so the array aliases are ``Any`` under names that
say what is meant; the option aliases are exact ``Literal`` types.

Nothing here is imported at run time beyond :mod:`typing`.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, TypeAlias, TypeVar

__all__ = ["ArrayLike", "Array", "Loss", "LossAndGrad", "LossAndGrads", "Reduction",
           "PairReduction", "Backend", "Metric", "Isa", "F"]

#: An input array: NumPy (or array-like), PyTorch tensor, CuPy, Numba device array.
ArrayLike: TypeAlias = Any
#: An array result, of the first argument's array type (a gradient: the input's
#: shape and dtype).
Array: TypeAlias = Any
#: A loss value: a scalar of the input's dtype (a NumPy scalar for host inputs,
#: a 0-d array or tensor on the GPU or for tensors), or an array for
#: ``reduction="none"``.
Loss: TypeAlias = Any
#: ``(loss, grad)``, what a loss returns with ``return_grad=True``.
LossAndGrad: TypeAlias = tuple[Loss, Array]
#: ``(loss, (grad, ...))``: a loss of several arrays with ``return_grad=True``, one
#: gradient per array argument, in argument order.
LossAndGrads: TypeAlias = tuple[Loss, tuple[Array, ...]]

Reduction: TypeAlias = Literal["mean", "sum", "none"]
#: the reductions of the pairwise losses that have pytorch-metric-learning's reducer
PairReduction: TypeAlias = Literal["mean", "sum", "none", "mean_nonzero"]
#: a backend by name; None: picked from the context, FASTLOSS_BACKEND and the inputs
Backend: TypeAlias = Literal["c", "numba", "cuda", "numpy"] | None
#: a distance of the pairwise losses (cosine: 1 - cos)
Metric: TypeAlias = Literal["euclidean", "sqeuclidean", "cosine"]
#: a SIMD path of the C kernels
Isa: TypeAlias = Literal["baseline", "avx2", "avx512"]

#: a function type, kept by signature-preserving decorators
F = TypeVar("F", bound=Callable[..., Any])
