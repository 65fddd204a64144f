"""Every fastloss loss as a PyTorch operator, ``torch.ops.fastloss.<loss>``, with its
autograd formula and a fake (meta) implementation: what torch.compile, torch.export
and AOTAutograd need to put a loss in a graph as one node.

One schema serves every loss::

    fastloss::<loss>(Tensor[] tensors, str spec) -> Tensor[]

``tensors`` are the loss's tensor arguments, positional ones first, then its
tensor options (weights); ``spec`` is a constant string (one per call
signature, cached both ways) that says which tensors are keywords, the scalar
options, which gradients to return and how ``grad_output`` reaches them (see
:class:`Spec`).  The op returns ``[value, *gradients]``: with no gradient
asked it computes the value only; with some it runs the fused value+gradient
kernel once, and the autograd formula scales the kept gradients by
``grad_output``.  Data-dependent checks (labels in range, probabilities in
[0, 1], degenerate boxes, equal ``grad_output`` entries where a loss needs
them) run inside ops, so they never break a graph.

Registration: ``torch.library.Library.define`` with a kernel per dispatch key
(CPU, CUDA, Autograd) and ``register_fake``, not ``torch.library.custom_op``:
measured on this machine kind (``bench/results/torch-ops-*``), custom_op's
Python layers doubled a small training step (``mse_loss`` n = 1000 forward +
backward: about 470 µs against 230 µs), while this registration costs what the
autograd.Function bridge it replaces did.
"""
from __future__ import annotations

import ast
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

import fastloss as _fl
from fastloss._convert import _numpy_view
from fastloss._registry import REGISTRY

from . import _second_order

Tensor = torch.Tensor

#: where a kept gradient comes from: the core's gradient of that index, or this
#: marker for −(its gradient of the input) (a loss of input − target)
NEGATED_INPUT_GRAD = -1


class Spec(NamedTuple):
    """One call signature of a loss op, all of it constants."""
    positional: int                          # the first k tensors are positional arguments
    keywords: tuple[str, ...]                # the names of the other tensors (tensor options)
    options: tuple[tuple[str, Any], ...]     # the scalar options, as keyword arguments
    grads: tuple[tuple[int, int], ...]       # (tensor index, core gradient index or NEGATED_INPUT_GRAD)
    expand: tuple[Any, ...]                  # how grad_output reaches a kept gradient (_scale)


_ENCODED: dict[Spec, str] = {}
_DECODED: dict[str, Spec] = {}


def encode(spec: Spec) -> str:
    """The op's ``spec`` string of a call signature (cached: read on every call)."""
    text = _ENCODED.get(spec)
    if text is None:
        text = repr(tuple(spec))
        _ENCODED[spec] = text
        _DECODED[text] = spec
    return text


def decode(text: str) -> Spec:
    spec = _DECODED.get(text)
    if spec is None:    # a graph saved by another process: parse its literal
        try:
            spec = Spec(*ast.literal_eval(text))
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(f"spec: not a fastloss op spec: {text!r}") from exc
        _DECODED[text] = spec
    return spec


# ---- the value's shape (the fake implementation) -------------------------------------

def _option(spec: Spec, name: str, default: Any) -> Any:
    for key, value in spec.options:
        if key == name:
            return value
    return default


def value_shape(loss: str, spec: Spec, tensors: Sequence[Tensor]) -> tuple[Any, ...]:
    """The loss value's shape: () unless reduction="none"."""
    if _option(spec, "reduction", None) != "none":
        return ()
    first = tensors[0]
    family = REGISTRY[loss].family
    if family == "elementwise":
        return tuple(first.shape)
    if family == "multiclass":
        return () if first.dim() == 1 else (first.shape[0], *first.shape[2:])
    if family == "boxes":
        return tuple(first.shape[:-1])
    if family == "overlap":
        batch = _option(spec, "batch", False)
        if loss == "generalized_dice_loss":
            return (1,) if batch else (first.shape[0],)
        classes = first.shape[1]
        if not _option(spec, "include_background", True) and classes != 1:
            classes = classes - 1
        return (classes,) if batch else (first.shape[0], classes)
    if loss == "nt_xent_loss":      # both views' rows
        return (first.shape[0] + tensors[1].shape[0],)
    return (first.shape[0],)        # the other pairwise losses: one value per row


