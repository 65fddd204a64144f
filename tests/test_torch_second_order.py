"""Second-order gradients through fastloss.torch: gradgradcheck of every loss with a
differentiable formula (fastloss.torch._second_order), the graph's first-order
gradient equal to the fused one, gradient penalties and Hessians against PyTorch's
own losses; every other loss refuses a graph of its gradient at once."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastloss.torch.functional as F  # noqa: E402
from fastloss.torch import _second_order  # noqa: E402

from test_torch_adapter import GRADCHECK, _logits, leaf  # noqa: E402

TF = torch.nn.functional


def _weighted_cases():
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w = torch.from_numpy(rng.uniform(0.5, 2.0, (4, 3)))
    p = torch.from_numpy(rng.uniform(0.1, 0.9, (4, 3)))
    b = torch.from_numpy((rng.random((4, 3)) < 0.5).astype(np.float64))
    logits, labels = _logits((5, 4))
    labels[2] = -100
    cw = torch.from_numpy(rng.uniform(0.5, 2.0, 4))
    cases = []
    for reduction in ("mean", "sum", "none"):
        cases += [
            (f"mse_loss-weight-{reduction}", F.mse_loss, (leaf(x), leaf(y)),
             dict(weight=w, reduction=reduction)),
            (f"log_cosh_loss-weight-{reduction}", F.log_cosh_loss, (leaf(x), leaf(y)),
             dict(weight=w, reduction=reduction)),
            (f"binary_cross_entropy-weight-{reduction}", F.binary_cross_entropy,
             (leaf(p.numpy()), b), dict(weight=w, reduction=reduction)),
            (f"binary_cross_entropy_with_logits-pos_weight-{reduction}",
             F.binary_cross_entropy_with_logits, (leaf(x), p),
             dict(weight=w, pos_weight=torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64),
                  reduction=reduction)),
            (f"sigmoid_focal_loss-{reduction}", F.sigmoid_focal_loss, (leaf(x), b),
             dict(alpha=0.3, gamma=1.5, reduction=reduction)),
            (f"hinge_loss-squared-{reduction}", F.hinge_loss, (leaf(x), 2 * b - 1),
             dict(squared=True, reduction=reduction)),
            (f"quantile_loss-levels-{reduction}", F.quantile_loss, (leaf(x), leaf(y)),
             dict(q=p[0], reduction=reduction)),
            (f"cross_entropy-weight-ignore-{reduction}", F.cross_entropy,
             (leaf(logits), torch.from_numpy(labels)),
             dict(weight=cw, label_smoothing=0.2, reduction=reduction)),
            (f"cross_entropy-probabilities-{reduction}", F.cross_entropy,
             (leaf(logits), torch.softmax(torch.from_numpy(logits[::-1].copy()), 1)),
             dict(reduction=reduction)),
            (f"nll_loss-weight-ignore-{reduction}", F.nll_loss,
             (leaf(np.log(np.abs(logits) + 0.1)), torch.from_numpy(labels)),
             dict(weight=cw, reduction=reduction)),
        ]
    return cases


CALLS = [c for c in GRADCHECK if c[0].split("-")[0] in _second_order.FORMULAS]
CALLS += _weighted_cases()
REFUSED = [c for c in GRADCHECK if c[0].split("-")[0] not in _second_order.FORMULAS]


def test_the_formulas_cover_what_the_issue_asks():
    assert {"mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss",
            "quantile_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
            "sigmoid_focal_loss", "hinge_loss", "cross_entropy",
            "nll_loss"} <= set(_second_order.FORMULAS)
    assert {c[0].split("-")[0] for c in CALLS} == set(_second_order.FORMULAS)


@pytest.mark.parametrize("label,fn,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_gradgradcheck(label, fn, args, kwargs):
    assert torch.autograd.gradgradcheck(lambda *a: fn(*a, **kwargs), args, eps=1e-6,
                                        atol=1e-6)


@pytest.mark.parametrize("label,fn,args,kwargs", CALLS, ids=[c[0] for c in CALLS])
def test_the_graph_gradient_is_the_fused_gradient(label, fn, args, kwargs):
    """With create_graph the gradient comes from the formula; it must be the kernel's."""
    wanted = [a for a in args if a.requires_grad]
    value = fn(*args, **kwargs)
    grad_output = torch.rand(value.shape, dtype=value.dtype,
                             generator=torch.Generator().manual_seed(2)) + 0.5
    fused = torch.autograd.grad(value, wanted, grad_output, retain_graph=True)
    graph = torch.autograd.grad(value, wanted, grad_output, create_graph=True)
    for a, b in zip(graph, fused):
        assert a.grad_fn is not None
        np.testing.assert_allclose(a.detach().numpy(), b.numpy(), rtol=1e-10, atol=1e-13)


