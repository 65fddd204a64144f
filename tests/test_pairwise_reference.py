"""The pairwise (representation-learning) NumPy reference against the libraries it copies.

Checks ``fastloss.reference``'s pairwise_distances, contrastive_loss, triplet_margin_loss,
batch_hard_triplet_loss, info_nce_loss and nt_xent_loss only -- no kernel is called here.
Expected values and gradients come, in float64 under torch autograd, from:

* torch: ``torch.nn.functional.triplet_margin_loss``, ``torch.cdist``;
* pytorch-metric-learning 2.9.0: ContrastiveLoss (LpDistance normalized or not, power 2 for
  "sqeuclidean", CosineSimilarity with margins (pm, nm) -> (1 - pm, 1 - nm)), NTXentLoss with
  labels [arange(N), arange(N)], BatchHardMiner + TripletMarginLoss (smooth_loss for soft);
  reducers AvgNonZeroReducer = "mean_nonzero", MeanReducer = "mean", SumReducer = "sum" and
  DoNothingReducer, summed per anchor in torch, = "none";
* info-nce-pytorch 0.1.4: ``info_nce`` without negatives, unpaired and paired.

The library tests skip where torch / pytorch-metric-learning / info_nce is missing; the
finite-difference and edge-case tests need NumPy only.  Inputs for gradient comparisons are
drawn (fixed seeds) and redrawn until every relu, max / min and margin is at least KINK away
from its kink.
"""
import zlib

import numpy as np
import pytest

from fastloss import reference as ref

pytestmark = pytest.mark.xdist_group("pairwise_reference")

TIGHT = dict(rtol=1e-10, atol=1e-12)
FD_TOL = dict(rtol=1e-6, atol=1e-8)
KINK = 0.02                        # least distance of a random input from a kink
LABELS7 = (0, 0, 1, 1, 1, 2, 3)    # duplicates, and singleton classes (batch-hard: invalid)
REDUCTIONS = ("none", "mean", "sum")


def _rng(*key):
    """A generator seeded from the test's parameters (crc32: stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _close(actual, expected, rtol, atol):
    """assert_allclose with atol relative to the size of the expected values (zero rows give
    gradients of order 1e12)."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.float64
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def _draw(make, ok, tries=400):
    """make() until ok(result): inputs away from the kinks."""
    for _ in range(tries):
        out = make()
        if ok(out):
            return out
    raise AssertionError("no kink-free input found")


# --------------------------------------------------------------------------- torch helpers

def _torch():
    return pytest.importorskip("torch")


def _pml():
    """pytorch_metric_learning with its losses, miners, distances and reducers imported."""
    _torch()
    pml = pytest.importorskip("pytorch_metric_learning")
    import pytorch_metric_learning.distances  # noqa: F401
    import pytorch_metric_learning.losses  # noqa: F401
    import pytorch_metric_learning.miners  # noqa: F401
    import pytorch_metric_learning.reducers  # noqa: F401
    return pml


def _leaf(a):
    torch = _torch()
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=True)


def _value_and_grads(fn, *arrays):
    """(value, grads) of fn(*leaves) under autograd (grad of the sum for a vector value)."""
    leaves = [_leaf(a) for a in arrays]
    out = fn(*leaves)
    out.sum().backward()
    grads = [np.zeros(a.shape) if t.grad is None else t.grad.numpy()
             for a, t in zip(arrays, leaves)]
    return out.detach().numpy(), grads


def _check(ref_fn, lib_fn, arrays, rtol=TIGHT["rtol"], atol=TIGHT["atol"]):
    """The reference's value and gradients (return_grad=True) against lib_fn's under autograd."""
    value, grad = ref_fn(*arrays, return_grad=True)
    grads = grad if isinstance(grad, tuple) else (grad,)
    assert len(grads) == len(arrays)
    expected, expected_grads = _value_and_grads(lib_fn, *arrays)
    _close(value, expected, rtol, atol)
    for g, e in zip(grads, expected_grads):
        _close(g, e, rtol, atol)
    _close(ref_fn(*arrays), expected, rtol, atol)         # the value without return_grad


# ------------------------------------------------------------------------- direct formulas

def _normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _distances(x, metric, normalize):
    """The full distance matrix the losses see, by loops over the pairs."""
    x = _normalize(x) if (normalize or metric == "cosine") else np.asarray(x, dtype=np.float64)
    n = len(x)
    D = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            if metric == "cosine":
                D[i, j] = 1.0 - float(np.dot(x[i], x[j]))
            else:
                s = float(np.sum((x[i] - x[j]) ** 2))
                D[i, j] = s if metric == "sqeuclidean" else np.sqrt(s)
    return D


def _masks(labels):
    y = np.asarray(labels)
    same = y[:, None] == y[None, :]
    return same & ~np.eye(len(y), dtype=bool), ~same


def _contrastive_ok(x, labels, metric, normalize, pm, nm):
    D = _distances(x, metric, normalize)
    pos, neg = _masks(labels)
    return bool(np.all(np.abs(D[pos] - pm) > KINK) and np.all(np.abs(nm - D[neg]) > KINK))


def _batch_hard_ok(x, labels, metric, normalize, margin):
    """No relu kink, no near-tie of the hardest positive / negative of a valid anchor."""
    D = _distances(x, metric, normalize)
    pos, neg = _masks(labels)
    for i in range(len(x)):
        if not (pos[i].any() and neg[i].any()):
            continue
        dp, dn = np.sort(D[i, pos[i]])[::-1], np.sort(D[i, neg[i]])
        if abs(margin + dp[0] - dn[0]) <= KINK:
            return False
        if (len(dp) > 1 and dp[0] - dp[1] <= KINK) or (len(dn) > 1 and dn[1] - dn[0] <= KINK):
            return False
    return True


