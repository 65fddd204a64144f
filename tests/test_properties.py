"""Property tests (hypothesis) on bounded floats: every backend agrees with the
reference, and losses keep their mathematical properties."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import fastloss as fl
from fastloss import reference

from conftest import available

HOST = [b for b in ("c", "numba") if available(b)]
finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)
arrays = hnp.arrays(np.float64, st.integers(0, 40), elements=finite)


@settings(max_examples=60, deadline=None)
@given(arrays, st.data())
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
                                  "log_cosh_loss", "quantile_loss",
                                  "binary_cross_entropy_with_logits", "sigmoid_focal_loss"])
def test_backends_agree_with_reference(name, x, data):
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=finite))
    if name in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        y = (y > 0).astype(np.float64)
    expected, expected_grad = getattr(reference, name)(x, y, reduction="sum", return_grad=True)
    for backend in HOST:
        value, grad = getattr(fl, name)(x, y, reduction="sum", return_grad=True, backend=backend)
        np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 30), elements=finite))
def test_regression_losses_are_non_negative_and_zero_at_the_target(x):
    for name in ("mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss",
                 "quantile_loss"):
        fn = getattr(fl, name)
        assert fn(x, x[::-1].copy(), reduction="none").min() >= 0
        assert fn(x, x, reduction="sum") == 0
        value, grad = fn(x, x, reduction="sum", return_grad=True)
        if name not in ("quantile_loss",):
            assert np.all(grad == 0)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 30), elements=st.floats(-50, 50, width=32)))
def test_logits_losses_are_finite_and_decrease_towards_the_label(x):
    y = np.ones_like(x)
    value, grad = fl.binary_cross_entropy_with_logits(x, y, reduction="none", return_grad=True)
    assert np.all(np.isfinite(value)) and np.all(grad <= 0)   # raising the logit lowers the loss
    value, grad = fl.sigmoid_focal_loss(x, y, reduction="none", return_grad=True, gamma=0.5)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)) and np.all(grad <= 0)
