"""Gradients: the reference's analytic gradient against central finite differences,
and every backend's fused gradient against the reference's (in the parity tests).
Finite differences check the reference itself, so the oracle is not taken on trust."""
import numpy as np
import pytest

import fastloss as fl
from fastloss import reference
from fastloss.testing import CASES, make_inputs

from conftest import KERNEL_BACKENDS, to_device, to_host

PARAMS = {
    "huber_loss": {"delta": 0.7},
    "smooth_l1_loss": {"beta": 0.6},
    "quantile_loss": {"q": 0.3},
    "binary_cross_entropy_with_logits": {"pos_weight": 2.5},
    "sigmoid_focal_loss": {"alpha": 0.3, "gamma": 1.5},
    "hinge_loss": {"margin": 1.0, "squared": True},
}


def _kinks(name, x, y, params, h):
    """Points within h of a kink (where the loss is not differentiable)."""
    d = x - y
    if name in ("l1_loss", "quantile_loss"):
        return np.abs(d) < 2 * h
    if name == "huber_loss":
        return np.abs(np.abs(d) - params["delta"]) < 2 * h
    if name == "smooth_l1_loss":
        return np.abs(np.abs(d) - params["beta"]) < 2 * h
    if name == "hinge_loss":
        return np.abs(params["margin"] - y * x) < 2 * h
    return np.zeros(x.shape, bool)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_gradient_matches_finite_differences(name, reduction):
    x, y = make_inputs(CASES[name], 40, np.float64, seed=3)
    if name == "sigmoid_focal_loss":
        y = np.concatenate([y[:20], np.linspace(0.05, 0.95, 20)])   # soft labels too
    w = np.random.default_rng(1).uniform(0.5, 2.0, 40)
    params = PARAMS.get(name, {})
    fn = getattr(reference, name)
    _, grad = fn(x, y, weight=w, reduction=reduction, return_grad=True, **params)
    h = 1e-6
    numeric = np.empty_like(x)
    for i in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = (fn(xp, y, weight=w, reduction=reduction, **params)
                      - fn(xm, y, weight=w, reduction=reduction, **params)) / (2 * h)
    smooth = ~_kinks(name, x, y, params, h)
    np.testing.assert_allclose(grad[smooth], numeric[smooth], rtol=1e-5,
                               atol=1e-7 * np.abs(numeric).max())


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_focal_gradient_by_finite_differences_on_the_kernels(backend, gamma):
    """The kernels' focal gradient, for soft and hard labels, also against finite
    differences of the kernels' own values (float64)."""
    x = np.linspace(-6, 6, 25)
    y = np.tile([0.0, 1.0, 0.25, 0.75, 0.5], 5)
    move = to_device if backend == "cuda" else (lambda a: a)
    _, grad = fl.sigmoid_focal_loss(move(x), move(y), gamma=gamma, reduction="sum",
                                    return_grad=True, backend=backend)
    h = 1e-6
    values = lambda xx: to_host(fl.sigmoid_focal_loss(move(xx), move(y), gamma=gamma,
                                                      reduction="none", backend=backend))
    numeric = (values(x + h) - values(x - h)) / (2 * h)
    np.testing.assert_allclose(to_host(grad), numeric, rtol=1e-5, atol=1e-8)