# ------------------------------------------------------------------------ finite differences

def _fd_grad(f, arrays, h=1e-6):
    """Central differences of the scalar sum(f(*arrays)) with respect to every array."""
    out = []
    for k, a in enumerate(arrays):
        g = np.zeros(a.shape)
        for idx in np.ndindex(a.shape):
            args_p = [b.copy() for b in arrays]
            args_m = [b.copy() for b in arrays]
            args_p[k][idx] += h
            args_m[k][idx] -= h
            g[idx] = (np.sum(f(*args_p)) - np.sum(f(*args_m))) / (2 * h)
        out.append(g)
    return out


def _check_fd(ref_fn, arrays, **kw):
    value, grad = ref_fn(*arrays, return_grad=True)
    grads = grad if isinstance(grad, tuple) else (grad,)
    assert len(grads) == len(arrays)
    for g, e in zip(grads, _fd_grad(ref_fn, arrays)):
        _close(g, e, **(kw or FD_TOL))
    _close(value, ref_fn(*arrays), **TIGHT)


# ================================================================= pairwise_distances

@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("shape", [(6, 4, None), (5, 3, 7), (2, 1, None), (4, 1, 3)],
                         ids=lambda s: "x{}x{}_y{}".format(*s))
def test_pairwise_distances_direct(metric, shape):
    n, d, m = shape
    rng = _rng("pdist", metric, shape)
    x = rng.normal(size=(n, d))
    y = None if m is None else rng.normal(size=(m, d))
    out = ref.pairwise_distances(x, y, metric=metric)
    b = x if y is None else y
    xx, bb = (_normalize(x), _normalize(b)) if metric == "cosine" else (x, b)
    expected = np.empty((n, len(b)))
    for i in range(n):
        for j in range(len(b)):
            if metric == "cosine":
                expected[i, j] = 1.0 - sum(float(u) * float(v) for u, v in zip(xx[i], bb[j]))
            else:
                s = sum((float(u) - float(v)) ** 2 for u, v in zip(xx[i], bb[j]))
                expected[i, j] = s if metric == "sqeuclidean" else np.sqrt(s)
    _close(out, expected, **TIGHT)
    if y is None:
        assert np.all(np.diag(out) == 0.0)
        _close(out, out.T, **TIGHT)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_distances_torch(metric):
    torch = _torch()
    F = torch.nn.functional
    rng = _rng("pdist_torch", metric)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    tx, ty = torch.tensor(x), torch.tensor(y)
    if metric == "cosine":
        expected = 1.0 - F.normalize(tx, dim=-1) @ F.normalize(ty, dim=-1).T
    else:
        expected = torch.cdist(tx, ty, compute_mode="donot_use_mm_for_euclid_dist")
        if metric == "sqeuclidean":
            expected = expected ** 2
    _close(ref.pairwise_distances(x, y, metric=metric), expected.numpy(), **TIGHT)


def test_pairwise_distances_zero_rows_and_duplicates():
    x = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [1.0, 2.0, 2.0], [-3.0, 0.0, 4.0]])
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        D = ref.pairwise_distances(x, metric=metric)
        assert np.all(np.isfinite(D))
        assert np.all(np.diag(D) == 0.0)
        assert D[1, 2] == 0.0 or metric == "cosine"
    C = ref.pairwise_distances(x, metric="cosine")
    assert np.all(C[0, 1:] == 1.0) and np.all(C[1:, 0] == 1.0)      # a zero row: cos 0
    assert abs(C[1, 2]) < 1e-15
    Cy = ref.pairwise_distances(x, np.zeros((2, 3)), metric="cosine")
    assert np.all(Cy == 1.0)
    E = ref.pairwise_distances(x, metric="euclidean")
    assert E[1, 3] == np.sqrt(16 + 4 + 4) and E[0, 3] == 5.0


# ================================================================= triplet_margin_loss

def _triplet_parts(a, p, n, eps, pnorm):
    def dist(u, v):
        return np.sum(np.abs(u - v + eps) ** pnorm, axis=-1) ** (1 / pnorm)
    return dist(a, p), dist(a, n), dist(p, n)


def _triplets(shape, margin, eps, pnorm, swap, rng, active=True):
    def make():
        return tuple(rng.normal(size=shape) for _ in range(3))

    def ok(t):
        a, p, n = t
        if min(np.min(np.abs(u - v + eps)) for u, v in ((a, p), (a, n), (p, n))) < 1e-3:
            return False                                   # |w| and sign(w) kinks (p = 1)
        dap, dan, dpn = _triplet_parts(a, p, n, eps, pnorm)
        if swap and np.any(np.abs(dan - dpn) <= KINK):
            return False
        z = margin + dap - (np.minimum(dan, dpn) if swap else dan)
        return bool(np.all(np.abs(z) > KINK) and (not active or np.any(z > 0)))
    return _draw(make, ok)


TRIPLET_SETTINGS = [(1.0, 1e-6), (0.3, 0.0), (2.0, 0.1)]       # (margin, eps)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
@pytest.mark.parametrize("pnorm", [1.0, 1.5, 2.0, 3.0], ids=lambda p: f"p{p}")
def test_triplet_vs_torch(pnorm, swap, ndim, reduction):
    torch = _torch()
    shape = (4,) if ndim == 1 else (6, 4)
    for margin, eps in TRIPLET_SETTINGS:
        rng = _rng("triplet", pnorm, swap, ndim, reduction, margin, eps)
        arrays = _triplets(shape, margin, eps, pnorm, swap, rng, active=ndim == 2 or margin > 1)
        kw = dict(margin=margin, p=pnorm, eps=eps, swap=swap, reduction=reduction)
        _check(lambda a, p, n, **k: ref.triplet_margin_loss(a, p, n, **kw, **k),
               lambda a, p, n: torch.nn.functional.triplet_margin_loss(a, p, n, **kw), arrays)


