"""The pairwise (representation-learning) losses on every backend against the
float64 NumPy reference: values, the gradient of every embedding input, every
reduction, both dtypes; sizes that are not multiples of the C tiles (96 rows,
128 columns, 256 values of D per packed panel); N = 2, D = 1, one class,
duplicate rows, zero rows; the same bits for any thread count and every ISA
path; inputs never written.
"""
import numpy as np
import pytest

import fastloss as fl
from fastloss import reference

from conftest import KERNEL_BACKENDS, available, to_device, to_host

pytestmark = pytest.mark.xdist_group("pairwise_parity")

HOST = [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"]
CUDA = [b for b in KERNEL_BACKENDS if b.values[0] == "cuda"]
C_ONLY = [b for b in KERNEL_BACKENDS if b.values[0] == "c"]
DTYPES = [np.float32, np.float64]


def close(got, want, dtype, what):
    """float32: tile products and exps in float32, sums in float64."""
    got, want = np.asarray(to_host(got), np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    if np.dtype(dtype) == np.float32:
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5 * scale, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11 * scale, err_msg=what)


def embeddings(n, d, rng, dtype, classes=None):
    x = rng.standard_normal((n, d)).astype(dtype)
    if classes is None:
        return x
    return x, rng.integers(0, classes, n)


def check(name, args, kwargs, backend, dtype, n_grads):
    """fl.<name> on ``backend`` against reference.<name>: value, gradients, value
    alone; the inputs (host copies) are unchanged."""
    before = [np.copy(a) for a in args]
    fn, ref = getattr(fl, name), getattr(reference, name)
    on_gpu = backend == "cuda"
    call_args = [to_device(a) if on_gpu and isinstance(a, np.ndarray) and a.dtype.kind == "f"
                 else a for a in args]
    value, grads = fn(*call_args, return_grad=True, backend=backend, **kwargs)
    alone = fn(*call_args, backend=backend, **kwargs)
    rvalue, rgrads = ref(*args, return_grad=True, **kwargs)
    if n_grads == 1:
        grads, rgrads = (grads,), (rgrads,)
    assert isinstance(grads, tuple) and len(grads) == n_grads
    close(value, rvalue, dtype, f"{name} value")
    close(alone, rvalue, dtype, f"{name} value without the gradient")
    assert np.asarray(to_host(value)).dtype == dtype
    for k, (g, rg) in enumerate(zip(grads, rgrads)):
        assert to_host(g).dtype == dtype
        close(g, rg, dtype, f"{name} gradient {k}")
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ every loss, every backend
SIZES = {"host": (37, 5), "cuda": (9, 3)}


def cases(n, d, rng, dtype):
    """(name, args, kwargs, number of gradients) for every loss and its main options."""
    x, y = embeddings(n, d, rng, dtype, classes=4)
    q, k = embeddings(n, d, rng, dtype), embeddings(n, d, rng, dtype)
    neg, pneg = embeddings(n + 3, d, rng, dtype), rng.standard_normal((n, 3, d)).astype(dtype)
    out = []
    for red in ("mean_nonzero", "mean", "sum", "none"):
        for dist, norm, pm, nm in (("euclidean", True, 0.2, 1.1), ("euclidean", False, 0.5, 3.0),
                                   ("sqeuclidean", False, 1.0, 8.0), ("cosine", True, 0.3, 0.9)):
            out.append(("contrastive_loss", (x, y), dict(pos_margin=pm, neg_margin=nm,
                        distance=dist, normalize_embeddings=norm, reduction=red), 1))
        for dist, soft in (("euclidean", False), ("sqeuclidean", True), ("cosine", False)):
            out.append(("batch_hard_triplet_loss", (x, y), dict(
                margin=0.5 if dist == "cosine" else 1.0, distance=dist, soft=soft,
                reduction=red), 1))
    for red in ("mean", "sum", "none"):
        for p, swap in ((2.0, False), (1.0, True), (1.5, False), (3.0, True)):
            out.append(("triplet_margin_loss", (q, k, neg[:n]),
                        dict(p=p, swap=swap, margin=1.0, reduction=red), 3))
        out.append(("info_nce_loss", (q, k), dict(temperature=0.2, reduction=red), 2))
        out.append(("info_nce_loss", (q, k, neg), dict(temperature=0.1, reduction=red), 3))
        out.append(("info_nce_loss", (q, k, pneg), dict(negative_mode="paired", reduction=red),
                    3))
        out.append(("nt_xent_loss", (q, k), dict(temperature=0.5, reduction=red), 2))
    return out


def _case_ids():
    rng = np.random.default_rng(0)
    return [f"{c[0]}-{i}" for i, c in enumerate(cases(5, 2, rng, np.float64))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", HOST + CUDA)
def test_every_loss_matches_the_reference(backend, dtype):
    n, d = SIZES["cuda" if backend == "cuda" else "host"]
    rng = np.random.default_rng(1)
    for name, args, kwargs, n_grads in cases(n, d, rng, dtype):
        if backend == "cuda" and kwargs.get("reduction") not in ("mean", "mean_nonzero"):
            continue    # the simulator is slow: the reductions are host arithmetic
        check(name, args, kwargs, backend, dtype, n_grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend", HOST + CUDA)
def test_pairwise_distances(backend, dtype):
    n, d = SIZES["cuda" if backend == "cuda" else "host"]
    rng = np.random.default_rng(2)
    x, y = embeddings(n, d, rng, dtype), embeddings(n + 4, d, rng, dtype)
    x[1] = 0.0                       # a zero row: cosine 0 with everything
    put = to_device if backend == "cuda" else (lambda a: a)
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        for other in (None, y):
            got = fl.pairwise_distances(put(x), None if other is None else put(other),
                                        metric=metric, backend=backend)
            want = reference.pairwise_distances(x, other, metric=metric)
            close(got, want, dtype, metric)
            if other is None:
                assert np.all(np.diag(to_host(got)) == 0)


# ------------------------------------------------------------------ shapes around the C tiles
@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("n,d", [(2, 1), (97, 3), (130, 129), (200, 300)])
def test_sizes_around_the_tiles(backend, n, d):
    if backend == "numba" and n > 130:
        pytest.skip("the Numba kernels' tiles are covered at n <= 130")
    rng = np.random.default_rng(n + d)
    dtype = np.float32
    x, y = embeddings(n, d, rng, dtype, classes=max(2, n // 5))
    z2 = embeddings(n, d, rng, dtype)
    neg = embeddings(n + 5, d, rng, dtype)
    check("nt_xent_loss", (x, z2), dict(temperature=0.5), backend, dtype, 2)
    check("info_nce_loss", (x, z2, neg), dict(temperature=0.1), backend, dtype, 3)
    check("contrastive_loss", (x, y), dict(distance="euclidean"), backend, dtype, 1)
    check("batch_hard_triplet_loss", (x, y), dict(margin=1.0), backend, dtype, 1)
    close(fl.pairwise_distances(x, neg, backend=backend), reference.pairwise_distances(x, neg),
          dtype, "distances")


# ------------------------------------------------------------------ edge cases
@pytest.mark.parametrize("backend", HOST + ["numpy"])
def test_edge_cases(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4))
    one_class = np.zeros(6, np.int64)
    all_diff = np.arange(6)
    # one class: no negatives; every label different: no positives
    for labels in (one_class, all_diff):
        check("contrastive_loss", (x, labels), {}, backend, np.float64, 1)
        check("batch_hard_triplet_loss", (x, labels), dict(reduction="none"), backend,
              np.float64, 1)
    v, g = fl.batch_hard_triplet_loss(x, one_class, return_grad=True, backend=backend)
    assert v == 0 and not g.any()             # no valid anchor: 0, not nan
    # N = 2, D = 1
    x2 = np.array([[0.5], [-1.0]])
    check("contrastive_loss", (x2, np.array([1, 1])), dict(normalize_embeddings=False),
          backend, np.float64, 1)
    check("nt_xent_loss", (x2, x2[::-1].copy()), {}, backend, np.float64, 2)
    # exact duplicates (euclidean distance 0 between different rows) and zero rows
    xd = rng.standard_normal((5, 3))
    xd[3] = xd[1]
    xd[4] = 0.0
    labels = np.array([0, 1, 0, 1, 1])
    for dist in ("euclidean", "cosine"):
        v, g = fl.contrastive_loss(xd, labels, distance=dist, normalize_embeddings=False,
                                   return_grad=True, backend=backend)
        assert np.isfinite(v) and np.isfinite(g).all()
        check("contrastive_loss", (xd, labels), dict(distance=dist), backend, np.float64, 1)
    v, grads = fl.nt_xent_loss(xd, xd[::-1].copy(), return_grad=True, backend=backend)
    assert np.isfinite(v) and all(np.isfinite(g).all() for g in grads)
    check("info_nce_loss", (xd, xd[::-1].copy()), {}, backend, np.float64, 2)
    # labels of other integer dtypes
    check("contrastive_loss", (x, np.array([3, 3, 7, 7, 7, 9], np.uint8)), {}, backend,
          np.float64, 1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", HOST + CUDA + ["numpy"])
def test_info_nce_with_no_paired_negatives(backend, reduction):
    """(N, 0, D) paired negatives: only the positive in each softmax, loss 0 (as
    info-nce-pytorch); the C and Numba paths once failed in a reshape of size 0."""
    rng = np.random.default_rng(6)
    q, k = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    check("info_nce_loss", (q, k, np.zeros((4, 0, 3))),
          dict(negative_mode="paired", reduction=reduction), backend, np.float64, 3)


@pytest.mark.parametrize("backend", HOST)
def test_triplet_one_dimensional_inputs(backend):
    rng = np.random.default_rng(4)
    a, p, n = (rng.standard_normal(6) for _ in range(3))
    for red in ("mean", "none"):
        check("triplet_margin_loss", (a, p, n), dict(reduction=red, margin=3.0), backend,
              np.float64, 3)


@pytest.mark.parametrize("backend", HOST)
def test_triplet_kinks_follow_torch(backend):
    """Exact kinks, eps = 0: margin + d_ap - d_an = 0 (the gradient passes, as
    torch's clamp_min) and a swap tie d(a, n) = d(p, n) (half to each)."""
    a = np.array([[0.0, 0.0], [0.0, 0.0]])
    p = np.array([[0.5, 0.0], [1.0, 0.0]])
    n = np.array([[1.0, 0.0], [0.5, 0.0]])
    check("triplet_margin_loss", (a, p, n), dict(margin=0.0, eps=0.0, swap=True,
                                                 reduction="sum"), backend, np.float64, 3)


# ------------------------------------------------------------------ determinism, ISA paths
@pytest.mark.parametrize("backend", C_ONLY)
def test_same_bits_for_any_thread_count(backend):
    rng = np.random.default_rng(5)
    x, y = embeddings(300, 20, rng, np.float32, classes=30)
    z2 = embeddings(300, 20, rng, np.float32)
    runs = []
    before = fl.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fl.set_num_threads(threads)
            runs.append([fl.nt_xent_loss(x, z2, return_grad=True, backend=backend),
                         fl.contrastive_loss(x, y, return_grad=True, backend=backend),
                         fl.batch_hard_triplet_loss(x, y, return_grad=True, backend=backend),
                         fl.info_nce_loss(x, z2, return_grad=True, backend=backend)])
    finally:
        fl.set_num_threads(before)
    flat = [[np.asarray(a) for a in _leaves(r)] for r in runs]
    for other in flat[1:]:
        for a, b in zip(flat[0], other):
            np.testing.assert_array_equal(a, b)


def _leaves(obj):
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _leaves(item)
    else:
        yield obj


@pytest.mark.parametrize("backend", C_ONLY)
def test_every_isa_path(backend):
    from fastloss.kernels import native
    rng = np.random.default_rng(6)
    x, y = embeddings(70, 19, rng, np.float32, classes=7)
    z2, neg = embeddings(70, 19, rng, np.float32), embeddings(150, 19, rng, np.float32)
    top = native.isa()
    try:
        for isa in ("baseline", "avx2", "avx512"):
            if native.ISA_NAMES.index(isa) > native.ISA_NAMES.index(native.max_isa()):
                continue
            native.set_isa(isa)
            for dtype in DTYPES:
                xs, zs, ns = (a.astype(dtype) for a in (x, z2, neg))
                check("nt_xent_loss", (xs, zs), {}, backend, dtype, 2)
                check("info_nce_loss", (xs, zs, ns), {}, backend, dtype, 3)
                check("contrastive_loss", (xs, y), {}, backend, dtype, 1)
                close(fl.pairwise_distances(xs, ns, backend=backend),
                      reference.pairwise_distances(xs, ns), dtype, isa)
    finally:
        native.set_isa(top)


FD_CASES = [   # (loss, number of embedding inputs, options)
    ("contrastive_loss", 1, dict(neg_margin=1.5)),
    ("batch_hard_triplet_loss", 1, dict(soft=True)),
    ("nt_xent_loss", 2, {}),
    ("info_nce_loss", 3, {}),
    ("triplet_margin_loss", 3, dict(p=1.5, swap=True)),
]


@pytest.mark.skipif(not available("c"), reason="needs the C backend")
@pytest.mark.parametrize("name,inputs,options", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_gradients_against_finite_differences(name, inputs, options):
    """The C gradients of every input against central differences of the C values."""
    rng = np.random.default_rng(7)
    labels = np.array([0, 0, 1, 1, 1, 2, 0])
    arrays = [rng.standard_normal((7, 3)), rng.standard_normal((7, 3)),
              rng.standard_normal((9 if name == "info_nce_loss" else 7, 3))][:inputs]
    extra = (labels,) if inputs == 1 else ()
    fn = getattr(fl, name)

    def value(arrs):
        return float(fn(*arrs, *extra, backend="c", **options))

    _, grads = fn(*arrays, *extra, return_grad=True, backend="c", **options)
    grads = grads if isinstance(grads, tuple) else (grads,)
    h = 1e-6
    for k, array in enumerate(arrays):
        fd = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            up, dn = [a.copy() for a in arrays], [a.copy() for a in arrays]
            up[k][idx] += h
            dn[k][idx] -= h
            fd[idx] = (value(up) - value(dn)) / (2 * h)
        np.testing.assert_allclose(grads[k], fd, rtol=1e-5, atol=1e-7, err_msg=f"input {k}")


@pytest.mark.parametrize("backend", HOST + CUDA + ["numpy"])
def test_info_nce_of_no_queries(backend):
    """N = 0: the mean of nothing is nan (info-nce-pytorch, torch), the sum 0, and
    every gradient zeros of its input's shape."""
    d = 3
    for negatives in (None, np.random.default_rng(0).standard_normal((5, d))):
        args = [np.zeros((0, d)), np.zeros((0, d))] + ([] if negatives is None else [negatives])
        if backend == "cuda":
            args = [to_device(a) for a in args]
        for reduction, want in (("mean", np.nan), ("sum", 0.0)):
            value, grads = fl.info_nce_loss(*args, reduction=reduction, return_grad=True,
                                            backend=backend)
            np.testing.assert_array_equal(float(to_host(value)), want)
            for g, a in zip(grads, args):
                g = np.asarray(to_host(g))
                assert g.shape == a.shape and not g.any()


@pytest.mark.parametrize("backend", HOST)
def test_float32_gram_overflow_gives_nan(backend):
    """float32 embeddings with |x|² past float32's range, not normalized: the Gram
    products overflow, so the distances are nan (the clamp once made them 0, and the
    losses inf, nan or an arbitrary finite batch-hard value, by backend)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 3)) * 1e30).astype(np.float32)
    labels = np.array([0, 1, 0, 1, 2, 2])
    d = fl.pairwise_distances(x, backend=backend)
    assert np.isnan(d[~np.eye(6, dtype=bool)]).all()
    for loss in ("contrastive_loss", "batch_hard_triplet_loss"):
        value, grad = getattr(fl, loss)(x, labels, normalize_embeddings=False,
                                        return_grad=True, backend=backend)
        assert np.isnan(value) and np.isnan(grad).any()
    # normalized (the default), the same embeddings are in range
    assert np.isfinite(fl.contrastive_loss(x, labels, backend=backend))
    x18 = (rng.standard_normal((6, 3)) * 1e18).astype(np.float32)   # |x|² ~ 1e36: fine
    check("batch_hard_triplet_loss", (x18, labels), dict(normalize_embeddings=False),
          backend, np.float32, 1)
