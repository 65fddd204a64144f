"""fastloss as PyTorch loss modules: a training loop switches by changing one import.

    from fastloss.torch import CrossEntropyLoss        # was: from torch.nn import ...
    from fastloss.torch import DiceLoss                # was: from monai.losses import ...
    from fastloss.torch import NTXentLoss              # was: from pytorch_metric_learning.losses ...
    import fastloss.torch.functional as F              # F.cross_entropy, F.mse_loss, ...

Class names, constructor arguments and defaults are those of the library each
loss matches: ``torch.nn`` (MSELoss ... TripletMarginLoss), MONAI (DiceLoss,
TverskyLoss, GeneralizedDiceLoss, with their ``sigmoid``/``softmax``/
``to_onehot_y`` flags and ``reduction="none"`` shapes), pytorch-metric-learning
(ContrastiveLoss, NTXentLoss: temperature 0.07, ``forward(embeddings,
labels)``), info-nce-pytorch (InfoNCE); torchvision has no modules for its
focal and box losses, so SigmoidFocalLoss and the box-loss modules keep its
functions' defaults (``reduction="none"``).  Weights passed to a constructor
are registered as buffers (they follow ``.to(device)``).  See
:mod:`fastloss.torch.functional` for how gradients are kept and scaled.

This package needs PyTorch; ``import fastloss`` does not.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

try:
    import torch
except ImportError as exc:   # pragma: no cover - exercised only without torch
    raise ImportError("fastloss.torch needs PyTorch (pip install torch); the core API "
                      "(import fastloss) works without it") from exc

from . import functional
from .functional import _reduction

__all__ = [
    "functional",
    "MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "LogCoshLoss", "QuantileLoss", "BCELoss",
    "BCEWithLogitsLoss", "SigmoidFocalLoss", "HingeLoss",
    "CrossEntropyLoss", "NLLLoss", "MultiMarginLoss", "SoftmaxFocalLoss", "MulticlassHingeLoss",
    "DiceLoss", "TverskyLoss", "GeneralizedDiceLoss",
    "GeneralizedBoxIoULoss", "DistanceBoxIoULoss", "CompleteBoxIoULoss",
    "TripletMarginLoss", "ContrastiveLoss", "BatchHardTripletLoss", "InfoNCE", "NTXentLoss",
]

Tensor = torch.Tensor


class _Loss(torch.nn.Module):
    """A module calling one function of :mod:`fastloss.torch.functional` with the
    options given to its constructor; tensor options are buffers."""

    _function: Callable[..., Tensor]

    def __init__(self, **options: Any):
        super().__init__()
        self._options: dict[str, Any] = {}
        self._buffer_names: list[str] = []
        for name, value in options.items():
            if isinstance(value, Tensor):
                self.register_buffer(name, value)
                self._buffer_names.append(name)
            else:
                self._options[name] = value

    def options(self) -> dict[str, Any]:
        return {**self._options, **{name: getattr(self, name) for name in self._buffer_names}}

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return type(self)._function(input, target, **self.options())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options.items() if k != "backend")


# ---- torch.nn --------------------------------------------------------------------------

class MSELoss(_Loss):
    _function = functional.mse_loss

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(reduction=_reduction(size_average, reduce, reduction), backend=backend)


class L1Loss(_Loss):
    _function = functional.l1_loss

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(reduction=_reduction(size_average, reduce, reduction), backend=backend)


class HuberLoss(_Loss):
    _function = functional.huber_loss

    def __init__(self, reduction: str = "mean", delta: float = 1.0, *,
                 backend: str | None = None):
        super().__init__(reduction=reduction, delta=delta, backend=backend)


class SmoothL1Loss(_Loss):
    _function = functional.smooth_l1_loss

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 beta: float = 1.0, *, backend: str | None = None):
        super().__init__(reduction=_reduction(size_average, reduce, reduction), beta=beta,
                         backend=backend)


class BCELoss(_Loss):
    _function = functional.binary_cross_entropy

    def __init__(self, weight: Tensor | None = None, size_average=None, reduce=None,
                 reduction: str = "mean", *, backend: str | None = None):
        super().__init__(weight=weight, reduction=_reduction(size_average, reduce, reduction),
                         backend=backend)


class BCEWithLogitsLoss(_Loss):
    _function = functional.binary_cross_entropy_with_logits

    def __init__(self, weight: Tensor | None = None, size_average=None, reduce=None,
                 reduction: str = "mean", pos_weight: Tensor | None = None, *,
                 backend: str | None = None):
        super().__init__(weight=weight, reduction=_reduction(size_average, reduce, reduction),
                         pos_weight=pos_weight, backend=backend)


class CrossEntropyLoss(_Loss):
    _function = functional.cross_entropy

    def __init__(self, weight: Tensor | None = None, size_average=None,
                 ignore_index: int = -100, reduce=None, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, backend: str | None = None):
        super().__init__(weight=weight, ignore_index=ignore_index,
                         reduction=_reduction(size_average, reduce, reduction),
                         label_smoothing=label_smoothing, backend=backend)


class NLLLoss(_Loss):
    _function = functional.nll_loss

    def __init__(self, weight: Tensor | None = None, size_average=None,
                 ignore_index: int = -100, reduce=None, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(weight=weight, ignore_index=ignore_index,
                         reduction=_reduction(size_average, reduce, reduction), backend=backend)


class MultiMarginLoss(_Loss):
    _function = functional.multi_margin_loss

    def __init__(self, p: int = 1, margin: float = 1.0, weight: Tensor | None = None,
                 size_average=None, reduce=None, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(p=p, margin=margin, weight=weight,
                         reduction=_reduction(size_average, reduce, reduction), backend=backend)


class TripletMarginLoss(_Loss):
    _function = functional.triplet_margin_loss

    def __init__(self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6,
                 swap: bool = False, size_average=None, reduce=None, reduction: str = "mean",
                 *, backend: str | None = None):
        super().__init__(margin=margin, p=p, eps=eps, swap=swap,
                         reduction=_reduction(size_average, reduce, reduction), backend=backend)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:  # type: ignore[override]
        return functional.triplet_margin_loss(anchor, positive, negative, **self.options())


# ---- fastloss's own, torchvision's functions as modules --------------------------------

class LogCoshLoss(_Loss):
    _function = functional.log_cosh_loss

    def __init__(self, reduction: str = "mean", *, backend: str | None = None):
        super().__init__(reduction=reduction, backend=backend)


class QuantileLoss(_Loss):
    _function = functional.quantile_loss

    def __init__(self, q: float = 0.5, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(q=q, reduction=reduction, backend=backend)


class HingeLoss(_Loss):
    _function = functional.hinge_loss

    def __init__(self, margin: float = 1.0, squared: bool = False, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(margin=margin, squared=squared, reduction=reduction, backend=backend)


class SigmoidFocalLoss(_Loss):
    """``torchvision.ops.sigmoid_focal_loss`` as a module (its defaults: reduction="none")."""
    _function = functional.sigmoid_focal_loss

    def __init__(self, alpha: float = 0.25, gamma: float = 2, reduction: str = "none", *,
                 backend: str | None = None):
        super().__init__(alpha=alpha, gamma=gamma, reduction=reduction, backend=backend)


class SoftmaxFocalLoss(_Loss):
    _function = functional.softmax_focal_loss

    def __init__(self, alpha: Tensor | None = None, gamma: float = 2.0,
                 weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", *, backend: str | None = None):
        super().__init__(alpha=alpha, gamma=gamma, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, backend=backend)


class MulticlassHingeLoss(_Loss):
    _function = functional.multiclass_hinge_loss

    def __init__(self, margin: float = 1.0, reduction: str = "mean", *,
                 backend: str | None = None):
        super().__init__(margin=margin, reduction=reduction, backend=backend)


class GeneralizedBoxIoULoss(_Loss):
    """``torchvision.ops.generalized_box_iou_loss`` as a module (reduction="none")."""
    _function = functional.generalized_box_iou_loss

    def __init__(self, reduction: str = "none", eps: float = 1e-7, *,
                 backend: str | None = None):
        super().__init__(reduction=reduction, eps=eps, backend=backend)


class DistanceBoxIoULoss(GeneralizedBoxIoULoss):
    """``torchvision.ops.distance_box_iou_loss`` as a module (reduction="none")."""
    _function = functional.distance_box_iou_loss


class CompleteBoxIoULoss(GeneralizedBoxIoULoss):
    """``torchvision.ops.complete_box_iou_loss`` as a module (reduction="none")."""
    _function = functional.complete_box_iou_loss


# ---- MONAI -----------------------------------------------------------------------------

class _MonaiOverlap(torch.nn.Module):
    """MONAI's argument conventions onto a fastloss overlap loss: ``sigmoid`` /
    ``softmax`` / ``other_act`` pick the activation (``other_act`` runs in torch,
    before the kernel), ``to_onehot_y`` says the target holds class indices in
    a channel of size 1, and ``reduction="none"`` keeps MONAI's shape, the
    spatial axes kept as size 1 (DiceLoss, GeneralizedDiceLoss)."""

    _loss = "dice_loss"
    _none_keeps_spatial = True   # MONAI's Dice losses do; its TverskyLoss does not

    def __init__(self, include_background: bool, to_onehot_y: bool, sigmoid: bool,
                 softmax: bool, other_act: Callable[[Tensor], Tensor] | None, reduction: str,
                 soft_label: bool, **options: Any):
        super().__init__()
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("sigmoid, softmax, other_act: at most one may be set "
                             f"(got sigmoid={sigmoid}, softmax={softmax}, "
                             f"other_act={other_act!r})")
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act: expected a callable, got {type(other_act).__name__}")
        if soft_label:
            raise ValueError("soft_label: True (MONAI's soft-label Dice) is not supported by "
                             "fastloss; soft targets are scored with the hard-label formula")
        self.to_onehot_y = to_onehot_y
        self.other_act = other_act
        self.reduction = reduction
        # MONAI's buffer, under MONAI's name: in state_dict(), follows .to()
        weight = options.pop("weight", None)
        self.register_buffer("class_weight",
                             None if weight is None else torch.as_tensor(weight))
        self.class_weight: Tensor | None
        self.options = dict(options, include_background=include_background,
                            reduction=reduction,
                            activation="sigmoid" if sigmoid else "softmax" if softmax else None)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if self.other_act is not None:
            input = self.other_act(input)
        if self.to_onehot_y:
            if target.dim() != input.dim() or target.shape[1] != 1:
                raise ValueError(f"target: with to_onehot_y=True expected class indices of "
                                 f"shape (N, 1, ...), got {tuple(target.shape)}")
            if target.is_floating_point():   # MONAI's labels are often float tensors
                target = target.long()
        elif target.shape != input.shape:
            raise ValueError(f"target: shape {tuple(target.shape)} differs from the input's "
                             f"{tuple(input.shape)}; pass to_onehot_y=True for class indices")
        options = dict(self.options)
        if self.class_weight is not None:
            options["weight"] = _class_weights(self.class_weight, input,
                                               options["include_background"])
        value = getattr(functional, self._loss)(input, target, **options)
        if self.reduction != "none" or not self._none_keeps_spatial:
            return value
        ones = (1,) * (input.dim() - 2)
        if self._loss == "generalized_dice_loss" and not options.get("batch"):
            return value.reshape(value.shape[0], 1, *ones)
        return value.reshape(*value.shape, *ones)


def _class_weights(weight: Tensor, input: Tensor, include_background: bool) -> Tensor:
    """MONAI's weight: a number for every scored class, or one per scored class, in
    the input's dtype and on its device."""
    scored = input.shape[1] - (0 if include_background or input.shape[1] == 1 else 1)
    values = weight.to(device=input.device, dtype=input.dtype)
    return values.expand(scored).contiguous() if values.dim() == 0 else values


