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
:func:`fastloss.torch._autograd.uniform`.  Gradients are first order only
(``create_graph`` double differentiation raises).
"""
from __future__ import annotations

from typing import Any

import torch

import fastloss as _fl
from fastloss._registry import REGISTRY

from ._autograd import Call, apply, per_row, same, uniform

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


def _weighted(options: dict[str, Any], **tensors) -> dict[str, Any]:
    """Options plus the optional tensors (weights) that are given, detached: fastloss
    computes no gradient with respect to a weight."""
    for name, value in tensors.items():
        if value is not None:
            if isinstance(value, Tensor) and value.requires_grad:
                raise ValueError(f"{name}: requires grad, but fastloss computes no gradient "
                                 f"with respect to {name}; detach it ({name}.detach())")
            options[name] = value.detach() if isinstance(value, Tensor) else value
    return options


# ---- elementwise ---------------------------------------------------------------------

#: losses of input − target: d loss / d target = −d loss / d input (from the registry)
_OF_DIFFERENCE = frozenset(r.name for r in REGISTRY.values() if r.of_difference)


def _pointwise(core, input, target, options, names=("input", "target")) -> Tensor:
    """One loss per element: grad_output multiplies the kept gradient as it is."""
    return apply(Call(core, names, options, negated_target=core.__name__ in _OF_DIFFERENCE,
                      expand=same), input, target)


def mse_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
             reduction: str = "mean", weight: Tensor | None = None, *,
             backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.mse_loss``."""
    options = _weighted(dict(reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _pointwise(_fl.mse_loss, input, target, options)


def l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
            reduction: str = "mean", weight: Tensor | None = None, *,
            backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.l1_loss``."""
    options = _weighted(dict(reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _pointwise(_fl.l1_loss, input, target, options)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.huber_loss``."""
    options = _weighted(dict(reduction=reduction, delta=delta, backend=backend), weight=weight)
    return _pointwise(_fl.huber_loss, input, target, options)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0, *,
                   backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.smooth_l1_loss``."""
    options = dict(reduction=_reduction(size_average, reduce, reduction), beta=beta,
                   backend=backend)
    return _pointwise(_fl.smooth_l1_loss, input, target, options)


def log_cosh_loss(input: Tensor, target: Tensor, reduction: str = "mean",
                  weight: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """:func:`fastloss.log_cosh_loss` on tensors."""
    options = _weighted(dict(reduction=reduction, backend=backend), weight=weight)
    return _pointwise(_fl.log_cosh_loss, input, target, options)


def quantile_loss(input: Tensor, target: Tensor, q: float = 0.5, reduction: str = "mean",
                  weight: Tensor | None = None, *, backend: str | None = None) -> Tensor:
    """:func:`fastloss.quantile_loss` on tensors (``q`` may be a tensor of levels)."""
    options = _weighted(dict(reduction=reduction, backend=backend), weight=weight, q=q)
    return _pointwise(_fl.quantile_loss, input, target, options)


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         size_average=None, reduce=None, reduction: str = "mean", *,
                         backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.binary_cross_entropy``."""
    options = _weighted(dict(reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _pointwise(_fl.binary_cross_entropy, input, target, options)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, size_average=None,
                                     reduce=None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None, *,
                                     backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.binary_cross_entropy_with_logits``."""
    options = _weighted(dict(reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight, pos_weight=pos_weight)
    return _pointwise(_fl.binary_cross_entropy_with_logits, input, target, options)


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2, reduction: str = "none", *,
                       backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.sigmoid_focal_loss`` (default ``reduction="none"``)."""
    options = dict(alpha=alpha, gamma=gamma, reduction=reduction, backend=backend)
    return _pointwise(_fl.sigmoid_focal_loss, inputs, targets, options, names=("inputs", "targets"))


def hinge_loss(input: Tensor, target: Tensor, margin: float = 1.0, squared: bool = False,
               reduction: str = "mean", weight: Tensor | None = None, *,
               backend: str | None = None) -> Tensor:
    """:func:`fastloss.hinge_loss` on tensors (targets ±1)."""
    options = _weighted(dict(margin=margin, squared=squared, reduction=reduction,
                             backend=backend), weight=weight)
    return _pointwise(_fl.hinge_loss, input, target, options)


# ---- multi-class: one loss per row, the class axis is 1 ------------------------------

def _rows(core, input, target, options) -> Tensor:
    return apply(Call(core, ("input", "target"), options, expand=per_row(1)), input, target)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0, *,
                  backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.cross_entropy`` (class indices or probabilities)."""
    options = _weighted(dict(ignore_index=ignore_index, label_smoothing=label_smoothing,
                             reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _rows(_fl.cross_entropy, input, target, options)


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean", *,
             backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.nll_loss``."""
    options = _weighted(dict(ignore_index=ignore_index,
                             reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _rows(_fl.nll_loss, input, target, options)


def multi_margin_loss(input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0,
                      weight: Tensor | None = None, size_average=None, reduce=None,
                      reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.multi_margin_loss``."""
    options = _weighted(dict(p=p, margin=margin,
                             reduction=_reduction(size_average, reduce, reduction),
                             backend=backend), weight=weight)
    return _rows(_fl.multi_margin_loss, input, target, options)


def softmax_focal_loss(input: Tensor, target: Tensor, alpha: Tensor | None = None,
                       gamma: float = 2.0, weight: Tensor | None = None,
                       ignore_index: int = -100, reduction: str = "mean", *,
                       backend: str | None = None) -> Tensor:
    """:func:`fastloss.softmax_focal_loss` on tensors."""
    options = _weighted(dict(gamma=gamma, ignore_index=ignore_index, reduction=reduction,
                             backend=backend), alpha=alpha, weight=weight)
    return _rows(_fl.softmax_focal_loss, input, target, options)


def multiclass_hinge_loss(input: Tensor, target: Tensor, margin: float = 1.0,
                          reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """:func:`fastloss.multiclass_hinge_loss` (Crammer–Singer) on tensors."""
    return _rows(_fl.multiclass_hinge_loss, input, target,
                 dict(margin=margin, reduction=reduction, backend=backend))


# ---- overlap: one loss per (sample, class), or per class with batch=True -------------

def _overlap_expand(loss: str, input: Tensor, options: dict[str, Any]):
    """grad_output of shape (N, C'), (C',) [(N,), (1,) for the generalized Dice] onto the
    input gradient (N, C, *spatial).  Under softmax every class of a sample moves every
    other, so a sample's entries must share one grad_output."""
    ones = (1,) * (input.dim() - 2)
    classes = input.shape[1]
    skipped = 0 if options.get("include_background", True) or classes == 1 else 1

    def expand(g: Tensor) -> Tensor:
        if loss == "generalized_dice_loss":
            return g.reshape(g.shape[0], 1, *ones)
        g = g.reshape(-1, g.shape[-1])   # (N, C'), or (1, C') with batch=True
        if options.get("activation") == "softmax":
            if not bool(torch.all(g == g[:, :1])):
                raise RuntimeError(
                    f"{loss}: backward through reduction='none' with softmax needs equal "
                    f"grad_output entries across the classes of each sample (a sample's "
                    f"classes share one softmax); use reduction='sum'/'mean' or weight=")
            return g[:, :1].reshape(g.shape[0], 1, *ones)
        if skipped:
            g = torch.cat([g.new_zeros(g.shape[0], skipped), g], dim=1)
        return g.reshape(g.shape[0], classes, *ones)
    return expand


def _overlap(loss: str, input, target, options) -> Tensor:
    core = getattr(_fl, loss)
    options = _weighted(options, weight=options.pop("weight", None))
    return apply(Call(core, ("input", "target"), options,
                      expand=_overlap_expand(loss, input, options)), input, target)


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

def _boxes(core, boxes1, boxes2, reduction, eps, backend) -> Tensor:
    return apply(Call(core, ("boxes1", "boxes2"), dict(reduction=reduction, eps=eps,
                                                         backend=backend),
                      expand=per_row(-1)), boxes1, boxes2)


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                             eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.generalized_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes(_fl.generalized_box_iou_loss, boxes1, boxes2, reduction, eps, backend)


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.distance_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes(_fl.distance_box_iou_loss, boxes1, boxes2, reduction, eps, backend)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7, *, backend: str | None = None) -> Tensor:
    """As ``torchvision.ops.complete_box_iou_loss``; the gradient flows to boxes1."""
    return _boxes(_fl.complete_box_iou_loss, boxes1, boxes2, reduction, eps, backend)


# ---- pairwise -----------------------------------------------------------------------

def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor,
                        margin: float = 1.0, p: float = 2, eps: float = 1e-6,
                        swap: bool = False, size_average=None, reduce=None,
                        reduction: str = "mean", *, backend: str | None = None) -> Tensor:
    """As ``torch.nn.functional.triplet_margin_loss``."""
    options = dict(margin=margin, p=p, eps=eps, swap=swap,
                   reduction=_reduction(size_average, reduce, reduction), backend=backend)
    return apply(Call(_fl.triplet_margin_loss, ("anchor", "positive", "negative"), options,
                      differentiable=3, expand=per_row(-1)), anchor, positive, negative)


def contrastive_loss(embeddings: Tensor, labels: Tensor, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, distance: str = "euclidean",
                     normalize_embeddings: bool = True, reduction: str = "mean_nonzero", *,
                     backend: str | None = None) -> Tensor:
    """:func:`fastloss.contrastive_loss` on tensors (pytorch-metric-learning's defaults)."""
    options = dict(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance,
                   normalize_embeddings=normalize_embeddings, reduction=reduction,
                   backend=backend)
    return apply(Call(_fl.contrastive_loss, ("embeddings", "labels"), options,
                      expand=uniform("contrastive_loss")), embeddings, labels)


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 1.0,
                            distance: str = "euclidean", normalize_embeddings: bool = False,
                            soft: bool = False, reduction: str = "mean", *,
                            backend: str | None = None) -> Tensor:
    """:func:`fastloss.batch_hard_triplet_loss` on tensors."""
    options = dict(margin=margin, distance=distance, normalize_embeddings=normalize_embeddings,
                   soft=soft, reduction=reduction, backend=backend)
    return apply(Call(_fl.batch_hard_triplet_loss, ("embeddings", "labels"), options,
                      expand=uniform("batch_hard_triplet_loss")), embeddings, labels)


def info_nce_loss(query: Tensor, positive_key: Tensor, negative_keys: Tensor | None = None,
                  temperature: float = 0.1, reduction: str = "mean",
                  negative_mode: str = "unpaired", *, backend: str | None = None) -> Tensor:
    """As info-nce-pytorch's ``info_nce`` (in-batch negatives when negative_keys is None)."""
    options = dict(temperature=temperature, reduction=reduction, negative_mode=negative_mode,
                   backend=backend)
    names = ("query", "positive_key", "negative_keys")
    if negative_keys is None:
        return apply(Call(_fl.info_nce_loss, names[:2], options, differentiable=2,
                          expand=uniform("info_nce_loss")), query, positive_key)
    return apply(Call(_fl.info_nce_loss, names, options, differentiable=3,
                      expand=uniform("info_nce_loss")), query, positive_key, negative_keys)


info_nce = info_nce_loss


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, reduction: str = "mean", *,
                 backend: str | None = None) -> Tensor:
    """:func:`fastloss.nt_xent_loss` (SimCLR) on tensors: the two views of N samples."""
    return apply(Call(_fl.nt_xent_loss, ("z1", "z2"),
                      dict(temperature=temperature, reduction=reduction, backend=backend),
                      differentiable=2, expand=uniform("nt_xent_loss")), z1, z2)

