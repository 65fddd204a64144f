"""Bad input to the pairwise losses: an error naming the argument and what was
expected, before any kernel runs; zero rows with cosine give documented values."""
import numpy as np
import pytest

import fastloss as fl

pytestmark = pytest.mark.xdist_group("pairwise_validation")

X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("call,error,match", [
    # widths, shapes, dtypes
    (lambda: fl.nt_xent_loss(X, X[:, :3]), ValueError, "z2: width D = 3"),
    (lambda: fl.nt_xent_loss(X, X[:5]), ValueError, "z2: shape"),
    (lambda: fl.info_nce_loss(X, X[:, :3]), ValueError, "positive_key: width D = 3"),
    (lambda: fl.info_nce_loss(X, X[:5]), ValueError, "positive_key: 5 rows"),
    (lambda: fl.info_nce_loss(X, X, X[:, :2]), ValueError, "negative_keys: width"),
    (lambda: fl.info_nce_loss(X, X, X, negative_mode="paired"), ValueError,
     r"negative_keys: expected a 3-D array \(N, M, D\)"),
    (lambda: fl.info_nce_loss(X, X, np.zeros((5, 2, 4), np.float32), negative_mode="paired"),
     ValueError, "negative_keys: paired negatives need one set per query"),
    (lambda: fl.info_nce_loss(X, X, negative_mode="both"), ValueError, "negative_mode"),
    (lambda: fl.nt_xent_loss(X, X.astype(np.float64)), TypeError, "z2: dtype float64 differs"),
    (lambda: fl.contrastive_loss(X.astype(np.int32), Y), TypeError,
     "embeddings: expected float32 or float64"),
    (lambda: fl.contrastive_loss(X[0], Y), ValueError, r"embeddings: expected a 2-D array"),
    (lambda: fl.contrastive_loss(np.zeros((6, 0), np.float32), Y), ValueError, "width 0"),
    (lambda: fl.triplet_margin_loss(X, X, X[:5]), ValueError, "negative: shape"),
    (lambda: fl.triplet_margin_loss(X[None], X[None], X[None]), ValueError,
     r"anchor: expected shape \(N, D\) or \(D,\)"),
    # labels
    (lambda: fl.contrastive_loss(X, Y[:5]), ValueError, r"labels: expected shape \(6,\)"),
    (lambda: fl.batch_hard_triplet_loss(X, Y.astype(np.float32)), TypeError,
     "labels: expected integer"),
    (lambda: fl.contrastive_loss(X, Y.reshape(2, 3)), ValueError, "labels: expected shape"),
    # too few samples for pairs
    (lambda: fl.contrastive_loss(X[:1], Y[:1]), ValueError, "at least 2 embeddings"),
    (lambda: fl.batch_hard_triplet_loss(X[:1], Y[:1]), ValueError, "at least 2"),
    (lambda: fl.nt_xent_loss(X[:1], X[:1]), ValueError, "z1: needs at least 2"),
    # parameters
    (lambda: fl.nt_xent_loss(X, X, temperature=0), ValueError, "temperature: expected"),
    (lambda: fl.info_nce_loss(X, X, temperature=-0.1), ValueError, "temperature"),
    (lambda: fl.info_nce_loss(X, X, temperature=float("inf")), ValueError, "temperature"),
    (lambda: fl.contrastive_loss(X, Y, pos_margin=-0.1), ValueError, "pos_margin: expected"),
    (lambda: fl.contrastive_loss(X, Y, neg_margin=float("nan")), ValueError, "neg_margin"),
    (lambda: fl.contrastive_loss(X, Y, distance="cosine", neg_margin=2.5), ValueError,
     r"neg_margin: a cosine distance 1 - cos lies in \[0, 2\]"),
    (lambda: fl.batch_hard_triplet_loss(X, Y, margin=-1), ValueError, "margin: expected"),
    (lambda: fl.triplet_margin_loss(X, X, X, margin=-1), ValueError, "margin"),
    (lambda: fl.triplet_margin_loss(X, X, X, p=0), ValueError, "p: expected"),
    (lambda: fl.triplet_margin_loss(X, X, X, eps=-1), ValueError, "eps: expected"),
    (lambda: fl.contrastive_loss(X, Y, distance="manhattan"), ValueError, "distance: expected"),
    (lambda: fl.pairwise_distances(X, metric="l1"), ValueError, "metric: expected"),
    (lambda: fl.contrastive_loss(X, Y, reduction="avg"), ValueError, "reduction: expected"),
    (lambda: fl.nt_xent_loss(X, X, reduction="mean_nonzero"), ValueError, "reduction"),
    (lambda: fl.nt_xent_loss(X, X, return_grad="yes"), TypeError, "return_grad"),
    (lambda: fl.contrastive_loss(X, Y, backend="tpu"), ValueError, "unknown backend"),
])
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_zero_rows_with_cosine_are_finite():
    """A zero row normalizes to zero (torch.nn.functional.normalize): cosine 0 with
    everything, distance 1; its gradient is finite (1/eps scaled, as torch)."""
    x = X.astype(np.float64).copy()
    x[2] = 0.0
    d = fl.pairwise_distances(x, metric="cosine")
    np.testing.assert_allclose(d[2, [0, 1, 3]], 1.0)
    assert d[2, 2] == 0
    for fn in (lambda: fl.contrastive_loss(x, Y, distance="cosine", return_grad=True),
               lambda: fl.nt_xent_loss(x, x[::-1].copy(), return_grad=True),
               lambda: fl.info_nce_loss(x, x[::-1].copy(), x, return_grad=True)):
        value, grads = fn()
        grads = grads if isinstance(grads, tuple) else (grads,)
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)


def test_gpu_arrays_need_the_gpu_backend():
    from conftest import to_device
    with pytest.raises(TypeError, match="runs on the CPU only"):
        fl.nt_xent_loss(to_device(X), to_device(X), backend="c")
    with pytest.raises(TypeError, match="one device"):
        fl.nt_xent_loss(to_device(X), X)