class DiceLoss(_MonaiOverlap):
    """MONAI's ``DiceLoss`` (``jaccard=True``: the Jaccard loss)."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Callable[[Tensor], Tensor] | None = None,
                 squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: Sequence[float] | float | Tensor | None = None,
                 soft_label: bool = False, ignore_index: int | None = None, *,
                 backend: str | None = None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act,
                         reduction, soft_label, squared_pred=squared_pred, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, batch=batch, weight=weight,
                         ignore_index=ignore_index, backend=backend)
        self._loss = "jaccard_loss" if jaccard else "dice_loss"


class TverskyLoss(_MonaiOverlap):
    """MONAI's ``TverskyLoss``; ``gamma`` ≠ 1 (a fastloss extension) gives the focal
    Tversky loss max(1 − TI, 0)^gamma."""
    _loss = "tversky_loss"
    _none_keeps_spatial = False

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Callable[[Tensor], Tensor] | None = None, alpha: float = 0.5,
                 beta: float = 0.5, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, soft_label: bool = False,
                 ignore_index: int | None = None, *, gamma: float = 1.0,
                 backend: str | None = None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act,
                         reduction, soft_label, alpha=alpha, beta=beta, gamma=gamma,
                         smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                         ignore_index=ignore_index, backend=backend)


class GeneralizedDiceLoss(_MonaiOverlap):
    """MONAI's ``GeneralizedDiceLoss``."""
    _loss = "generalized_dice_loss"

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Callable[[Tensor], Tensor] | None = None, w_type: str = "square",
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, soft_label: bool = False, *,
                 backend: str | None = None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act,
                         reduction, soft_label, w_type=w_type, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, batch=batch, backend=backend)