def test_triplet_swap_tie_and_zero_distance_vs_torch():
    """positive == anchor: d(a, n) == d(p, n) exactly (torch gives each half the gradient);
    with eps = 0 also d(a, p) = 0 (gradient 0)."""
    torch = _torch()
    rng = _rng("triplet_tie")
    a, n = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for eps in (0.0, 1e-6):
        for reduction in REDUCTIONS:
            kw = dict(margin=5.0, eps=eps, swap=True, reduction=reduction)
            _check(lambda a, p, n, **k: ref.triplet_margin_loss(a, p, n, **kw, **k),
                   lambda a, p, n: torch.nn.functional.triplet_margin_loss(a, p, n, **kw),
                   (a, a.copy(), n))
    _, (ga, gp, gn) = ref.triplet_margin_loss(a, a, n, margin=5.0, eps=0.0, swap=True,
                                              reduction="sum", return_grad=True)
    _close(ga, gp, **TIGHT)                                # the halves are equal
    _close(ga + gp + gn, np.zeros_like(ga), **TIGHT)       # translation invariance


def test_triplet_torch_facts():
    """What the contract copies from torch 2.13: 1-D inputs give a 0-d "none" loss, (N, D)
    gives (N,); margin <= 0 is a ValueError; p <= 0 is accepted."""
    torch = _torch()
    F = torch.nn.functional
    a, p, n = (torch.tensor(_rng("facts", k).normal(size=(3, 4))) for k in range(3))
    for reduction in REDUCTIONS:
        assert F.triplet_margin_loss(a[0], p[0], n[0], reduction=reduction).shape == ()
        assert np.shape(ref.triplet_margin_loss(a[0], p[0], n[0], reduction=reduction)) == ()
    assert F.triplet_margin_loss(a, p, n, reduction="none").shape == (3,)
    for margin in (0.0, -1.0):
        with pytest.raises(ValueError, match="margin must be greater than 0"):
            F.triplet_margin_loss(a, p, n, margin=margin)
    for pnorm in (0.0, -1.0):
        assert torch.isfinite(F.triplet_margin_loss(a, p, n, p=pnorm))


@pytest.mark.parametrize("ndim", [1, 2])
@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
@pytest.mark.parametrize("pnorm", [1.0, 1.5, 2.0, 3.0], ids=lambda p: f"p{p}")
def test_triplet_finite_differences(pnorm, swap, ndim):
    shape = (3,) if ndim == 1 else (5, 3)
    for k, reduction in enumerate(REDUCTIONS):
        margin, eps = TRIPLET_SETTINGS[k]
        rng = _rng("triplet_fd", pnorm, swap, ndim, reduction)
        arrays = _triplets(shape, margin, eps, pnorm, swap, rng, active=ndim == 2 or margin > 1)
        _check_fd(lambda a, p, n, **kw: ref.triplet_margin_loss(
            a, p, n, margin=margin, p=pnorm, eps=eps, swap=swap, reduction=reduction, **kw),
            arrays)


# ================================================================= contrastive_loss

#: name -> (pml distance factory, our distance, normalize_embeddings, our (pm, nm))
def _pml_distance(name):
    d = _pml().distances
    return {
        "lp": lambda: d.LpDistance(),
        "lp_raw": lambda: d.LpDistance(normalize_embeddings=False),
        "lp_sq": lambda: d.LpDistance(power=2),
        "lp_sq_raw": lambda: d.LpDistance(power=2, normalize_embeddings=False),
        "cos": lambda: d.CosineSimilarity(),
    }[name]


DISTANCES = {                          # name -> (distance, normalize_embeddings, margins)
    "lp": ("euclidean", True, [(0.3, 1.2), (0.0, 1.0)]),
    "lp_raw": ("euclidean", False, [(0.5, 2.5), (1.0, 3.0)]),
    "lp_sq": ("sqeuclidean", True, [(0.4, 2.5), (0.0, 1.0)]),
    "lp_sq_raw": ("sqeuclidean", False, [(1.0, 6.0), (2.0, 9.0)]),
    "cos": ("cosine", True, [(0.2, 1.1), (0.5, 0.9)]),
}


def _pml_reducer(reduction):
    r = _pml().reducers
    return {"mean_nonzero": r.AvgNonZeroReducer, "mean": r.MeanReducer, "sum": r.SumReducer,
            "none": r.DoNothingReducer}[reduction]()


def _per_anchor(loss_dict, n):
    """pml's DoNothingReducer output summed per anchor (index 0 of each tuple)."""
    torch = _torch()
    out = None
    for info in loss_dict.values():
        losses, idx = info["losses"], info["indices"]
        if torch.is_tensor(losses) and losses.numel():
            part = torch.zeros(n, dtype=losses.dtype).index_add(0, idx[0], losses)
            out = part if out is None else out + part
    return out