def _kept_shape(tensors: list[Tensor], index: int, source: int) -> torch.Size:
    """A kept gradient's shape: its tensor's, but the input's for a target's gradient
    taken from the input's (the backward sums it to the target's shape, after
    grad_output has scaled it)."""
    return tensors[0 if source == NEGATED_INPUT_GRAD else index].shape


def _fake(loss: str):
    def fake(tensors: list[Tensor], text: str) -> list[Tensor]:
        spec = decode(text)
        first = tensors[0]
        value = first.new_empty(value_shape(loss, spec, tensors))
        return [value, *(tensors[index].new_empty(_kept_shape(tensors, index, source))
                         for index, source in spec.grads)]
    return fake


# ---- the real implementation: the core loss on the tensors' memory --------------------

#: floating dtypes the kernels do not take: computed in float32, results in their dtype
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _impl(loss: str):
    def impl(tensors: list[Tensor], text: str) -> list[Tensor]:
        if any(t.dtype in HALF_DTYPES for t in tensors):
            return _in_float32(impl, tensors, text)
        core = getattr(_fl, loss)   # (looked up per call: a test may wrap it)
        spec = decode(text)
        on_host = tensors[0].device.type == "cpu"
        # detached (the core API refuses tensors that require grad); host tensors as
        # zero-copy NumPy views, so the core takes its NumPy path
        arrays = [_numpy_view(t.detach()) if on_host else t.detach() for t in tensors]
        k = spec.positional
        kwargs = dict(spec.options)
        kwargs.update(zip(spec.keywords, arrays[k:]))
        if not spec.grads:
            return [_tensor(core(*arrays[:k], **kwargs), on_host)]
        value, grads = core(*arrays[:k], return_grad=True, **kwargs)
        if not isinstance(grads, tuple):
            grads = (grads,)
        kept = []
        for index, source in spec.grads:
            grad = _tensor(grads[0 if source == NEGATED_INPUT_GRAD else source], on_host)
            kept.append(-grad if source == NEGATED_INPUT_GRAD else grad)
        return [_tensor(value, on_host), *kept]
    return impl


def _sum_to_target(grad: Tensor, shape: torch.Size) -> Tensor:
    """The target's gradient from the input's: summed over the axes the target was
    broadcast along (quantile_loss's row target, input.shape[:-1], is one per row)."""
    if grad.shape == shape:
        return grad
    if tuple(shape) == tuple(grad.shape[:-1]):
        return grad.sum(-1)
    return grad.sum_to_size(shape)


def _in_float32(impl, tensors: list[Tensor], text: str) -> list[Tensor]:
    """float16 / bfloat16 tensors given directly: the math in float32 (as PyTorch's
    CPU losses do internally), the value in the input's dtype and each gradient in
    its tensor's dtype."""
    wide = [t.float() if t.dtype in HALF_DTYPES else t for t in tensors]
    value, *grads = impl(wide, text)
    out = [value.to(tensors[0].dtype)]
    for (index, _), grad in zip(decode(text).grads, grads):
        out.append(grad.to(tensors[index].dtype))
    return out


def _tensor(result: Any, on_host: bool) -> Tensor:
    return torch.from_numpy(np.asarray(result)) if on_host else result


# ---- autograd -------------------------------------------------------------------------

