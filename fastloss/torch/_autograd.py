"""One autograd bridge for every loss: the forward runs the fused value+gradient
kernel once and keeps the gradients; the backward only scales them.

A loss call is described by a :class:`Call`: the core function, its options,
the tensors it takes (by name), which of them the kernel differentiates, and
how ``grad_output`` broadcasts onto the kept gradients.  The backward returns
``kept * expand(grad_output)`` (the kept tensor itself for a CPU
``grad_output`` of 1, as from ``loss.backward()``), so a second backward with
``retain_graph=True`` gives the same gradients and a forward whose backward
never runs costs only the kept arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

Expand = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Call:
    core: Callable[..., Any]          # a fastloss core loss, e.g. fastloss.mse_loss
    names: tuple[str, ...]            # the tensors' argument names, in order
    options: dict[str, Any] = field(default_factory=dict)
    differentiable: int = 1           # the core returns gradients of the first k tensors
    negated_target: bool = False      # d loss / d target = −d loss / d input (losses of x − y)
    expand: Expand = lambda g: g      # grad_output -> a multiplier that broadcasts to a gradient


def apply(call: Call, *tensors: Any) -> torch.Tensor:
    """The loss value, recorded for autograd when a tensor in ``tensors`` needs a gradient."""
    needs = [isinstance(t, torch.Tensor) and t.requires_grad for t in tensors]
    if not (torch.is_grad_enabled() and any(needs)):
        return _value(call, tensors)
    for index, need in enumerate(needs):
        if need and not _has_gradient(call, index):
            name = call.names[index]
            raise ValueError(f"{name}: requires grad, but fastloss computes no gradient with "
                             f"respect to {name} for {call.core.__name__}; detach it "
                             f"({name}.detach())")
    return _Fused.apply(call, *tensors)


def _has_gradient(call: Call, index: int) -> bool:
    return index < call.differentiable or (call.negated_target and index == 1)


def _detached(tensors: Sequence[Any]) -> list[Any]:
    return [t.detach() if isinstance(t, torch.Tensor) else t for t in tensors]


def _value(call: Call, tensors) -> torch.Tensor:
    return call.core(*_detached(tensors), **call.options)


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call: Call, *tensors):
        value, grads = call.core(*_detached(tensors), return_grad=True, **call.options)
        if not isinstance(grads, tuple):
            grads = (grads,)
        kept: list[torch.Tensor | None] = [None] * len(tensors)
        for index, tensor in enumerate(tensors):
            if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                if index < call.differentiable:
                    kept[index] = grads[index]
                elif call.negated_target and index == 1:
                    kept[index] = -grads[0]
        ctx.call = call
        ctx.kept = tuple(g is not None for g in kept)
        ctx.save_for_backward(*(g for g in kept if g is not None))
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        saved = iter(ctx.saved_tensors)
        if _is_one(grad_output):
            # loss.backward(): the kept gradient is the answer, and a pass over it is
            # saved.  Autograd copies a returned tensor before it accumulates into it
            # while the graph (retain_graph) still holds it, so the kept one is never
            # changed.
            return (None,) + tuple(next(saved) if kept else None for kept in ctx.kept)
        scale = grad_output if grad_output.dim() == 0 else ctx.call.expand(grad_output)
        return (None,) + tuple(next(saved) * scale if kept else None for kept in ctx.kept)


def _is_one(grad_output: torch.Tensor) -> bool:
    """A CPU scalar 1 (reading a CUDA one would synchronise the host: not done)."""
    return (grad_output.dim() == 0 and grad_output.device.type == "cpu"
            and grad_output.item() == 1.0)


# ---- how grad_output of reduction="none" reaches the kept gradients ----------------

def same(g: torch.Tensor) -> torch.Tensor:
    """Elementwise losses: one loss per input element."""
    return g


def per_row(axis: int) -> Expand:
    """One loss per row, the row's entries along ``axis`` of the input (a class
    axis, a box's 4 coordinates, an embedding)."""
    return lambda g: g.unsqueeze(axis)


def uniform(loss: str) -> Expand:
    """Losses whose entries each depend on the whole batch (a pair loss's anchor
    sums every pair): the kept gradient is that of the sum, so only a grad_output
    with equal entries (``.sum()``, ``.mean()``) can scale it."""
    def expand(g: torch.Tensor) -> torch.Tensor:
        flat = g.reshape(-1)
        if flat.numel() and not bool(torch.all(flat == flat[0])):
            raise RuntimeError(
                f"{loss}: backward through reduction='none' needs a grad_output with equal "
                f"entries (as from .sum() or .mean()); each entry of this loss depends on "
                f"the whole batch and fastloss keeps only the gradient of the sum. Use "
                f"reduction='sum' or 'mean' and weight the result instead")
        return flat[0] if flat.numel() else g.sum()
    return expand
