"""fastloss: loss functions whose hot loops are compiled kernels.

    import fastloss as fl
    loss = fl.log_cosh_loss(pred, target)                  # C SIMD kernel, all cores
    loss, grad = fl.sigmoid_focal_loss(logits, labels, return_grad=True)
    fl.huber_loss(p, t, delta=0.5, reduction="none", backend="numba")
    fl.backends()                                          # what runs here, and why not

Importing this package loads neither Numba nor PyTorch and compiles nothing:
backends load on first use.
"""
from __future__ import annotations

from . import reference
from ._typing import Isa
from ._dispatch import BackendInfo, BackendUnavailable, backends, use_backend
from .losses.elementwise import (binary_cross_entropy, binary_cross_entropy_with_logits,
                                 hinge_loss, huber_loss, l1_loss, log_cosh_loss, mse_loss,
                                 quantile_loss, sigmoid_focal_loss, smooth_l1_loss)
from .losses.multiclass import (cross_entropy, multi_margin_loss, multiclass_hinge_loss, nll_loss,
                                softmax_focal_loss)
from .losses.boxes import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss
from .losses.overlap import (dice_from_stats, dice_grad, dice_loss, dice_stats,
                             generalized_dice_loss, jaccard_loss, tversky_loss)
from .losses.pairwise import (batch_hard_triplet_loss, contrastive_loss, info_nce_loss,
                              nt_xent_loss, pairwise_distances, triplet_margin_loss)

__version__ = "0.1.0"

__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss", "quantile_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
    "hinge_loss",
    "cross_entropy", "nll_loss", "softmax_focal_loss", "multi_margin_loss",
    "multiclass_hinge_loss",
    "dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
    "dice_stats", "dice_from_stats", "dice_grad",
    "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
    "pairwise_distances", "contrastive_loss", "triplet_margin_loss", "batch_hard_triplet_loss",
    "info_nce_loss", "nt_xent_loss",
    "backends", "use_backend", "BackendInfo", "BackendUnavailable",
    "set_num_threads", "get_num_threads", "isa", "set_isa", "reference", "__version__",
]


def set_num_threads(n: int | None) -> int:
    """Threads for the CPU kernels (C and Numba).  ``None``/0 restores the default:
    ``OMP_NUM_THREADS``, else the CPUs this process may run on.  Counts above 256
    (the C pool's limit) give 256; the Numba kernels use at most
    ``NUMBA_NUM_THREADS`` of them (fixed when Numba loads).  Results do not depend
    on it (fixed-block float64 sums).  Returns the count in effect for C."""
    from . import _threads
    return _threads.set(n)


def get_num_threads() -> int:
    """The thread count of the CPU kernels (see :func:`set_num_threads`)."""
    from . import _threads
    return _threads.get()


def isa() -> str | None:
    """The SIMD path the C kernels use ("baseline", "avx2", "avx512"), or None
    when the C extension is not built."""
    from .kernels import native
    return native.isa() if native.unavailable_reason() is None else None


def set_isa(name: Isa | None) -> str:
    """Force a SIMD path of the C kernels ("baseline", "avx2", "avx512"); None
    picks the best this CPU has.  The environment variable ``FASTLOSS_ISA`` sets
    the starting choice.  Returns the path in effect."""
    from .kernels import native
    reason = native.unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if name is not None and name not in native.ISA_NAMES:
        raise ValueError(f"name: expected one of {native.ISA_NAMES} or None, got {name!r}")
    return native.set_isa(name)