def _pml_contrastive(name, pm, nm, reduction, labels):
    """A function of the embeddings: pml's ContrastiveLoss, our margins mapped for cosine."""
    torch = _torch()
    pml = _pml()
    if name == "cos":
        pm, nm = 1.0 - pm, 1.0 - nm
    loss = pml.losses.ContrastiveLoss(pos_margin=pm, neg_margin=nm,
                                      distance=_pml_distance(name)(),
                                      reducer=_pml_reducer(reduction))
    y = torch.tensor(labels)

    def f(x):
        out = loss(x, y)
        if reduction == "none":
            part = _per_anchor(out, len(labels))
            return torch.zeros(len(labels), dtype=x.dtype) + (0 * x.sum() if part is None else part)
        return out
    return f


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum", "none"])
@pytest.mark.parametrize("margins", [0, 1])
@pytest.mark.parametrize("name", list(DISTANCES))
def test_contrastive_vs_pml(name, margins, reduction):
    metric, normalize, margin_list = DISTANCES[name]
    pm, nm = margin_list[margins]
    labels = _rng("clabels", name, margins, reduction).permutation(LABELS7)
    rng = _rng("contrastive", name, margins, reduction)
    x = _draw(lambda: rng.normal(size=(7, 3)),
              lambda x: _contrastive_ok(x, labels, metric, normalize, pm, nm))
    kw = dict(pos_margin=pm, neg_margin=nm, distance=metric, reduction=reduction)
    for flag in ([True, False] if metric == "cosine" else [normalize]):   # cosine: flag moot
        _check(lambda x, **k: ref.contrastive_loss(x, labels, normalize_embeddings=flag, **kw, **k),
               _pml_contrastive(name, pm, nm, reduction, labels), (x,))


def test_contrastive_defaults_vs_pml():
    """ContrastiveLoss() (LpDistance normalized, margins 0 / 1, AvgNonZero) = our defaults."""
    torch = _torch()
    pml = _pml()
    labels = _rng("cdef_labels").permutation(LABELS7)
    x = _draw(lambda: _rng("cdef").normal(size=(7, 5)),
              lambda x: _contrastive_ok(x, labels, "euclidean", True, 0.0, 1.0))
    y = torch.tensor(labels)
    _check(lambda x, **k: ref.contrastive_loss(x, labels, **k),
           lambda x: pml.losses.ContrastiveLoss()(x, y), (x,))


def test_pml_contrastive_sums_its_reduced_parts():
    """pml's ContrastiveLoss = reduce(positive-pair losses) + reduce(negative-pair losses)
    (MultipleReducers' sum), for AvgNonZeroReducer and MeanReducer; the contract's
    definition of "mean_nonzero" and "mean"."""
    torch = _torch()
    pml = _pml()
    labels = np.array(LABELS7)
    x = _rng("cparts").normal(size=(7, 3))
    x[1] = x[0] + 0.05                                              # a close positive pair
    x = torch.tensor(x)
    y = torch.tensor(labels)
    parts = pml.losses.ContrastiveLoss(0.3, 1.2, reducer=pml.reducers.DoNothingReducer())(x, y)
    pos, neg = parts["pos_loss"]["losses"], parts["neg_loss"]["losses"]
    assert len(pos) == 2 * 4 and len(neg) == 7 * 6 - 8             # ordered pairs i != j
    assert (pos > 0).any() and (pos == 0).any() and (neg > 0).any() and (neg == 0).any()
    total = pml.losses.ContrastiveLoss(0.3, 1.2)(x, y)
    _close(total.numpy(), (pos[pos > 0].mean() + neg[neg > 0].mean()).numpy(), **TIGHT)
    total = pml.losses.ContrastiveLoss(0.3, 1.2, reducer=pml.reducers.MeanReducer())(x, y)
    _close(total.numpy(), (pos.mean() + neg.mean()).numpy(), **TIGHT)
    _close(ref.contrastive_loss(x.numpy(), labels, pos_margin=0.3, neg_margin=1.2),
           (pos[pos > 0].mean() + neg[neg > 0].mean()).numpy(), **TIGHT)


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_contrastive_finite_differences(metric, normalize, reduction):
    rng = _rng("contrastive_fd", metric, normalize, reduction)
    labels = rng.integers(0, 3, size=6)
    pm, nm = {("euclidean", True): (0.3, 1.2), ("euclidean", False): (0.5, 2.5),
              ("sqeuclidean", True): (0.4, 2.5), ("sqeuclidean", False): (1.0, 6.0)}.get(
                  (metric, normalize), (0.2, 1.1))
    x = _draw(lambda: rng.normal(size=(6, 4)),
              lambda x: _contrastive_ok(x, labels, metric, normalize, pm, nm))
    _check_fd(lambda x, **k: ref.contrastive_loss(
        x, labels, pos_margin=pm, neg_margin=nm, distance=metric,
        normalize_embeddings=normalize, reduction=reduction, **k), (x,))


# ================================================================= batch_hard_triplet_loss

BH_MARGINS = {"lp": 0.3, "lp_raw": 1.0, "lp_sq": 0.5, "cos": 0.2}