def test_gradient_penalty_against_torch():
    """loss + λ‖∇ₓloss‖², the penalty of WGAN-GP and input-gradient regularisers."""
    logits, labels = _logits((6, 5))
    target = torch.from_numpy(labels)
    grads = []
    for cross_entropy in (F.cross_entropy, TF.cross_entropy):
        x = leaf(logits)
        value = cross_entropy(x, target, label_smoothing=0.1)
        (g,) = torch.autograd.grad(value, (x,), create_graph=True)
        (value + 10.0 * (g ** 2).sum()).backward()
        grads.append(x.grad)
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), rtol=1e-10, atol=1e-14)
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("ours,theirs", [
    (F.mse_loss, TF.mse_loss), (F.binary_cross_entropy_with_logits,
                                TF.binary_cross_entropy_with_logits),
    (F.huber_loss, TF.huber_loss)], ids=["mse_loss", "bce_with_logits", "huber_loss"])
def test_hessian_against_torch(ours, theirs):
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.standard_normal(6))
    y = torch.from_numpy(rng.uniform(0, 1, 6))
    h_ours = torch.autograd.functional.hessian(lambda a: ours(a, y), x)
    h_theirs = torch.autograd.functional.hessian(lambda a: theirs(a, y), x)
    np.testing.assert_allclose(h_ours.numpy(), h_theirs.numpy(), rtol=1e-10, atol=1e-14)
    assert h_theirs.abs().sum() > 0


def test_maml_inner_step_against_torch():
    """One MAML step: the outer gradient flows through the inner update's gradient."""
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((8, 3)))
    y = torch.from_numpy(rng.integers(0, 4, 8))
    outer = []
    for cross_entropy in (F.cross_entropy, TF.cross_entropy):
        w = leaf(rng.standard_normal((3, 4)) if not outer else w0)
        w0 = w.detach().numpy().copy()
        (g,) = torch.autograd.grad(cross_entropy(x @ w, y), (w,), create_graph=True)
        adapted = w - 0.5 * g
        cross_entropy(x @ adapted, y).backward()
        outer.append(w.grad)
    np.testing.assert_allclose(outer[0].numpy(), outer[1].numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("label,fn,args,kwargs", REFUSED, ids=[c[0] for c in REFUSED])
def test_other_losses_refuse_a_graph_of_their_gradient(label, fn, args, kwargs):
    wanted = [a for a in args if a.requires_grad]
    value = fn(*args, **kwargs).sum()
    with pytest.raises(RuntimeError, match=f"{label.split('-')[0]}: a graph of this "
                                           f"gradient was requested"):
        torch.autograd.grad(value, wanted, create_graph=True)
    assert all(g is not None for g in torch.autograd.grad(fn(*args, **kwargs).sum(), wanted))


def test_first_order_still_works_with_the_inputs_saved():
    x = leaf(np.linspace(-1, 1, 3))
    zeros = torch.zeros(3, dtype=torch.float64)
    (g,) = torch.autograd.grad(F.mse_loss(x, zeros), (x,))
    np.testing.assert_allclose(g.numpy(), 2 * x.detach().numpy() / 3, rtol=1e-13)