class _Fused(torch.autograd.Function):
    """The loss with gradients (``run``: the op below autograd, or in eager mode the
    implementation itself), its gradients kept for the backward, its inputs saved
    for a backward that must recompute them (see backward) or build a graph
    (:mod:`._second_order`)."""

    @staticmethod
    def forward(ctx, run, loss: str, text: str, *tensors):
        out = run(list(tensors), text)
        kept = out[1:]
        ctx.mark_non_differentiable(*kept)
        ctx.save_for_backward(*tensors)
        ctx.kept = kept
        ctx.run, ctx.text = run, text
        ctx.loss, ctx.spec, ctx.count = loss, decode(text), len(tensors)
        ctx.shapes = [t.shape for t in tensors]
        return tuple(out)

    @staticmethod
    def backward(ctx, grad_value, *_unused):
        grads: list[Tensor | None] = [None] * ctx.count
        if torch.is_grad_enabled():
            # create_graph=True: the kept gradient has no graph, so it is recomputed
            # from a differentiable formula, or refused (it would differentiate to 0)
            for (index, _), g in zip(ctx.spec.grads, _graph_gradients(ctx, grad_value)):
                grads[index] = g
            return (None, None, None, *grads)
        kept = ctx.kept
        if kept is None:    # handed to autograd by an earlier backward (retain_graph)
            kept = ctx.run(list(ctx.saved_tensors), ctx.text)[1:]
        # loss.backward() on the host (grad_output 1): the kept gradient is the answer,
        # handed to autograd without a copy.  Autograd then owns it (x.grad may be it,
        # a hook may change it in place), so it is dropped here and a later backward
        # recomputes it.  (Only for a plain eager tensor: a traced one is not read.)
        one = type(grad_value) is Tensor and _is_one(grad_value)
        if one:
            ctx.kept = None
        for (index, source), g in zip(ctx.spec.grads, kept):
            if not one:
                g = g * _scale(ctx.loss, ctx.spec.expand, grad_value, g)
            if source == NEGATED_INPUT_GRAD:
                g = _sum_to_target(g, ctx.shapes[index])
            grads[index] = g
        return (None, None, None, *grads)


def _graph_gradients(ctx, grad_value: Tensor) -> tuple[Tensor, ...]:
    """The gradients with a graph (for second order), from the loss's formula."""
    spec: Spec = ctx.spec
    options = dict(spec.options)
    if not _second_order.has_formula(ctx.loss, options):
        supported = ", ".join(sorted(_second_order.FORMULAS))
        raise RuntimeError(
            f"{ctx.loss}: a graph of this gradient was requested (create_graph=True, a "
            f"Hessian, gradgradcheck), but fastloss has second-order gradients only for "
            f"{supported}; use torch.nn.functional's loss where "
            f"second-order gradients are needed")
    inputs = ctx.saved_tensors
    names = [*("input", "target")[:spec.positional], *spec.keywords]
    wanted = [names[index] for index, _ in spec.grads]
    return _second_order.gradients(ctx.loss, dict(zip(names, inputs)), options, wanted,
                                   grad_value)


def _is_one(grad_output: Tensor) -> bool:
    return (grad_output.dim() == 0 and grad_output.device.type == "cpu"
            and grad_output.item() == 1.0)


def _below_autograd(op):
    def run(tensors: list[Tensor], text: str) -> list[Tensor]:
        with torch._C._AutoDispatchBelowAutograd():
            return op(tensors, text)
    return run


def _autograd(loss: str, op):
    run = _below_autograd(op)

    def kernel(tensors: list[Tensor], text: str) -> list[Tensor]:
        if not decode(text).grads:
            return run(tensors, text)
        return list(_Fused.apply(run, loss, text, *tensors))
    return kernel


# ---- how grad_output of reduction="none" reaches the kept gradients ----------------

#: expand rules (Spec.expand): ("same",) one loss per element; ("row", axis) one per
#: row, the row's entries along ``axis`` of the tensor; ("uniform",) every entry
#: depends on the whole batch; ("overlap", generalized, softmax, skipped classes)
SAME = ("same",)
UNIFORM = ("uniform",)


def row(axis: int) -> tuple[Any, ...]:
    return ("row", axis)


def overlap(generalized: bool, softmax: bool, skipped: int) -> tuple[Any, ...]:
    return ("overlap", generalized, softmax, skipped)


