"""fastloss.torch as PyTorch operators: opcheck of every loss op, torch.compile with
fullgraph (static and dynamic shapes), torch.export, and the data-dependent checks
inside the graph.  The calls are those of test_torch_adapter's gradcheck table, one
or two per loss."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastloss.torch as flt  # noqa: E402
import fastloss.torch.functional as F  # noqa: E402
from fastloss._registry import REGISTRY  # noqa: E402
from fastloss.torch import _ops  # noqa: E402

from test_torch_adapter import GRADCHECK  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _op_calls(fn, args, kwargs, monkeypatch):
    """The (op, tensors, spec) calls that ``fn(*args, **kwargs)`` makes."""
    seen = []
    original = _ops.invoke

    def record(loss, tensors, text):
        seen.append((getattr(torch.ops.fastloss, loss).default, tensors, text))
        return original(loss, tensors, text)

    monkeypatch.setattr(_ops, "invoke", record)
    fn(*args, **kwargs)
    return seen


def test_every_loss_is_an_operator():
    assert set(_ops.OP_LOSSES) == set(REGISTRY) - {"pairwise_distances"}
    for loss in _ops.OP_LOSSES:
        op = getattr(torch.ops.fastloss, loss).default
        assert str(op._schema) == f"fastloss::{loss}(Tensor[] tensors, str spec) -> Tensor[]"
    covered = {label.split("-")[0] for label, *_ in GRADCHECK}
    assert set(_ops.OP_LOSSES) - covered == {"complete_box_iou_loss"}   # as test_gradcheck says


@pytest.mark.parametrize("label,fn,args,kwargs", GRADCHECK, ids=[c[0] for c in GRADCHECK])
def test_opcheck(label, fn, args, kwargs, monkeypatch):
    """Schema, autograd registration, fake tensors against the real outputs (shapes,
    strides, dtypes), AOT dispatch with static and dynamic shapes."""
    (op, tensors, text), = _op_calls(fn, args, kwargs, monkeypatch)
    assert _ops.decode(text).grads, "the table's calls differentiate"
    torch.library.opcheck(op, (tensors, text))
    # and without gradients: the value-only form of the same call
    no_grad = _ops.encode(_ops.decode(text)._replace(grads=()))
    torch.library.opcheck(op, ([t.detach() for t in tensors], no_grad))


def _value_and_grads(fn, args):
    copies = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    value = fn(*copies)
    value.sum().backward()
    return value.detach(), [a.grad for a in copies if a.requires_grad]


#: one call per family also runs with dynamic shapes
DYNAMIC = {"mse_loss-none", "cross_entropy-mean", "dice_loss", "distance_box_iou_loss",
           "info_nce_loss"}


@pytest.mark.parametrize("label,fn,args,kwargs", GRADCHECK, ids=[c[0] for c in GRADCHECK])
def test_compile_fullgraph_matches_eager(label, fn, args, kwargs):
    def loss(*a):
        return fn(*a, **kwargs)

    eager_value, eager_grads = _value_and_grads(loss, args)
    for dynamic in ((False, True) if label in DYNAMIC else (False,)):
        torch._dynamo.reset()
        compiled = torch.compile(loss, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        value, grads = _value_and_grads(compiled, args)
        torch.testing.assert_close(value, eager_value, rtol=1e-12, atol=0)
        assert len(grads) == len(eager_grads)
        for got, want in zip(grads, eager_grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


class _Model(torch.nn.Module):
    def __init__(self, criterion, classes=4):
        super().__init__()
        self.linear = torch.nn.Linear(6, classes, dtype=torch.float64)
        self.criterion = criterion

    def forward(self, x, target):
        return self.criterion(self.linear(x), target)


def _step(model, x, target):
    model.zero_grad()
    value = model(x, target)
    value.backward()
    return value.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("make", [
    lambda: (flt.CrossEntropyLoss(label_smoothing=0.1), torch.tensor([0, 3, 1, 2, 3])),
    lambda: (flt.MSELoss(), torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4)),
    lambda: (flt.NTXentLoss(), torch.tensor([1, 0, 2, 1, 0, 2])),
], ids=["CrossEntropyLoss", "MSELoss", "NTXentLoss"])
def test_modules_compile_with_inductor(make):
    criterion, target = make()
    torch.manual_seed(0)
    model = _Model(criterion)
    x = torch.randn(len(target), 6, dtype=torch.float64)
    eager = _step(model, x, target)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    got = _step(compiled, x, target)
    torch.testing.assert_close(got[0], eager[0], rtol=1e-12, atol=1e-14)
    for a, b in zip(got[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_dice_module_compiles_dynamic():
    criterion = flt.DiceLoss(softmax=True, to_onehot_y=True)
    rng = np.random.default_rng(3)
    for size in (4, 6):
        x = torch.from_numpy(rng.standard_normal((2, 3, size, size))).requires_grad_()
        y = torch.from_numpy(rng.integers(0, 3, (2, 1, size, size)))
        eager = criterion(x, y)
        torch._dynamo.reset()
        value = torch.compile(criterion, fullgraph=True, backend="aot_eager",
                              dynamic=True)(x, y)
        torch.testing.assert_close(value, eager, rtol=1e-12, atol=0)


def test_checks_on_values_run_inside_the_graph():
    """A bad label is found by the op at run time: the graph compiled with good labels
    is not broken, and the same graph raises the core's error for bad ones."""
    def loss(x, y):
        return F.cross_entropy(x, y)

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    compiled(x, torch.tensor([0, 1, 2])).backward()
    with pytest.raises(ValueError, match="target"):
        compiled(x, torch.tensor([0, 7, 2]))
    with pytest.raises(RuntimeError, match="equal"):   # the pair losses' grad_output check
        e = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        value = torch.compile(lambda e: F.contrastive_loss(e, torch.tensor([0, 1, 0, 1]),
                                                           reduction="none"),
                              fullgraph=True, backend="aot_eager")(e)
        value.backward(torch.arange(4.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="exactly twice"):
        torch.compile(flt.NTXentLoss(), fullgraph=True, backend="aot_eager")(
            torch.randn(4, 3), torch.tensor([0, 0, 0, 1]))


def test_export():
    class Scored(torch.nn.Module):
        def forward(self, logits, labels, prediction, truth):
            return F.cross_entropy(logits, labels) + F.mse_loss(prediction, truth)

    rng = np.random.default_rng(0)
    args = (torch.from_numpy(rng.standard_normal((5, 3))), torch.tensor([0, 2, 1, 1, 0]),
            torch.from_numpy(rng.standard_normal(7)), torch.from_numpy(rng.standard_normal(7)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(Scored(), args)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"fastloss.cross_entropy.default", "fastloss.mse_loss.default"} <= targets
    torch.testing.assert_close(exported.module()(*args), Scored()(*args), rtol=1e-13, atol=0)


def test_spec_strings_round_trip_across_processes():
    spec = _ops.Spec(2, ("weight",), (("reduction", "none"), ("delta", 0.5)), ((0, 0),),
                     _ops.row(1))
    text = _ops.encode(spec)
    _ops._DECODED.pop(text)          # as in a process that did not make it
    assert _ops.decode(text) == spec
    with pytest.raises(ValueError, match="not a fastloss op spec"):
        _ops.decode("__import__('os')")


def test_eager_shortcut_and_the_op_agree():
    """Eager calls on plain tensors run the op's implementation directly; a fake tensor
    (or any mode or subclass) goes through the op, with the same shapes."""
    x = torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(4, 3).requires_grad_()
    y = torch.tensor([0, 2, 1, 1])
    direct = F.cross_entropy(x, y, reduction="none")
    direct.sum().backward()
    direct_grad, x.grad = x.grad, None
    spec = _ops.encode(_ops.Spec(2, (), (("ignore_index", -100), ("label_smoothing", 0.0),
                                          ("reduction", "none"), ("backend", None)),
                                 ((0, 0),), _ops.row(1)))
    through_op = torch.ops.fastloss.cross_entropy.default([x, y], spec)[0]
    through_op.sum().backward()
    torch.testing.assert_close(through_op, direct, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, direct_grad, rtol=0, atol=0)
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    fake_x, fake_y = mode.from_tensor(x.detach()), mode.from_tensor(y)
    with mode:
        fake = F.cross_entropy(fake_x, fake_y, reduction="none")
    assert fake.shape == (4,) and fake.dtype == torch.float64
