"""Cross-checks against PyTorch 2.13 (skipped when torch is not installed):
values and autograd gradients of torch.nn.functional (and torchvision's focal
formula) for every loss, reduction and weight convention."""
import numpy as np
import pytest

import fastloss as fl
from fastloss.testing import CASES, make_inputs

from conftest import tol

torch = pytest.importorskip("torch")

#: losses where torch takes a weight (and so fixes what "mean" divides by)
TORCH_WEIGHTED = {"mse_loss", "l1_loss", "huber_loss", "binary_cross_entropy",
                  "binary_cross_entropy_with_logits"}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name, dtype, reduction, weighted):
    case = CASES[name]
    x, y = make_inputs(case, (6, 7), dtype, seed=11)
    w = np.random.default_rng(3).uniform(0.1, 2.0, (6, 7)).astype(dtype) if weighted else None
    value, grad = getattr(fl, name)(x, y, weight=w, reduction=reduction, return_grad=True,
                                    **case.params)
    tx = torch.tensor(x, requires_grad=True)
    tw = None if w is None else torch.tensor(w)
    expected = case.torch_fn(tx, torch.tensor(y), tw, reduction, **case.params)
    expected.sum().backward()
    t = tol(dtype) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, expected.detach().numpy(), **t)
    np.testing.assert_allclose(grad, tx.grad.numpy(), **t)


def test_weighted_mean_conventions_follow_torch():
    """mse/l1 divide by sum(weight); huber and BCE divide by N (PyTorch 2.13)."""
    x = np.array([1.0, 2.0, 3.0])
    y = np.zeros(3)
    w = np.array([1.0, 2.0, 3.0])
    tx, ty, tw = map(torch.tensor, (x, y, w))
    F = torch.nn.functional
    assert np.isclose(fl.mse_loss(x, y, weight=w), F.mse_loss(tx, ty, weight=tw).item())
    assert np.isclose(fl.mse_loss(x, y, weight=w), (1 + 8 + 27) / 6)
    assert np.isclose(fl.l1_loss(x, y, weight=w), F.l1_loss(tx, ty, weight=tw).item())
    assert np.isclose(fl.huber_loss(x, y, weight=w), F.huber_loss(tx, ty, weight=tw).item())
    assert np.isclose(fl.huber_loss(x, y, weight=w), (0.5 + 2 * 1.5 + 3 * 2.5) / 3)
    p = np.array([0.2, 0.5, 0.9])
    assert np.isclose(fl.binary_cross_entropy(p, np.ones(3), weight=w),
                      F.binary_cross_entropy(torch.tensor(p), torch.ones(3, dtype=torch.float64),
                                             weight=tw).item())


def test_pos_weight_broadcasts_over_trailing_axes_like_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4))
    y = (rng.uniform(size=(5, 3, 4)) < 0.4).astype(float)
    pw = np.array([0.5, 1.0, 2.0, 4.0])
    w = rng.uniform(size=(3, 1))
    value, grad = fl.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw,
                                                      return_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        tx, torch.tensor(y), weight=torch.tensor(w), pos_weight=torch.tensor(pw))
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-12)


def test_smooth_l1_beta_zero_and_huber_relation():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(100), rng.standard_normal(100)
    F = torch.nn.functional
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert np.isclose(fl.smooth_l1_loss(x, y, beta=0.0), F.smooth_l1_loss(tx, ty, beta=0.0).item())
    assert np.isclose(fl.huber_loss(x, y, delta=0.4),
                      0.4 * F.smooth_l1_loss(tx, ty, beta=0.4).item())