# ---- pytorch-metric-learning, info-nce-pytorch -----------------------------------------

class ContrastiveLoss(_Loss):
    """pytorch-metric-learning's ``ContrastiveLoss`` with its defaults (L2 distance of
    normalized embeddings, the mean of the non-zero pair losses); ``forward(embeddings,
    labels)``.  ``distance`` is a name ("euclidean", "sqeuclidean", "cosine"), not a
    pml distance object."""
    _function = functional.contrastive_loss

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0,
                 distance: str = "euclidean", normalize_embeddings: bool = True,
                 reduction: str = "mean_nonzero", *, backend: str | None = None):
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance,
                         normalize_embeddings=normalize_embeddings, reduction=reduction,
                         backend=backend)


class BatchHardTripletLoss(_Loss):
    """Batch-hard triplet loss (Hermans et al.): ``forward(embeddings, labels)``."""
    _function = functional.batch_hard_triplet_loss

    def __init__(self, margin: float = 1.0, distance: str = "euclidean",
                 normalize_embeddings: bool = False, soft: bool = False,
                 reduction: str = "mean", *, backend: str | None = None):
        super().__init__(margin=margin, distance=distance,
                         normalize_embeddings=normalize_embeddings, soft=soft,
                         reduction=reduction, backend=backend)