def _pml_batch_hard(name, margin, soft, reduction, labels):
    torch = _torch()
    pml = _pml()
    miner = pml.miners.BatchHardMiner(distance=_pml_distance(name)())
    loss = pml.losses.TripletMarginLoss(margin=margin, smooth_loss=soft,
                                        distance=_pml_distance(name)(),
                                        reducer=_pml_reducer(reduction))
    y = torch.tensor(labels)

    def f(x):
        out = loss(x, y, miner(x, y))
        if reduction == "none":
            part = _per_anchor(out, len(labels))
            return torch.zeros(len(labels), dtype=x.dtype) + (0 * x.sum() if part is None else part)
        return out
    return f


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("name", list(BH_MARGINS))
def test_batch_hard_vs_pml(name, soft, reduction):
    metric, normalize, _ = DISTANCES[name]
    margin = BH_MARGINS[name]
    labels = _rng("bhlabels", name, soft, reduction).permutation(LABELS7 + (1, 2))
    rng = _rng("batch_hard", name, soft, reduction)
    x = _draw(lambda: rng.normal(size=(9, 3)),
              lambda x: _batch_hard_ok(x, labels, metric, normalize, margin))
    kw = dict(margin=margin, distance=metric, normalize_embeddings=normalize, soft=soft,
              reduction=reduction)
    _check(lambda x, **k: ref.batch_hard_triplet_loss(x, labels, **kw, **k),
           _pml_batch_hard(name, margin, soft, reduction, labels), (x,))


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_batch_hard_finite_differences(metric, normalize, soft):
    margin = {("euclidean", True): 0.3, ("euclidean", False): 1.0,
              ("sqeuclidean", True): 0.5, ("sqeuclidean", False): 2.0}.get((metric, normalize), 0.2)
    for reduction in ("mean_nonzero", "mean", "sum", "none"):
        rng = _rng("bh_fd", metric, normalize, soft, reduction)
        labels = rng.integers(0, 3, size=7)
        x = _draw(lambda: rng.normal(size=(7, 3)),
                  lambda x: _batch_hard_ok(x, labels, metric, normalize, margin))
        _check_fd(lambda x, **k: ref.batch_hard_triplet_loss(
            x, labels, margin=margin, distance=metric, normalize_embeddings=normalize, soft=soft,
            reduction=reduction, **k), (x,))


def test_batch_hard_by_hand():
    """Anchors, mined pairs and reductions of a small case written out."""
    x = np.array([[0.0], [1.0], [3.0], [3.5], [10.0]])
    labels = np.array([0, 0, 1, 1, 2])
    # anchor 0: d_ap = 1 (x1), d_an = 3 (x2) -> relu(2 + 1 - 3) = 0;  anchor 1: 1, 2 -> 1
    # anchor 2: 0.5, 2 -> 0.5;  anchor 3: 0.5, 2.5 -> 0;  anchor 4: no positive (invalid)
    kw = dict(margin=2.0, distance="euclidean")
    _close(ref.batch_hard_triplet_loss(x, labels, reduction="none", **kw), [0, 1, 0.5, 0, 0],
           **TIGHT)
    _close(ref.batch_hard_triplet_loss(x, labels, reduction="sum", **kw), 1.5, **TIGHT)
    _close(ref.batch_hard_triplet_loss(x, labels, reduction="mean", **kw), 1.5 / 4, **TIGHT)
    _close(ref.batch_hard_triplet_loss(x, labels, reduction="mean_nonzero", **kw), 0.75, **TIGHT)
    _, g = ref.batch_hard_triplet_loss(x, labels, reduction="sum", return_grad=True, **kw)
    # anchor 1: + d(x1, x0) - d(x1, x2); anchor 2: + d(x2, x3) - d(x2, x1)
    _close(g, [[-1.0], [1 + 1 + 1], [-1 - 1 - 1], [1.0], [0.0]], **TIGHT)


# ================================================================= nt_xent_loss

@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(2, 1), (5, 4)], ids=lambda s: "n{}d{}".format(*s))
def test_nt_xent_vs_pml(shape, temperature):
    torch = _torch()
    pml = _pml()
    rng = _rng("ntxent", shape, temperature)
    z1, z2 = rng.normal(size=shape), rng.normal(size=shape)
    n = shape[0]
    y = torch.cat([torch.arange(n), torch.arange(n)])
    loss = pml.losses.NTXentLoss(temperature=temperature)
    none = pml.losses.NTXentLoss(temperature=temperature, reducer=pml.reducers.DoNothingReducer())
    _check(lambda a, b, **k: ref.nt_xent_loss(a, b, temperature=temperature, **k),
           lambda a, b: loss(torch.cat([a, b]), y), (z1, z2))
    _check(lambda a, b, **k: ref.nt_xent_loss(a, b, temperature=temperature, reduction="none", **k),
           lambda a, b: _per_anchor(none(torch.cat([a, b]), y), 2 * n), (z1, z2))
    _check(lambda a, b, **k: ref.nt_xent_loss(a, b, temperature=temperature, reduction="sum", **k),
           lambda a, b: _per_anchor(none(torch.cat([a, b]), y), 2 * n).sum(), (z1, z2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nt_xent_finite_differences(reduction):
    rng = _rng("ntxent_fd", reduction)
    arrays = (rng.normal(size=(4, 3)), rng.normal(size=(4, 3)))
    _check_fd(lambda a, b, **k: ref.nt_xent_loss(a, b, temperature=0.3, reduction=reduction, **k),
              arrays)


def test_nt_xent_by_hand():
    """Orthogonal views: z1 = [e0, e1], z2 = [e0, -e1] (temperature 1)."""
    z1, z2 = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[3.0, 0.0], [0.0, -1.0]])
    # view 0 (e0): pos e0 (s=1), others e1 (0), -e1 (0): lse(1, 0, 0) - 1
    # view 1 (e1): pos -e1 (s=-1), others e0, e0 (0, 0): lse(-1, 0, 0) + 1
    l0 = np.log(np.e + 2) - 1
    l1 = np.log(np.exp(-1) + 2) + 1
    _close(ref.nt_xent_loss(z1, z2, temperature=1.0, reduction="none"), [l0, l1, l0, l1], **TIGHT)
    _close(ref.nt_xent_loss(z1, z2, temperature=1.0), (l0 + l1) / 2, **TIGHT)


