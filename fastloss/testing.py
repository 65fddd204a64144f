"""The comparison table: one entry per loss, shared by the tests, the benchmarks
and ``python -m fastloss bench``.

Each :class:`Case` says how to make realistic inputs for a loss and how
PyTorch computes the same loss (``torch_fn``), so the parity tests, the
PyTorch cross-checks and the speed comparisons all read the same table.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import numpy.typing as npt

from ._registry import records

__all__ = ["Case", "CASES", "make_inputs", "MulticlassCase", "MULTICLASS_CASES",
           "make_multiclass_inputs", "OVERLAP_CASES", "torchvision_box_loss",
           "BOX_LOSS_NAMES", "make_boxes"]


@dataclass(frozen=True)
class Case:
    name: str                     # public function name in fastloss
    kind: str                     # how to draw (input, target): see make_inputs
    params: dict[str, Any] = field(default_factory=dict)   # non-default hyper-parameters
    torch_fn: Callable[..., Any] | None = None             # (input, target, weight, reduction, **params) -> tensor
    transcendental: bool = False  # compute-bound (exp/log per element) rather than memory-bound


def _torch_reduce(values, weight, reduction, divide_by_weight_sum=False):
    from fastloss.torch._second_order import reduce_elementwise
    return reduce_elementwise(values, weight, reduction, divide_by_weight_sum)


def _t_mse(x, y, weight, reduction):
    import torch.nn.functional as F
    if weight is not None:
        import torch
        weight = torch.broadcast_to(weight, x.shape)
    return F.mse_loss(x, y, reduction=reduction, weight=weight)


def _t_l1(x, y, weight, reduction):
    import torch.nn.functional as F
    if weight is not None:
        import torch
        weight = torch.broadcast_to(weight, x.shape)
    return F.l1_loss(x, y, reduction=reduction, weight=weight)


def _t_huber(x, y, weight, reduction, delta=1.0):
    import torch.nn.functional as F
    if weight is not None:
        import torch
        weight = torch.broadcast_to(weight, x.shape)
    return F.huber_loss(x, y, reduction=reduction, delta=delta, weight=weight)


def _t_smooth_l1(x, y, weight, reduction, beta=1.0):
    import torch.nn.functional as F
    return _torch_reduce(F.smooth_l1_loss(x, y, reduction="none", beta=beta), weight, reduction)


def _t_log_cosh(x, y, weight, reduction):
    import torch.nn.functional as F
    d = x - y
    # the stable form: |d| + softplus(-2|d|) - log 2
    a = d.abs()
    return _torch_reduce(a + F.softplus(-2.0 * a) - math.log(2.0), weight, reduction)


def _t_quantile(x, y, weight, reduction, q=0.5):
    import torch
    r = y - x
    return _torch_reduce(torch.maximum(q * r, (q - 1.0) * r), weight, reduction)


def _t_bce(x, y, weight, reduction):
    import torch.nn.functional as F
    return F.binary_cross_entropy(x, y, weight=weight, reduction=reduction)


def _t_bce_logits(x, y, weight, reduction, pos_weight=None):
    import torch
    import torch.nn.functional as F
    if pos_weight is not None and not isinstance(pos_weight, torch.Tensor):
        pos_weight = torch.as_tensor(pos_weight, dtype=x.dtype)
    return F.binary_cross_entropy_with_logits(x, y, weight=weight, reduction=reduction,
                                              pos_weight=pos_weight)


def _t_sigmoid_focal(x, y, weight, reduction, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss, written out (torchvision does not import
    # beside the CPU torch build on our machines).
    import torch
    import torch.nn.functional as F
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return _torch_reduce(loss, weight, reduction)


def _t_hinge(x, y, weight, reduction, margin=1.0, squared=False):
    import torch
    z = torch.clamp(margin - y * x, min=0.0)
    return _torch_reduce(z * z if squared else z, weight, reduction)


CASES: dict[str, Case] = {c.name: c for c in [
    Case("mse_loss", "regression", torch_fn=_t_mse),
    Case("l1_loss", "regression", torch_fn=_t_l1),
    Case("huber_loss", "regression", {"delta": 0.5}, torch_fn=_t_huber),
    Case("smooth_l1_loss", "regression", {"beta": 0.5}, torch_fn=_t_smooth_l1),
    Case("log_cosh_loss", "regression", torch_fn=_t_log_cosh, transcendental=True),
    Case("quantile_loss", "regression", {"q": 0.9}, torch_fn=_t_quantile),
    Case("binary_cross_entropy", "probability", torch_fn=_t_bce, transcendental=True),
    Case("binary_cross_entropy_with_logits", "logits", torch_fn=_t_bce_logits,
         transcendental=True),
    Case("sigmoid_focal_loss", "logits", {"alpha": 0.25, "gamma": 2.0},
         torch_fn=_t_sigmoid_focal, transcendental=True),
    Case("hinge_loss", "signed", {"margin": 1.0}, torch_fn=_t_hinge),
]}


def make_inputs(case: Case | str, shape: int | Sequence[int], dtype: npt.DTypeLike = np.float32,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) for a case: realistic values of the given shape and dtype.

    regression: normal predictions and targets; probability: predictions in
    (0, 1), soft targets in [0, 1]; logits: normal logits (scale 3), 0/1
    labels; signed: normal scores, targets -1/+1.
    """
    if isinstance(case, str):
        case = CASES[case]
    rng = np.random.default_rng(seed)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if case.kind == "regression":
        x = rng.standard_normal(shape)
        y = rng.standard_normal(shape)
    elif case.kind == "probability":
        x = rng.uniform(0.001, 0.999, shape)
        y = rng.uniform(0.0, 1.0, shape)
    elif case.kind == "logits":
        x = 3.0 * rng.standard_normal(shape)
        y = (rng.uniform(0.0, 1.0, shape) < 0.3).astype(np.float64)
    elif case.kind == "signed":
        x = rng.standard_normal(shape)
        y = np.where(rng.uniform(0.0, 1.0, shape) < 0.5, -1.0, 1.0)
    else:  # pragma: no cover - a typo in the table
        raise ValueError(f"unknown case kind {case.kind!r}")
    return np.asarray(x, dtype=dtype), np.asarray(y, dtype=dtype)