class InfoNCE(_Loss):
    """info-nce-pytorch's ``InfoNCE``: ``forward(query, positive_key, negative_keys=None)``."""

    def __init__(self, temperature: float = 0.1, reduction: str = "mean",
                 negative_mode: str = "unpaired", *, backend: str | None = None):
        super().__init__(temperature=temperature, reduction=reduction,
                         negative_mode=negative_mode, backend=backend)

    def forward(self, query: Tensor, positive_key: Tensor,
                negative_keys: Tensor | None = None) -> Tensor:
        return functional.info_nce_loss(query, positive_key, negative_keys, **self.options())


class NTXentLoss(_Loss):
    """pytorch-metric-learning's ``NTXentLoss`` (temperature 0.07) for SimCLR batches:
    ``forward(embeddings, labels)`` where each label appears exactly twice (the two
    views of a sample); ``labels=None`` means the first half of the rows are the first
    views, in the order of the second half's.  The mean over the 2N views equals pml's
    (pml caps each view's loss near 708, at extreme logits only)."""

    def __init__(self, temperature: float = 0.07, *, backend: str | None = None):
        super().__init__(temperature=temperature, backend=backend)

    def forward(self, embeddings: Tensor,
                labels: Tensor | None = None) -> Tensor:
        z1, z2 = _views(embeddings, labels)
        return functional.nt_xent_loss(z1, z2, **self.options())


def _views(embeddings: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """The two views as two (N, D) tensors, pairs row by row (indexing, so autograd
    routes each view's gradient back to its row of ``embeddings``)."""
    rows = embeddings.shape[0]
    if labels is None:
        if rows % 2:
            raise ValueError(f"embeddings: with labels=None expected an even number of rows "
                             f"(two views per sample), got {rows}")
        return embeddings[: rows // 2], embeddings[rows // 2:]
    if labels.shape != (rows,):
        raise ValueError(f"labels: expected shape ({rows},), one label per row of "
                         f"embeddings, got {tuple(labels.shape)}")
    order = torch.ops.fastloss._simclr_order(labels)   # checked inside an op: no graph break
    return embeddings[order[0::2]], embeddings[order[1::2]]
