"""Second-order gradients: the losses whose gradient users differentiate again
(gradient penalties, MAML-style meta-learning, Hessians), as differentiable
PyTorch formulas with fastloss's semantics.

The fused kernels give a first-order gradient with no graph.  When a graph of
that gradient is requested (``create_graph=True``, ``gradgradcheck``,
``torch.autograd.functional.hessian``), :class:`fastloss.torch._ops._Fused`
recomputes the loss from its saved inputs with the formula here and returns
``torch.autograd.grad`` of it, taken with ``create_graph=True``: a gradient
that PyTorch can differentiate again.  Only that path runs these formulas; an
ordinary backward keeps the fused gradient.  Every other loss raises at once.

A formula takes the op's tensors by name (``input``, ``target`` and the tensor
options given) and its scalar options, and returns the loss as the core does:
same reduction, same weighting, same ``mean`` denominator.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def reduce_elementwise(values: Tensor, weight: Tensor | None, reduction: str,
            mean_by_weight_sum: bool = False) -> Tensor:
    """The elementwise losses' weighting and reduction in torch ops (as
    reference._reduce; fastloss.testing's torch formulas use it too)."""
    if weight is not None:
        values = values * weight
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if weight is not None and mean_by_weight_sum:
        return values.sum() / torch.broadcast_to(weight, values.shape).sum()
    return values.sum() / values.numel()


def _mse(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    d = t["input"] - t["target"]
    return reduce_elementwise(d * d, t.get("weight"), o["reduction"], mean_by_weight_sum=True)


def _l1(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    d = t["input"] - t["target"]
    return reduce_elementwise(d.abs(), t.get("weight"), o["reduction"], mean_by_weight_sum=True)


def _huber(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    values = F.huber_loss(t["input"], t["target"], reduction="none",
                          delta=float(o.get("delta", 1.0)))
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _smooth_l1(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    values = F.smooth_l1_loss(t["input"], t["target"], reduction="none",
                              beta=float(o.get("beta", 1.0)))
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _log_cosh(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    d = t["input"] - t["target"]
    # log cosh d = d + softplus(-2d) - log 2: smooth at 0 (|d| would give a zero
    # second derivative there) and finite for large |d|
    values = d + F.softplus(-2.0 * d) - math.log(2.0)
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _quantile(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    q = t["q"] if "q" in t else float(o.get("q", 0.5))
    x, y = t["input"], t["target"]
    if y.dim() == x.dim() - 1:      # one target per row, against every quantile
        y = y.unsqueeze(-1)
    r = y - x
    # max(q r, (q - 1) r) written with |r|: its backward keeps a graph (sgn), so the
    # gradient can be differentiated again (to 0) like torch's own l1_loss
    values = 0.5 * r.abs() + (q - 0.5) * r
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _bce(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    values = F.binary_cross_entropy(t["input"], t["target"], reduction="none")
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _bce_logits(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    values = F.binary_cross_entropy_with_logits(t["input"], t["target"], reduction="none",
                                                pos_weight=t.get("pos_weight"))
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _sigmoid_focal(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    """torchvision's formula."""
    x, y = t["input"], t["target"]
    alpha, gamma = float(o.get("alpha", 0.25)), float(o.get("gamma", 2.0))
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    values = ce * (1.0 - (p * y + (1.0 - p) * (1.0 - y))) ** gamma
    if alpha >= 0:
        values = (alpha * y + (1.0 - alpha) * (1.0 - y)) * values
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _hinge(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    z = float(o.get("margin", 1.0)) - t["target"] * t["input"]
    values = F.relu(z)     # (relu's backward keeps a graph; clamp's does not)
    if o.get("squared", False):
        values = values * values
    return reduce_elementwise(values, t.get("weight"), o["reduction"])


def _cross_entropy(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    return F.cross_entropy(t["input"], t["target"], weight=t.get("weight"),
                           ignore_index=int(o.get("ignore_index", -100)),
                           reduction=o["reduction"],
                           label_smoothing=float(o.get("label_smoothing", 0.0)))


def _nll(t: dict[str, Tensor], o: dict[str, Any]) -> Tensor:
    return F.nll_loss(t["input"], t["target"], weight=t.get("weight"),
                      ignore_index=int(o.get("ignore_index", -100)), reduction=o["reduction"])


#: loss -> its differentiable formula (the losses with second-order gradients)
FORMULAS: dict[str, Callable[[dict[str, Tensor], dict[str, Any]], Tensor]] = {
    "mse_loss": _mse, "l1_loss": _l1, "huber_loss": _huber, "smooth_l1_loss": _smooth_l1,
    "log_cosh_loss": _log_cosh, "quantile_loss": _quantile, "binary_cross_entropy": _bce,
    "binary_cross_entropy_with_logits": _bce_logits, "sigmoid_focal_loss": _sigmoid_focal,
    "hinge_loss": _hinge, "cross_entropy": _cross_entropy, "nll_loss": _nll,
}

#: the scalar options each formula reads (besides reduction and backend): a call with
#: another option has no formula here and raises instead of computing something else
OPTIONS: dict[str, frozenset[str]] = {
    "huber_loss": frozenset({"delta"}), "smooth_l1_loss": frozenset({"beta"}),
    "quantile_loss": frozenset({"q"}), "sigmoid_focal_loss": frozenset({"alpha", "gamma"}),
    "hinge_loss": frozenset({"margin", "squared"}),
    "cross_entropy": frozenset({"ignore_index", "label_smoothing"}),
    "nll_loss": frozenset({"ignore_index"}),
}


def has_formula(loss: str, options: dict[str, Any]) -> bool:
    if loss not in FORMULAS:
        return False
    allowed = OPTIONS.get(loss, frozenset()) | {"reduction", "backend"}
    return set(options) <= allowed


def gradients(loss: str, tensors: dict[str, Tensor], options: dict[str, Any],
              wanted: list[str], grad_output: Tensor) -> tuple[Tensor, ...]:
    """d loss / d tensors[wanted] contracted with grad_output, with its graph."""
    with torch.enable_grad():
        value = FORMULAS[loss](tensors, options)
        return torch.autograd.grad(value, [tensors[name] for name in wanted], grad_output,
                                   create_graph=True)