def _scale(loss: str, expand: tuple[Any, ...], g: Tensor, kept: Tensor) -> Tensor:
    """grad_output as a multiplier that broadcasts onto the kept gradient."""
    if g.dim() == 0 or expand[0] == "same":
        return g
    if expand[0] == "row":
        return g.unsqueeze(expand[1])
    if expand[0] == "uniform":
        # the kept gradient is that of the sum: only equal entries (.sum(), .mean())
        # can scale it
        return torch.ops.fastloss._uniform_grad_output(g, loss)
    _, generalized, softmax, skipped = expand
    ones = (1,) * (kept.dim() - 2)
    if generalized:
        return g.reshape(g.shape[0], 1, *ones)
    g = g.reshape(-1, g.shape[-1])   # (N, C'), or (1, C') with batch=True
    if softmax:   # a sample's classes share one softmax: one grad_output per sample
        return torch.ops.fastloss._per_sample_grad_output(g, loss).reshape(-1, 1, *ones)
    if skipped:
        g = torch.cat([g.new_zeros(g.shape[0], skipped), g], dim=1)
    return g.reshape(g.shape[0], kept.shape[1], *ones)


def _uniform_grad_output(g: Tensor, loss: str) -> Tensor:
    flat = g.reshape(-1)
    if flat.numel() == 0:
        return g.sum()
    if not bool(torch.all(flat == flat[0])):
        raise RuntimeError(
            f"{loss}: backward through reduction='none' needs a grad_output with equal "
            f"entries (as from .sum() or .mean()); each entry of this loss depends on "
            f"the whole batch and fastloss keeps only the gradient of the sum. Use "
            f"reduction='sum' or 'mean' and weight the result instead")
    return flat[0].clone()


def _per_sample_grad_output(g: Tensor, loss: str) -> Tensor:
    if not bool(torch.all(g == g[:, :1])):
        raise RuntimeError(
            f"{loss}: backward through reduction='none' with softmax needs equal "
            f"grad_output entries across the classes of each sample (a sample's "
            f"classes share one softmax); use reduction='sum'/'mean' or weight=")
    return g[:, 0].clone()


def _simclr_order(labels: Tensor) -> Tensor:
    """The rows sorted by label, each label exactly twice (NTXentLoss's pairs)."""
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    if not bool(torch.all(counts == 2)):
        raise ValueError("labels: NTXentLoss here takes SimCLR pairs: each label must appear "
                         f"exactly twice, got counts {sorted(set(counts.tolist()))}")
    return order


# ---- registration ---------------------------------------------------------------------

_LIB = torch.library.Library("fastloss", "DEF")

#: the losses with an op: every registry record with a gradient (not
#: pairwise_distances, a matrix that fastloss.torch does not expose)
OP_LOSSES = tuple(name for name, record in REGISTRY.items() if record.gradients)
_IMPLS: dict[str, Any] = {}


def _define_losses() -> None:
    for loss in OP_LOSSES:
        _LIB.define(f"{loss}(Tensor[] tensors, str spec) -> Tensor[]")
        op = getattr(torch.ops.fastloss, loss).default
        impl = _IMPLS[loss] = _impl(loss)
        _LIB.impl(loss, impl, "CPU")
        _LIB.impl(loss, impl, "CUDA")
        _LIB.impl(loss, _autograd(loss, op), "Autograd")
        torch.library.register_fake(f"fastloss::{loss}", _fake(loss), lib=_LIB)
        # under autocast, float16/bfloat16 tensors are cast to float32 and the loss is
        # float32, as autocast does for PyTorch's own losses (its fp32 op list)
        for device in ("cpu", "cuda"):
            torch.library.register_autocast(f"fastloss::{loss}", device, torch.float32,
                                            lib=_LIB)