# ================================================================= info_nce_loss

def _info_nce_arrays(mode, rng):
    q, k = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    if mode == "none":
        return (q, k)
    return (q, k, rng.normal(size=(6, 4) if mode == "unpaired" else (5, 3, 4)))


@pytest.mark.parametrize("temperature", [0.1, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["none", "unpaired", "paired"])
def test_info_nce_vs_library(mode, reduction, temperature):
    _torch()
    info_nce = pytest.importorskip("info_nce").info_nce
    arrays = _info_nce_arrays(mode, _rng("infonce", mode, reduction, temperature))
    nm = "unpaired" if mode == "none" else mode
    kw = dict(temperature=temperature, reduction=reduction, negative_mode=nm)
    _check(lambda *a, return_grad=False: ref.info_nce_loss(*a, return_grad=return_grad, **kw),
           lambda *a: info_nce(*a, **kw), arrays)


def test_info_nce_zero_rows_vs_library():
    _torch()
    info_nce = pytest.importorskip("info_nce").info_nce
    for mode in ("none", "unpaired", "paired"):
        arrays = _info_nce_arrays(mode, _rng("infonce_zero", mode))
        for a in arrays:
            a[1] = 0.0
        nm = "unpaired" if mode == "none" else mode
        _check(lambda *a, return_grad=False: ref.info_nce_loss(
            *a, negative_mode=nm, return_grad=return_grad), lambda *a: info_nce(
            *a, negative_mode=nm), arrays)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("mode", ["none", "unpaired", "paired"])
def test_info_nce_finite_differences(mode, reduction):
    arrays = _info_nce_arrays(mode, _rng("infonce_fd", mode, reduction))
    nm = "unpaired" if mode == "none" else mode
    _check_fd(lambda *a, return_grad=False: ref.info_nce_loss(
        *a, temperature=0.5, negative_mode=nm, reduction=reduction, return_grad=return_grad),
        arrays)


# ================================================================= edge cases

EDGE_CASES = {
    # name -> (embeddings, labels)
    "n2_d1_same": (np.array([[0.7], [-0.4]]), np.array([3, 3])),
    "n2_d1_diff": (np.array([[0.7], [0.2]]), np.array([3, 5])),
    "single_class": (np.array([[1.0, 0.5], [0.2, -1.0], [-0.7, 0.3], [2.0, 1.5]]),
                     np.array([1, 1, 1, 1])),
    "all_different": (np.array([[1.0, 0.5], [0.2, -1.0], [-0.7, 0.3], [2.0, 1.5]]),
                      np.array([0, 1, 2, 3])),
    "zero_row": (np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.5], [-0.5, 1.0, 2.0],
                           [1.0, -1.0, 1.0], [0.3, 0.2, -2.0]]), np.array([0, 0, 1, 1, 1])),
    "duplicates": (np.array([[1.0, 2.0, 0.5], [1.0, 2.0, 0.5], [-0.5, 1.0, 2.0],
                             [-0.5, 1.0, 2.0], [0.3, 0.2, -2.0]]), np.array([0, 1, 0, 1, 1])),
}
EDGE_LOSSES = {
    # name -> (pml distance, our kwargs): ties in the mining (duplicates, the zero row's
    # equal distances) take the first index in both
    "contrastive_lp": ("lp", dict(pos_margin=0.1, neg_margin=1.3, distance="euclidean")),
    "contrastive_raw": ("lp_raw", dict(pos_margin=0.1, neg_margin=1.9, distance="euclidean",
                                       normalize_embeddings=False)),
    "contrastive_cos": ("cos", dict(pos_margin=0.1, neg_margin=1.1, distance="cosine")),
    "batch_hard_lp": ("lp", dict(margin=0.35, normalize_embeddings=True)),
    "batch_hard_raw": ("lp_raw", dict(margin=0.8)),
}


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "none"])
@pytest.mark.parametrize("loss", list(EDGE_LOSSES))
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_vs_pml(case, loss, reduction):
    x, labels = EDGE_CASES[case]
    name, kw = EDGE_LOSSES[loss]
    if loss.startswith("contrastive"):
        f = _pml_contrastive(name, kw["pos_margin"], kw["neg_margin"], reduction, labels)
        r = ref.contrastive_loss
    else:
        f = _pml_batch_hard(name, kw["margin"], False, reduction, labels)
        r = ref.batch_hard_triplet_loss
    _check(lambda x, **k: r(x, labels, reduction=reduction, **kw, **k), f, (x,))


@pytest.mark.parametrize("reduction", ["mean_nonzero", "mean", "sum", "none"])
def test_no_negatives_and_no_positives(reduction):
    x = EDGE_CASES["single_class"][0]
    n = len(x)
    D = _distances(x, "euclidean", False)
    off = ~np.eye(n, dtype=bool)
    kw = dict(pos_margin=0.5, neg_margin=3.0, normalize_embeddings=False, reduction=reduction)
    # one class: the negative part is 0, the positive part is all there is
    L = np.where(off, np.maximum(D - 0.5, 0), 0)
    expected = {"mean_nonzero": L[L > 0].mean(), "mean": L[off].mean(), "sum": L.sum(),
                "none": L.sum(1)}[reduction]
    _close(ref.contrastive_loss(x, np.zeros(n, int), **kw), expected, **TIGHT)
    # all labels different: the positive part is 0
    L = np.where(off, np.maximum(3.0 - D, 0), 0)
    assert (L[off] > 0).any() and (L[off] == 0).any()
    expected = {"mean_nonzero": L[L > 0].mean(), "mean": L[off].mean(), "sum": L.sum(),
                "none": L.sum(1)}[reduction]
    _close(ref.contrastive_loss(x, np.arange(n), **kw), expected, **TIGHT)
    # batch-hard: every anchor invalid -> 0, gradient 0
    for labels in (np.zeros(n, int), np.arange(n)):
        for soft in (False, True):
            v, g = ref.batch_hard_triplet_loss(x, labels, soft=soft, reduction=reduction,
                                               return_grad=True)
            assert np.all(v == 0) and np.shape(v) == ((n,) if reduction == "none" else ())
            assert np.all(g == 0) and g.shape == x.shape