# ---- multi-class losses -------------------------------------------------------------------

@dataclass(frozen=True)
class MulticlassCase:
    """A multi-class benchmark / comparison case: which loss, the input layout,
    and how PyTorch users compute it (``torch_fn(x, y, **params)``, reduction mean)."""
    label: str                    # unique, e.g. "cross_entropy[llm]"
    name: str                     # public function name in fastloss
    shape: tuple[int, ...]        # full-size input shape (N, C, ...)
    smoke_shape: tuple[int, ...]  # a small shape of the same layout
    params: dict[str, Any] = field(default_factory=dict)
    label_dtype: Any = np.int64
    torch_fn: Callable[..., Any] | None = None


def _t_cross_entropy(x, y, **params):
    import torch.nn.functional as F
    return F.cross_entropy(x, y.long(), **params)


def _t_nll(x, y, **params):
    import torch.nn.functional as F
    return F.nll_loss(x, y.long(), **params)


def _t_softmax_focal(x, y, gamma=2.0, alpha=None):
    # the usual PyTorch implementation: log_softmax, gather, pow
    import torch
    logp = torch.log_softmax(x, dim=1).gather(1, y.long().unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        loss = alpha * loss
    return loss.mean()


def _t_multi_margin(x, y, **params):
    import torch.nn.functional as F
    return F.multi_margin_loss(x, y.long(), **params)


def _t_crammer_singer(x, y, margin=1.0):
    import torch
    yl = y.long().unsqueeze(1)
    others = x.scatter(1, yl, float("-inf"))
    return torch.clamp(margin + others.max(dim=1).values - x.gather(1, yl).squeeze(1),
                       min=0).mean()


MULTICLASS_CASES: dict[str, MulticlassCase] = {c.label: c for c in [
    MulticlassCase("cross_entropy[llm]", "cross_entropy", (4096, 32768), (64, 2048),
                   torch_fn=_t_cross_entropy),
    MulticlassCase("cross_entropy[seg]", "cross_entropy", (8, 21, 256, 256), (2, 21, 16, 16),
                   label_dtype=np.uint8, torch_fn=_t_cross_entropy),
    MulticlassCase("cross_entropy[smooth]", "cross_entropy", (16384, 1000), (64, 1000),
                   {"label_smoothing": 0.1}, torch_fn=_t_cross_entropy),
    MulticlassCase("nll_loss", "nll_loss", (16384, 1000), (64, 1000), torch_fn=_t_nll),
    MulticlassCase("softmax_focal_loss[seg]", "softmax_focal_loss", (8, 21, 256, 256),
                   (2, 21, 16, 16), {"gamma": 2.0}, label_dtype=np.uint8,
                   torch_fn=_t_softmax_focal),
    MulticlassCase("multi_margin_loss", "multi_margin_loss", (65536, 100), (256, 100),
                   torch_fn=_t_multi_margin),
    MulticlassCase("multiclass_hinge_loss", "multiclass_hinge_loss", (65536, 100), (256, 100),
                   torch_fn=_t_crammer_singer),
]}


# ---- overlap (Dice-family) losses: the same case record, compared with MONAI ----------

def _t_monai(name, x, y, activation=None, **params):
    """MONAI's loss module for ``name`` with index targets, as its users write it:
    the activation by flag and ``to_onehot_y=True`` on (N, 1, *spatial) labels."""
    import monai.losses as ml
    module = {"dice_loss": ml.DiceLoss, "tversky_loss": ml.TverskyLoss,
              "generalized_dice_loss": ml.GeneralizedDiceLoss}[name]
    return module(softmax=activation == "softmax", sigmoid=activation == "sigmoid",
                  to_onehot_y=True, **params)(x, y[:, None])


OVERLAP_CASES: dict[str, MulticlassCase] = {c.label: c for c in [
    MulticlassCase("dice_loss[3d]", "dice_loss", (2, 4, 128, 128, 128), (2, 4, 8, 8, 8),
                   {"activation": "softmax"}, label_dtype=np.uint8,
                   torch_fn=functools.partial(_t_monai, "dice_loss")),
    MulticlassCase("tversky_loss[3d]", "tversky_loss", (2, 4, 128, 128, 128), (2, 4, 8, 8, 8),
                   {"activation": "softmax", "alpha": 0.3, "beta": 0.7}, label_dtype=np.uint8,
                   torch_fn=functools.partial(_t_monai, "tversky_loss")),
    MulticlassCase("generalized_dice_loss[2d]", "generalized_dice_loss", (8, 4, 256, 256),
                   (2, 4, 16, 16), {"activation": "softmax"}, label_dtype=np.uint8,
                   torch_fn=functools.partial(_t_monai, "generalized_dice_loss")),
]}


def make_multiclass_inputs(case: MulticlassCase | str, shape: Sequence[int] | None = None,
                           dtype: npt.DTypeLike = np.float32,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of ``shape`` (default: the case's full shape): normal
    logits of scale 3 (log-probabilities for nll_loss), uniform labels."""
    if isinstance(case, str):
        case = MULTICLASS_CASES[case]
    shape = tuple(shape or case.shape)
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    if case.name == "nll_loss":
        x = x - np.log(np.exp(x.astype(np.float64)).sum(axis=1, keepdims=True)).astype(dtype)
    y = rng.integers(0, shape[1], size=(shape[0],) + shape[2:]).astype(case.label_dtype)
    return x, y


# ---- box losses: inputs and torchvision's formulas ----------------------------------------

BOX_LOSS_NAMES = tuple(r.name for r in records("boxes"))   # from the registry


def make_boxes(n: int, dtype: npt.DTypeLike = np.float32,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(boxes1, boxes2) of shape (n, 4): predictions scattered around their
    targets (overlapping, nested and disjoint pairs)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(10, 300, (n, 2))
    target = np.concatenate([c, c + wh], -1)
    c1 = c + rng.normal(0, 40, (n, 2))
    pred = np.concatenate([c1, c1 + wh * rng.uniform(0.5, 1.5, (n, 2))], -1)
    return pred.astype(dtype), target.astype(dtype)


def torchvision_box_loss(name: str, b1: Any, b2: Any, eps: float = 1e-7) -> Any:
    """torchvision's loss per box (ops/_utils.py ``_loss_inter_union``, giou_loss.py,
    diou_loss.py, ciou_loss.py) written in torch ops, since torchvision does not import
    beside torch 2.13 here; autograd of it gives the gradients fastloss must match."""
    import torch

    x1, y1, x2, y2 = b1.unbind(dim=-1)
    X1, Y1, X2, Y2 = b2.unbind(dim=-1)

    def iou_union(eps):
        ix1, iy1 = torch.max(x1, X1), torch.max(y1, Y1)
        ix2, iy2 = torch.min(x2, X2), torch.min(y2, Y2)
        inter = torch.zeros_like(x1)
        mask = (iy2 > iy1) & (ix2 > ix1)
        inter[mask] = (ix2[mask] - ix1[mask]) * (iy2[mask] - iy1[mask])
        union = (x2 - x1) * (y2 - y1) + (X2 - X1) * (Y2 - Y1) - inter
        return inter / (union + eps), union

    xc1, yc1 = torch.min(x1, X1), torch.min(y1, Y1)
    xc2, yc2 = torch.max(x2, X2), torch.max(y2, Y2)
    if name == "generalized_box_iou_loss":
        iou, union = iou_union(eps)
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iou - ((area_c - union) / (area_c + eps)))

    def diou(eps):
        iou, _ = iou_union(eps)
        diag = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
        dist = (((x2 + x1) / 2 - (X1 + X2) / 2) ** 2) + (((y2 + y1) / 2 - (Y1 + Y2) / 2) ** 2)
        return 1 - iou + (dist / diag), iou

    if name == "distance_box_iou_loss":
        return diou(eps)[0]
    loss, iou = diou(1e-7)           # torchvision: _diou_iou_loss(boxes1, boxes2), no eps
    v = (4 / (torch.pi ** 2)) * torch.pow(torch.atan((X2 - X1) / (Y2 - Y1))
                                          - torch.atan((x2 - x1) / (y2 - y1)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return loss + alpha * v