def _define_checks() -> None:
    """The data-dependent checks of the adapter, as ops of their own."""
    _LIB.define("_uniform_grad_output(Tensor grad_output, str loss) -> Tensor")
    _LIB.impl("_uniform_grad_output", _uniform_grad_output, "CompositeExplicitAutograd")
    torch.library.register_fake("fastloss::_uniform_grad_output",
                                lambda g, loss: g.new_empty(()), lib=_LIB)
    _LIB.define("_per_sample_grad_output(Tensor grad_output, str loss) -> Tensor")
    _LIB.impl("_per_sample_grad_output", _per_sample_grad_output, "CompositeExplicitAutograd")
    torch.library.register_fake("fastloss::_per_sample_grad_output",
                                lambda g, loss: g.new_empty((g.shape[0],)), lib=_LIB)
    _LIB.define("_simclr_order(Tensor labels) -> Tensor")
    _LIB.impl("_simclr_order", _simclr_order, "CompositeExplicitAutograd")
    torch.library.register_fake("fastloss::_simclr_order",
                                lambda labels: labels.new_empty(labels.shape,
                                                                dtype=torch.int64), lib=_LIB)


_define_losses()
_define_checks()


# ---- the call, from fastloss.torch.functional ----------------------------------------

def call(loss: str, tensors: Sequence[Any], names: Sequence[str], options: dict[str, Any], *,
         tensor_options: dict[str, Any] | None = None, differentiable: int = 1,
         negated_target: bool = False, expand: tuple[Any, ...] = SAME) -> Tensor:
    """``loss`` of ``tensors`` (named ``names``, for errors) through its op: gradients
    for those tensors that need one, when autograd records."""
    grads: list[tuple[int, int]] = []
    if torch.is_grad_enabled():
        for index, tensor in enumerate(tensors):
            if isinstance(tensor, Tensor) and tensor.requires_grad:
                if index < differentiable:
                    grads.append((index, index))
                elif negated_target and index == 1:
                    grads.append((index, NEGATED_INPUT_GRAD))
                else:
                    name = names[index]
                    raise ValueError(f"{name}: requires grad, but fastloss computes no "
                                     f"gradient with respect to {name} for {loss}; detach it "
                                     f"({name}.detach())")
    keywords: tuple[str, ...] = ()
    tensor_list = [_as_tensor(t, tensors[0], name) for t, name in zip(tensors, names)]
    if tensor_options:
        keywords = tuple(tensor_options)
        tensor_list += [_as_tensor(t, tensors[0], name) for name, t in tensor_options.items()]
    spec = Spec(len(tensors), keywords, tuple(options.items()), tuple(grads), expand)
    return invoke(loss, tensor_list, encode(spec))


def invoke(loss: str, tensors: list[Tensor], text: str) -> Tensor:
    """The value of the op ``loss`` (the one place that calls the loss ops: tests
    record the calls here).

    Eager calls on plain tensors skip the dispatcher: they run the op's own
    implementation and autograd formula directly (_Fused), which saves the op's
    two Python dispatches (about a third of a small training step).  Under
    torch.compile, export, a dispatch mode or a tensor subclass (fake, functional,
    functorch-wrapped tensors) the call goes through the op."""
    if torch.compiler.is_compiling() or not _plain(tensors):
        return getattr(torch.ops.fastloss, loss).default(tensors, text)[0]
    impl = _IMPLS[loss]
    if not decode(text).grads:
        return impl(tensors, text)[0]
    return _Fused.apply(impl, loss, text, *tensors)[0]


def _plain(tensors: list[Tensor]) -> bool:
    if (_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
            or torch._C._is_any_autocast_enabled()):
        return False   # (autocast: the op's autocast kernel casts the inputs)
    for t in tensors:
        if type(t) is not Tensor or _wrapped(t):
            return False
    return True


_dispatch_mode = torch.utils._python_dispatch._get_current_dispatch_mode
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _as_tensor(value: Any, first: Any, name: str) -> Tensor:
    """A tensor argument as it is; anything else (a weight given as a list) as a tensor
    on the first argument's device."""
    if isinstance(value, Tensor):
        return value
    if not isinstance(first, Tensor):
        raise TypeError(f"{name}: fastloss.torch takes tensors, got "
                        f"{type(value).__name__}; use the core API (import fastloss) for "
                        f"arrays")
    return torch.as_tensor(np.asarray(value), device=first.device)