def test_zero_rows_are_finite():
    x, labels = EDGE_CASES["zero_row"]
    z2 = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.5, -2.0, 1.0], [0.0, 1.0, 1.0],
                   [2.0, 0.0, 0.0]])
    results = []
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        for reduction in ("mean_nonzero", "mean", "sum", "none"):
            results.append(ref.contrastive_loss(x, labels, distance=metric, reduction=reduction,
                                                return_grad=True))
            results.append(ref.batch_hard_triplet_loss(
                x, labels, distance=metric, normalize_embeddings=True, reduction=reduction,
                soft=reduction == "sum", return_grad=True))
    for reduction in REDUCTIONS:
        results.append(ref.nt_xent_loss(x, z2, reduction=reduction, return_grad=True))
        results.append(ref.info_nce_loss(x, z2, reduction=reduction, return_grad=True))
        results.append(ref.info_nce_loss(x, z2, np.zeros((3, 3)), reduction=reduction,
                                         return_grad=True))
    for value, grad in results:
        assert np.all(np.isfinite(value))
        for g in (grad if isinstance(grad, tuple) else (grad,)):
            assert np.all(np.isfinite(g))
    # the zero row's cosine similarity is 0 with anything: the NT-Xent logits of view 0
    # are 0 and their loss log(2N - 1)
    _close(ref.nt_xent_loss(x, z2, reduction="none")[0], np.log(9.0), **TIGHT)


def test_duplicate_embeddings_euclidean_gradient_zero():
    """d = 0 between duplicate rows of different labels: the negative loss is neg_margin and
    its gradient 0 (as torch's cdist / norm at 0)."""
    x = np.array([[0.3, -1.0, 2.0], [0.3, -1.0, 2.0]])
    for metric in ("euclidean", "sqeuclidean"):
        for reduction in ("mean_nonzero", "mean", "sum", "none"):
            v, g = ref.contrastive_loss(x, [0, 1], neg_margin=0.7, distance=metric,
                                        normalize_embeddings=False, reduction=reduction,
                                        return_grad=True)
            _close(v, {"none": [0.7, 0.7], "sum": 1.4}.get(reduction, 0.7), **TIGHT)
            assert np.all(g == 0.0)
    # batch-hard: the duplicate is the hardest negative at d = 0; the positive's end
    # carries all the gradient
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    v, g = ref.batch_hard_triplet_loss(x, [0, 1, 0], margin=1.0, reduction="none",
                                       return_grad=True)
    _close(v, [6.0, 0.0, 1.0], **TIGHT)          # anchors 0 and 2: 1 + 5 - 0 and 1 + 5 - 5
    # anchor 0: d(x0, x2) only (d(x0, x1) = 0); anchor 2: d(x2, x0) - d(x2, x1)
    _close(g, [[-1.2, -1.6], [0.6, 0.8], [0.6, 0.8]], **TIGHT)
    # triplet with eps = 0 and positive == anchor: d_ap = 0 contributes nothing
    a = np.array([[1.0, 2.0]])
    _, (ga, gp, gn) = ref.triplet_margin_loss(a, a, np.zeros((1, 2)), margin=5.0, eps=0.0,
                                              return_grad=True)
    _close(gp, [[0.0, 0.0]], **TIGHT)
    _close(ga, -a / np.sqrt(5.0), **TIGHT)


def test_n2_d1_by_hand():
    x = np.array([[0.0], [0.4]])
    kw = dict(neg_margin=1.0, normalize_embeddings=False)
    # two ordered negative pairs, each relu(1 - 0.4) = 0.6
    for reduction, value, g0 in (("mean_nonzero", 0.6, 1.0), ("mean", 0.6, 1.0),
                                 ("sum", 1.2, 2.0), ("none", [0.6, 0.6], 2.0)):
        v, g = ref.contrastive_loss(x, [0, 1], reduction=reduction, return_grad=True, **kw)
        _close(v, value, **TIGHT)
        _close(g, [[g0], [-g0]], **TIGHT)
    # normalized D = 1: rows +-1 -> euclidean distance 0 or 2
    _close(ref.contrastive_loss(np.array([[0.5], [-3.0]]), [0, 0], reduction="sum"), 4.0, **TIGHT)
    _close(ref.contrastive_loss(np.array([[0.5], [3.0]]), [0, 1], reduction="sum"), 2.0, **TIGHT)
    # info NCE / NT-Xent with N = 2, D = 1
    q, k = np.array([[1.0], [-2.0]]), np.array([[3.0], [1.0]])
    # row 0: logits [1, 1] / t, target 0 -> log 2; row 1: [-1, -1] / t -> log 2
    _close(ref.info_nce_loss(q, k, reduction="none"), [np.log(2), np.log(2)], **TIGHT)
    # NT-Xent: the views' signs [1, -1, 1, 1]; view i's positive is view (i + 2) % 4
    t = 0.5
    s = np.array([[1, -1, 1, 1], [-1, 1, -1, -1], [1, -1, 1, 1], [1, -1, 1, 1]]) / t
    expected = []
    for i in range(4):
        others = [s[i, j] for j in range(4) if j != i]
        expected.append(np.log(np.sum(np.exp(others))) - s[i, (i + 2) % 4])
    _close(ref.nt_xent_loss(q, k, temperature=t, reduction="none"), expected, **TIGHT)


