"""fastloss losses as PyTorch functions with autograd: ``import fastloss.torch.functional as F``.

Names, argument order and defaults are those PyTorch users already type:
``torch.nn.functional`` (mse_loss, l1_loss, huber_loss, smooth_l1_loss,
binary_cross_entropy[_with_logits], cross_entropy, nll_loss,
multi_margin_loss, triplet_margin_loss), ``torchvision.ops``
(sigmoid_focal_loss and the box losses, default ``reduction="none"``) and
info-nce-pytorch (``info_nce``).  The other losses keep fastloss's core
arguments.  Every function takes CPU or CUDA tensors (CUDA through
``__cuda_array_interface__``, no host copy) and returns a tensor on the same
device; ``backend=`` picks a fastloss backend as in the core API.

Gradients: the forward runs the fused value+gradient kernel once and keeps the
gradient; the backward scales it by ``grad_output``.  With
``reduction="none"``, losses whose entries each depend on the whole batch (the
pair losses, and the overlap losses under softmax across classes) accept only
a ``grad_output`` with equal entries (per sample for the overlap losses); see
:func:`fastloss.torch._ops._scale`.  Second-order gradients
(``create_graph=True``) exist for the elementwise losses, cross_entropy and
nll_loss (:mod:`fastloss.torch._second_order`); through any other loss,
``create_graph=True`` raises.

Every function calls its loss's PyTorch operator, ``torch.ops.fastloss.<loss>``
(:mod:`fastloss.torch._ops`), so that torch.compile and torch.export see one
node per loss, with exact output shapes, and no graph break.
"""
from __future__ import annotations

from typing import Any

import torch

import fastloss as _fl
from fastloss._registry import REGISTRY

from . import _ops
from ._ops import SAME, UNIFORM, row

__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss", "quantile_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
    "hinge_loss",
    "cross_entropy", "nll_loss", "softmax_focal_loss", "multi_margin_loss",
    "multiclass_hinge_loss",
    "dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
    "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
    "contrastive_loss", "triplet_margin_loss", "batch_hard_triplet_loss", "info_nce_loss",
    "info_nce", "nt_xent_loss",
]

Tensor = torch.Tensor


def _reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's deprecated size_average/reduce arguments, resolved as PyTorch does."""
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction   # noqa: PLC0415 (PyTorch's own resolution, with its warning)
    return _reduction.legacy_get_string(size_average, reduce)


def _weighted(**tensors) -> dict[str, Any]:
    """The optional tensor options (weights) that are given: fastloss computes no
    gradient with respect to a weight, so one that requires grad is refused."""
    given = {}
    for name, value in tensors.items():
        if value is not None:
            if isinstance(value, Tensor) and value.requires_grad:
                raise ValueError(f"{name}: requires grad, but fastloss computes no gradient "
                                 f"with respect to {name}; detach it ({name}.detach())")
            given[name] = value
    return given


# ---- elementwise ---------------------------------------------------------------------

#: losses of input − target: d loss / d target = −d loss / d input (from the registry)
_OF_DIFFERENCE = frozenset(r.name for r in REGISTRY.values() if r.of_difference)


def _pointwise(loss, input, target, options, tensor_options=None,
               names=("input", "target")) -> Tensor:
    """One loss per element: grad_output multiplies the kept gradient as it is."""
    return _ops.call(loss, (input, target), names, options, tensor_options=tensor_options,
                     negated_target=loss in _OF_DIFFERENCE, expand=SAME)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight: Tensor | None = None, *,
             backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.mse_loss``."""
    return _pointwise("mse_loss", input, target,
                      dict(reduction=_reduction(size_average, reduce, reduction),
                           backend=backend), _weighted(weight=weight))


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
            reduction: str = "mean", weight: Tensor | None = None, *,
            backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.l1_loss``."""
    return _pointwise("l1_loss", input, target,
                      dict(reduction=_reduction(size_average, reduce, reduction),
                           backend=backend), _weighted(weight=weight))


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.huber_loss``."""
    return _pointwise("huber_loss", input, target,
                      dict(reduction=reduction, delta=delta, backend=backend),
                      _weighted(weight=weight))


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0, *,
                   backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.smooth_l1_loss``."""
    return _pointwise("smooth_l1_loss", input, target,
                      dict(reduction=_reduction(size_average, reduce, reduction), beta=beta,
                           backend=backend))


def log_cosh_loss(input: Tensor, target: Tensor, reduction: str = "mean",
                  weight: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """:func:`fastloss.log_cosh_loss` on tensors."""
    return _pointwise("log_cosh_loss", input, target,
                      dict(reduction=reduction, backend=backend), _weighted(weight=weight))


def quantile_loss(input: Tensor, target: Tensor, q: float | Tensor = 0.5,
                  reduction: str = "mean", weight: Tensor | None = None, *,
                  backend: str | None = None) -> Tensor:
    """:func:`fastloss.quantile_loss` on tensors (``q`` may be a tensor of levels)."""
    options: dict[str, Any] = dict(reduction=reduction, backend=backend)
    levels = q if isinstance(q, Tensor) else None    # a tensor of levels is an op input
    if levels is None:
        options["q"] = q
    return _pointwise("quantile_loss", input, target, options,
                      _weighted(weight=weight, q=levels))


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average=None, reduce=None, reduction: str = "mean", *,
                         backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.binary_cross_entropy``."""
    return _pointwise("binary_cross_entropy", input, target,
                      dict(reduction=_reduction(size_average, reduce, reduction),
                           backend=backend), _weighted(weight=weight))


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None, *,
                                     backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.binary_cross_entropy_with_logits``."""
    return _pointwise("binary_cross_entropy_with_logits", input, target,
                      dict(reduction=_reduction(size_average, reduce, reduction),
                           backend=backend), _weighted(weight=weight, pos_weight=pos_weight))


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2, reduction: str = "none", *,
                       backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.sigmoid_focal_loss`` (default ``reduction="none"``)."""
    return _pointwise("sigmoid_focal_loss", inputs, targets,
                      dict(alpha=alpha, gamma=gamma, reduction=reduction, backend=backend),
                      names=("inputs", "targets"))


def hinge_loss(input: Tensor, target: Tensor, margin: float = 1.0, squared: bool = False,
               reduction: str = "mean", weight: Tensor | None = None, *,
               backend: str | None = None) -> Tensor:
    """:func:`fastloss.hinge_loss` on tensors (targets ±1)."""
    return _pointwise("hinge_loss", input, target,
                      dict(margin=margin, squared=squared, reduction=reduction,
                           backend=backend), _weighted(weight=weight))


# ---- multi-class: one loss per row, the class axis is 1 ------------------------------

def _rows(loss, input, target, options, tensor_options=None) -> Tensor:
    return _ops.call(loss, (input, target), ("input", "target"), options,
                     tensor_options=tensor_options, expand=row(1))


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.cross_entropy`` (class indices or probabilities)."""
    return _rows("cross_entropy", input, target,
                 dict(ignore_index=ignore_index, label_smoothing=label_smoothing,
                      reduction=_reduction(size_average, reduce, reduction), backend=backend),
                 _weighted(weight=weight))


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean", *,
             backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.nll_loss``."""
    return _rows("nll_loss", input, target,
                 dict(ignore_index=ignore_index,
                      reduction=_reduction(size_average, reduce, reduction), backend=backend),
                 _weighted(weight=weight))


def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0,
                      weight: Tensor | None = None, size_average=None, reduce=None,
                      reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.multi_margin_loss``."""
    return _rows("multi_margin_loss", input, target,
                 dict(p=p, margin=margin,
                      reduction=_reduction(size_average, reduce, reduction), backend=backend),
                 _weighted(weight=weight))


def softmax_focal_loss(input: Tensor, target: Tensor, alpha: Tensor | None = None,
                       gamma: float = 2.0, weight: Tensor | None = None,
                       ignore_index: int = -100, reduction: str = "mean", *,
                       backend: str | None = None) -> Tensor:
    """:func:`fastloss.softmax_focal_loss` on tensors."""
    return _rows("softmax_focal_loss", input, target,
                 dict(gamma=gamma, ignore_index=ignore_index, reduction=reduction,
                      backend=backend), _weighted(alpha=alpha, weight=weight))


def multiclass_hinge_loss(input: Tensor, target: Tensor, margin: float = 1.0,
                          reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """:func:`fastloss.multiclass_hinge_loss` (Crammer–Singer) on tensors."""
    return _rows("multiclass_hinge_loss", input, target,
                 dict(margin=margin, reduction=reduction, backend=backend))


# ---- overlap: one loss per (sample, class), or per class with batch=True -------------

def _overlap(loss: str, input, target, options) -> Tensor:
    """grad_output of shape (N, C'), (C',) [(N,), (1,) for the generalized Dice] reaches
    the input gradient (N, C, *spatial) by :func:`fastloss.torch._ops._scale`."""
    tensor_options = _weighted(weight=options.pop("weight", None))
    classes = input.shape[1]
    skipped = 0 if options.get("include_background", True) or classes == 1 else 1
    expand = _ops.overlap(loss == "generalized_dice_loss",
                          options.get("activation") == "softmax", skipped)
    return _ops.call(loss, (input, target), ("input", "target"), options,
                     tensor_options=tensor_options, expand=expand)


def dice_loss(input: Tensor, target: Tensor, **options: Any) -> Tensor:
    """:func:`fastloss.dice_loss` on tensors (same keyword arguments)."""
    return _overlap("dice_loss", input, target, options)


def jaccard_loss(input: Tensor, target: Tensor, **options: Any) -> Tensor:
    """:func:`fastloss.jaccard_loss` on tensors (same keyword arguments)."""
    return _overlap("jaccard_loss", input, target, options)


def tversky_loss(input: Tensor, target: Tensor, **options: Any) -> Tensor:
    """:func:`fastloss.tversky_loss` on tensors (same keyword arguments)."""
    return _overlap("tversky_loss", input, target, options)


def generalized_dice_loss(input: Tensor, target: Tensor, **options: Any) -> Tensor:
    """:func:`fastloss.generalized_dice_loss` on tensors (same keyword arguments)."""
    return _overlap("generalized_dice_loss", input, target, options)


# ---- boxes: one loss per box, as torchvision.ops (default reduction="none") ----------

def _boxes(loss, boxes1, boxes2, reduction, eps, backend) -> Tensor:
    return _ops.call(loss, (boxes1, boxes2), ("boxes1", "boxes2"),
                     dict(reduction=reduction, eps=eps, backend=backend), expand=row(-1))


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                             eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.generalized_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes("generalized_box_iou_loss", boxes1, boxes2, reduction, eps, backend)


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.distance_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes("distance_box_iou_loss", boxes1, boxes2, reduction, eps, backend)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.complete_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes("complete_box_iou_loss", boxes1, boxes2, reduction, eps, backend)


# ---- pairwise -----------------------------------------------------------------------

def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                        margin: float = 1.0, p: float = 2, eps: float = 1e-6,
                        swap: bool = False, size_average=None, reduce=None,
                        reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.triplet_margin_loss``."""
    options = dict(margin=margin, p=p, eps=eps, swap=swap,
                   reduction=_reduction(size_average, reduce, reduction), backend=backend)
    return _ops.call("triplet_margin_loss", (anchor, positive, negative),
                     ("anchor", "positive", "negative"), options, differentiable=3,
                     expand=row(-1))


def contrastive_loss(embeddings: Tensor, labels: Tensor, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, distance: str = "euclidean",
                     normalize_embeddings: bool = True, reduction: str = "mean_nonzero", *,
                     backend: str | None = None) -> Tensor:
    """:func:`fastloss.contrastive_loss` on tensors (pytorch-metric-learning's defaults)."""
    options = dict(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance,
                   normalize_embeddings=normalize_embeddings, reduction=reduction,
                   backend=backend)
    return _ops.call("contrastive_loss", (embeddings, labels), ("embeddings", "labels"),
                     options, expand=UNIFORM)


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 1.0,
                            distance: str = "euclidean", normalize_embeddings: bool = False,
                            soft: bool = False, reduction: str = "mean", *,
                            backend: str | None = None) -> Tensor:
    """:func:`fastloss.batch_hard_triplet_loss` on tensors."""
    options = dict(margin=margin, distance=distance, normalize_embeddings=normalize_embeddings,
                   soft=soft, reduction=reduction, backend=backend)
    return _ops.call("batch_hard_triplet_loss", (embeddings, labels), ("embeddings", "labels"),
                     options, expand=UNIFORM)


def info_nce_loss(query: Tensor, positive_key: Tensor, negative_keys: Tensor | None = None,
                  temperature: float = 0.1, reduction: str = "mean",
                  negative_mode: str = "unpaired", *, backend: str | None = None) -> Tensor:
    """As info-nce-pytorch's ``info_nce`` (in-batch negatives when negative_keys is None)."""
    options = dict(temperature=temperature, reduction=reduction, negative_mode=negative_mode,
                   backend=backend)
    names = ("query", "positive_key", "negative_keys")
    tensors = (query, positive_key) if negative_keys is None else (query, positive_key,
                                                                    negative_keys)
    return _ops.call("info_nce_loss", tensors, names[:len(tensors)], options,
                     differentiable=len(tensors), expand=UNIFORM)


info_nce = info_nce_loss


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, reduction: str = "mean", *,
                 backend: str | None = None) -> Tensor:
    """:func:`fastloss.nt_xent_loss` (SimCLR) on tensors: the two views of N samples."""
    return _ops.call("nt_xent_loss", (z1, z2), ("z1", "z2"),
                     dict(temperature=temperature, reduction=reduction, backend=backend),
                     differentiable=2, expand=UNIFORM)