def test_large_logits_are_stable():
    """Temperature 1e-3 (logits up to 1000) and a soft batch-hard margin of order 1e4: the
    log-sum-exp and softplus must not overflow; values against the libraries where present."""
    rng = _rng("stable")
    z1, z2, neg = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    results = [ref.nt_xent_loss(z1, z2, temperature=1e-3, return_grad=True),
               ref.info_nce_loss(z1, z2, temperature=1e-3, return_grad=True),
               ref.info_nce_loss(z1, z2, neg, temperature=1e-3, return_grad=True)]
    x, labels = 1e4 * rng.normal(size=(6, 3)), np.array([0, 0, 1, 1, 2, 2])
    results.append(ref.batch_hard_triplet_loss(x, labels, soft=True, reduction="none",
                                               return_grad=True))
    for value, grad in results:
        assert np.all(np.isfinite(value))
        for g in (grad if isinstance(grad, tuple) else (grad,)):
            assert np.all(np.isfinite(g))
    D = _distances(x, "euclidean", False)
    pos, neg_mask = _masks(labels)
    z = 1.0 + np.where(pos, D, -np.inf).max(1) - np.where(neg_mask, D, np.inf).min(1)
    _close(results[-1][0], np.logaddexp(0.0, z), **TIGHT)
    try:
        torch = _torch()
        pml = _pml()
        info_nce = pytest.importorskip("info_nce").info_nce
    except pytest.skip.Exception:
        return
    # pml's NTXentLoss takes -log(p + tiny): each view's loss stops at -log(tiny) = 708.4
    y = torch.cat([torch.arange(4), torch.arange(4)])
    none = pml.losses.NTXentLoss(temperature=1e-3, reducer=pml.reducers.DoNothingReducer())
    expected = _per_anchor(none(torch.tensor(np.concatenate([z1, z2])), y), 8).numpy()
    ours = ref.nt_xent_loss(z1, z2, temperature=1e-3, reduction="none")
    cap = -np.log(np.finfo(np.float64).tiny)
    assert np.any(ours > cap + 10) and np.any(ours < cap - 10)
    assert np.all((ours < cap - 10) | (ours > cap + 10))
    _close(np.minimum(ours, cap), expected, **TIGHT)
    _close(results[2][0], info_nce(*map(torch.tensor, (z1, z2, neg)), temperature=1e-3).numpy(),
           **TIGHT)


def test_relu_kinks():
    """At exactly 0 of a relu (d == pos_margin, d == neg_margin, margin + d_ap - d_an == 0)
    the gradient is 0, as pml's torch.relu -- but triplet_margin_loss passes it, as torch's
    clamp_min (its gradient is 1 at 0)."""
    x = np.array([[0.0], [0.5]])
    for labels, kw in (([0, 0], dict(pos_margin=0.5)), ([0, 1], dict(neg_margin=0.5))):
        for reduction in ("mean_nonzero", "mean", "sum", "none"):
            v, g = ref.contrastive_loss(x, labels, normalize_embeddings=False,
                                        reduction=reduction, return_grad=True, **kw)
            assert np.all(v == 0) and np.all(g == 0)
    x3, labels3 = np.array([[0.0], [1.0], [3.0]]), [0, 0, 1]
    v, g = ref.batch_hard_triplet_loss(x3, labels3, margin=2.0, reduction="none",
                                       return_grad=True)
    _close(v, [0.0, 1.0, 0.0], **TIGHT)          # anchor 0 at the kink, anchor 1 active
    _close(g, [[-1.0], [2.0], [-1.0]], **TIGHT)   # anchor 1 only: d(x1, x0) - d(x1, x2)
    a, p, n = np.array([[0.0, 0.0]]), np.array([[0.5, 0.0]]), np.array([[0.0, 1.5]])
    for pnorm in (1.0, 2.0, 3.0):                 # 1 + 0.5 - 1.5 == 0 exactly
        v, grads = ref.triplet_margin_loss(a, p, n, p=pnorm, eps=0.0, return_grad=True)
        assert v == 0.0
        _close(np.concatenate(grads), [[-1.0, 1.0], [1.0, 0.0], [0.0, -1.0]], **TIGHT)
    try:
        torch = _torch()
        _pml()
    except pytest.skip.Exception:
        return
    _check(lambda x, **k: ref.contrastive_loss(x, [0, 0], pos_margin=0.5, distance="euclidean",
                                               normalize_embeddings=False, **k),
           _pml_contrastive("lp_raw", 0.5, 1.0, "mean_nonzero", np.array([0, 0])), (x,))
    _check(lambda x, **k: ref.batch_hard_triplet_loss(x, labels3, margin=2.0, reduction="sum", **k),
           _pml_batch_hard("lp_raw", 2.0, False, "sum", np.array(labels3)), (x3,))
    for pnorm in (1.0, 2.0, 3.0):
        for reduction in REDUCTIONS:
            kw = dict(p=pnorm, eps=0.0, reduction=reduction)
            _check(lambda a, p, n, **k: ref.triplet_margin_loss(a, p, n, **kw, **k),
                   lambda a, p, n: torch.nn.functional.triplet_margin_loss(a, p, n, **kw),
                   (a, p, n))
