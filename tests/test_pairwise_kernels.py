"""Pairwise (representation-learning) kernels of the Numba backends, called
directly by the contract kernels.PAIRWISE: pair_matrix, pair_lse,
pair_softmax_product, pair_contrastive_stats / _grad, pair_hardest,
triplet_rows and info_nce_paired on numba_cpu and numba_cuda (under the
simulator: tiny sizes), and the CUDA row glue (normalize_rows, ...,
pair_rows_grad), against a float64 NumPy evaluation of the contract written
out below with the full (N, N) matrices (what the kernels must never
allocate).  The specs of the gradients are themselves checked by finite
differences.  Also: tiles not dividing the sizes (the CPU's 64 x 256, the
simulator's 8 x 8 with two column splits), N = 1..3, D = 1, ties (duplicate
rows: the smallest index), a single class (-1), the same bits for any thread
count on the CPU, inputs left untouched, argument errors.

The CPU backend compiles one tile kernel and two row kernels per input dtype:
their cost dominates this file's time."""
import numpy as np
import pytest

import fastloss as fl

from conftest import available, to_device, to_host

pytest.importorskip("numba")

# every test of this file on one xdist worker: each kernel is compiled once
pytestmark = pytest.mark.xdist_group("pairwise_kernels")

F32, F64 = np.float32, np.float64
METRICS = ("euclidean", "sqeuclidean", "cosine")
# the Gram values are computed in the dtype (float32: ~D * 6e-8 * |a| |b|)
TOL = {np.dtype(F32): dict(rtol=2e-4, atol=2e-5), np.dtype(F64): dict(rtol=1e-10, atol=1e-11)}


def close(actual, expected, dtype, scale=1.0):
    t = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(to_host(actual), np.float64), expected,
                               rtol=t["rtol"] * scale, atol=t["atol"] * scale)


def f64(x):
    return np.asarray(to_host(x), np.float64)


# --- the contract, in float64 NumPy -----------------------------------------------------------
def spec_dist(a, b, metric):
    a, b = f64(a), f64(b)
    if metric == "cosine":   # (not a @ b.T: BLAS can round equal columns differently)
        return 1.0 - (a[:, None, :] * b[None, :, :]).sum(-1)
    s = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.sqrt(s) if metric == "euclidean" else s


def _diag(n, m):
    k = np.arange(min(n, m))
    return k, k


def _scaled_gram(a, b, rsc=None, csc=None):
    """g_ij rs_i cs_j (row_scale / col_scale: None = 1)."""
    G = f64(a) @ f64(b).T
    if rsc is not None:
        G = G * np.asarray(rsc, F64)[:, None]
    if csc is not None:
        G = G * np.asarray(csc, F64)[None, :]
    return G


def spec_lse(a, b, scale, excl, rsc=None, csc=None):
    S = scale * _scaled_gram(a, b, rsc, csc)
    if excl:
        S[_diag(*S.shape)] = -np.inf
    return np.logaddexp.reduce(S, axis=1) if S.shape[1] else np.full(S.shape[0], -np.inf)


def spec_softmax_product(a, b, scale, rs, cs, excl, gain, rsc=None, csc=None):
    """(the product with the raw rows b, not the scaled ones)"""
    S = scale * _scaled_gram(a, b, rsc, csc)
    S = S - (0.0 if rs is None else rs[:, None]) - (0.0 if cs is None else cs[None, :])
    P = np.exp(S)
    if excl:
        P[_diag(*P.shape)] = 0.0
    return gain * P @ f64(b)


def _pairs(x, labels, metric):
    d = spec_dist(x, x, metric)
    n = len(labels)
    off = ~np.eye(n, dtype=bool)
    pos = (labels[:, None] == labels[None, :]) & off
    neg = (labels[:, None] != labels[None, :]) & off
    return d, pos, neg


def spec_stats(x, labels, metric, pm, nm):
    d, pos, neg = _pairs(x, labels, metric)
    lp = np.where(pos, np.maximum(d - pm, 0.0), 0.0)
    ln = np.where(neg, np.maximum(nm - d, 0.0), 0.0)
    return np.stack([lp.sum(1), (lp > 0).sum(1), ln.sum(1), (ln > 0).sum(1)], axis=1)


def spec_contrastive_loss(x, labels, metric, pm, nm, cpos, cneg):
    s = spec_stats(x, labels, metric, pm, nm)
    return cpos * s[:, 0].sum() + cneg * s[:, 2].sum()


def spec_contrastive_grad(x, labels, metric, pm, nm, cpos, cneg):
    x = f64(x)
    d, pos, neg = _pairs(x, labels, metric)
    c = np.where(pos & (d > pm), cpos, 0.0) - np.where(neg & (d < nm), cneg, 0.0)
    if metric == "cosine":
        return -2.0 * c @ x
    diff = x[:, None, :] - x[None, :, :]
    if metric == "sqeuclidean":
        return 2.0 * (c[:, :, None] * 2.0 * diff).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(d > 0, c / d, 0.0)
    return 2.0 * (w[:, :, None] * diff).sum(1)


def spec_hardest(x, labels, metric):
    d, pos, neg = _pairs(x, labels, metric)
    n = len(labels)
    ip, jn = np.full(n, -1), np.full(n, -1)
    for i in range(n):
        for j in range(n):   # strict: the first of a tie stays
            if pos[i, j] and (ip[i] < 0 or d[i, j] > d[i, ip[i]]):
                ip[i] = j
            if neg[i, j] and (jn[i] < 0 or d[i, j] < d[i, jn[i]]):
                jn[i] = j
    return ip, jn


def _pdist(u, v, p, eps):
    w = u - v + eps
    nrm = (np.abs(w) ** p).sum(1) ** (1.0 / p)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.sign(w) * (np.abs(w) / nrm[:, None]) ** (p - 1.0)
    g[(w == 0) | (nrm[:, None] == 0)] = 0.0
    return nrm, g


def spec_triplet(a, p, n, margin, pw, eps, swap, gain):
    """torch: d_an = min(d(a, n), d(p, n)) (half the gradient to each at a tie),
    clamp_min (the gradient passes at h == 0)."""
    a, p, n = f64(a), f64(p), f64(n)
    dap, gap = _pdist(a, p, pw, eps)
    dan, gan = _pdist(a, n, pw, eps)
    w_an, w_pn = np.ones(len(a)), np.zeros(len(a))
    gpn = np.zeros_like(a)
    dneg = dan
    if swap:
        dpn, gpn = _pdist(p, n, pw, eps)
        w_an = np.where(dpn < dan, 0.0, np.where(dpn == dan, 0.5, 1.0))
        w_pn = 1.0 - w_an
        dneg = np.minimum(dan, dpn)
    h = margin + dap - dneg
    c = (gain * (h >= 0))[:, None]
    ean, epn = w_an[:, None] * gan, w_pn[:, None] * gpn
    return np.maximum(h, 0.0), (c * (gap - ean), c * (-gap - epn), c * (ean + epn))


def spec_info_nce(q, k, neg, scale, gain):
    q, k, neg = f64(q), f64(k), f64(neg)
    z = scale * np.concatenate([(q * k).sum(1)[:, None], np.einsum("nd,nmd->nm", q, neg)], 1)
    lse = np.logaddexp.reduce(z, axis=1)
    p = np.exp(z - lse[:, None])
    c = gain * scale
    gq = c * ((p[:, :1] - 1.0) * k + np.einsum("nm,nmd->nd", p[:, 1:], neg))
    gk = c * (p[:, :1] - 1.0) * q
    gneg = c * p[:, 1:, None] * q[:, None, :]
    return lse - z[:, 0], (gq, gk, gneg)


def spec_normalize(x, eps):
    x = f64(x)
    nrm = np.sqrt((x * x).sum(1))
    return x / np.maximum(nrm, eps)[:, None], nrm


def spec_normalize_backward(g, xhat, nrm, eps, raw=False):
    """raw: the second argument is x, xhat = x / max(norm, eps).  The gradient passes at
    norm == eps (torch's clamp_min)."""
    g, xhat = f64(g), f64(xhat)
    if raw:
        xhat = xhat / np.maximum(nrm, eps)[:, None]
    dot = (g * xhat).sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((nrm >= eps)[:, None], (g - xhat * dot) / nrm[:, None], g / eps)


def spec_rows_distance(x, i, j, metric):
    x = f64(x)
    u, v = x[i], x[j]
    if metric == "cosine":
        return 1.0 - (u * v).sum(1)
    s = ((u - v) ** 2).sum(1)
    return np.sqrt(s) if metric == "euclidean" else s


def spec_rows_grad(x, i, j, coef, metric):
    x = f64(x)
    g = np.zeros_like(x)
    for k in range(len(i)):
        u, v = x[i[k]], x[j[k]]
        if metric == "cosine":
            gu, gv = -v, -u
        elif metric == "sqeuclidean":
            gu = 2.0 * (u - v)
            gv = -gu
        else:
            dk = np.sqrt(((u - v) ** 2).sum())
            gu = (u - v) / dk if dk > 0 else 0.0 * u
            gv = -gu
        g[i[k]] += coef[k] * gu
        g[j[k]] += coef[k] * gv
    return g


# --- inputs -----------------------------------------------------------------------------------
def rows(rng, n, d, dtype, metric="euclidean"):
    x = rng.standard_normal((n, d))
    if metric == "cosine":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(dtype)


def clear_of(d, m, gap=1e-4):
    """m, or the middle of the gap in the distances d around m when one is within ``gap``:
    no pair sits on a margin (the Gram in float32 would flip it)."""
    v = np.sort(d.ravel())
    if v.size == 0 or np.abs(v - m).min() > gap:
        return m
    k = np.searchsorted(v, m)
    lo = v[k - 1] if k > 0 else m - 1.0
    hi = v[k] if k < v.size else m + 1.0
    return 0.5 * (lo + hi)


def margins(x, labels, metric, pm, nm):
    d, _, _ = _pairs(x, labels, metric)
    return clear_of(d, pm), clear_of(d, nm)


class Backend:
    """A backend module with its array placement: host arrays for numba_cpu, device
    arrays for numba_cuda; sizes that cross its tiles."""

    def __init__(self, name, module):
        self.name, self.module = name, module
        self.gpu = name == "cuda"
        # (Na, Nb, D) and N of the labelled kernels: CPU tiles 64 x 256, simulator 8 x 8
        self.pair_shape = (19, 21, 3) if self.gpu else (70, 260, 5)
        self.n = 17 if self.gpu else 260

    def put(self, x):
        """x on the backend's device (a copy on the host too)."""
        return to_device(x) if self.gpu else np.array(x, copy=True)

    def call(self, fn, *args, skip=()):
        """module.fn(*args), checking that no array argument (but those at the positions
        in ``skip``) changed."""
        before = {k: np.array(to_host(a), copy=True) for k, a in enumerate(args)
                  if k not in skip and (isinstance(a, np.ndarray) or hasattr(a, "copy_to_host"))}
        result = getattr(self.module, fn)(*args)
        for k, b in before.items():
            np.testing.assert_array_equal(to_host(args[k]), b, err_msg=f"{fn}: argument {k}")
        return result


@pytest.fixture(scope="module")
def cpu():
    from fastloss.kernels import numba_cpu
    return Backend("numba", numba_cpu)


@pytest.fixture(scope="module")
def gpu():
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    from fastloss.kernels import numba_cuda
    return Backend("cuda", numba_cuda)


@pytest.fixture(params=["numba", "cuda"])
def be(request):
    return request.getfixturevalue("cpu" if request.param == "numba" else "gpu")


# --- the specs themselves, by finite differences (NumPy only) ---------------------------------
def _numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def test_specs_match_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3))
    labels = np.array([0, 1, 0, 2, 1, 0])
    for metric in METRICS:
        xm = rows(rng, 6, 3, F64, metric) if metric == "cosine" else x
        pm, nm = margins(xm, labels, metric, 0.3, 1.5 if metric != "sqeuclidean" else 3.0)
        num = _numeric_grad(lambda y: spec_contrastive_loss(y, labels, metric, pm, nm, 0.7, 1.3),
                            xm)
        np.testing.assert_allclose(spec_contrastive_grad(xm, labels, metric, pm, nm, 0.7, 1.3),
                                   num, rtol=1e-6, atol=1e-7)
    a, p, n = (rng.standard_normal((5, 3)) for _ in range(3))
    for pw in (1.0, 2.0, 3.0):
        for swap in (False, True):
            _, grads = spec_triplet(a, p, n, 0.5, pw, 1e-6, swap, 0.7)
            for k, arg in enumerate((a, p, n)):
                def loss(y, k=k):
                    args = [a, p, n]
                    args[k] = y
                    return spec_triplet(*args, 0.5, pw, 1e-6, swap, 0.7)[0].sum() * 0.7
                np.testing.assert_allclose(grads[k], _numeric_grad(loss, arg), rtol=1e-5,
                                           atol=1e-7)
    q, k_, neg = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), \
        rng.standard_normal((4, 2, 3))
    _, grads = spec_info_nce(q, k_, neg, 2.0, 0.3)
    for k, arg in enumerate((q, k_, neg)):
        def loss(y, k=k):
            args = [q, k_, neg]
            args[k] = y
            return spec_info_nce(*args, 2.0, 0.3)[0].sum() * 0.3
        np.testing.assert_allclose(grads[k], _numeric_grad(loss, arg), rtol=1e-6, atol=1e-8)
    g = rng.standard_normal((4, 3))
    xhat, nrm = spec_normalize(x[:4], 1e-12)
    np.testing.assert_allclose(
        spec_normalize_backward(g, xhat, nrm, 1e-12),
        _numeric_grad(lambda y: (g * spec_normalize(y, 1e-12)[0]).sum(), x[:4]), rtol=1e-6,
        atol=1e-8)
    i, j = np.array([0, 1, 2, 2, 4]), np.array([1, 3, 2, 0, 1])
    coef = rng.standard_normal(5)
    for metric in METRICS:
        np.testing.assert_allclose(
            spec_rows_grad(x, i, j, coef, metric),
            _numeric_grad(lambda y: (coef * spec_rows_distance(y, i, j, metric)).sum(), x),
            rtol=1e-6, atol=1e-7)


# --- pair_matrix, pair_lse, pair_softmax_product ----------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_matrix(be, dtype):
    rng = np.random.default_rng(2)
    na, nb, D = be.pair_shape
    for k, metric in enumerate(METRICS):
        a, b = rows(rng, na, D, dtype, metric), rows(rng, nb, D, dtype, metric)
        da, db = be.put(a), be.put(b)
        out = to_host(be.call("pair_matrix", da, db, metric))
        assert out.dtype == dtype and out.shape == (na, nb)
        close(out, spec_dist(a, b, metric), dtype, scale=10.0 if metric == "euclidean" else 1.0)
        # one set against itself: the diagonal is exactly 0
        out = to_host(be.call("pair_matrix", da, da, metric))
        assert out.shape == (na, na) and not out[np.diag_indices(na)].any()
        close(out, spec_dist(a, a, metric), dtype, scale=10.0 if metric == "euclidean" else 1.0)


def test_pair_matrix_tiny_shapes(be):
    rng = np.random.default_rng(3)
    for na, nb, D in ((1, 1, 1), (1, 3, 1), (3, 2, 1), (2, 2, 4), (3, 3, 2)):
        for metric in METRICS:
            a, b = rows(rng, na, D, F64, metric), rows(rng, nb, D, F64, metric)
            out = be.call("pair_matrix", be.put(a), be.put(b), metric)
            close(out, spec_dist(a, b, metric), F64, scale=100.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_lse(be, dtype):
    rng = np.random.default_rng(4)
    na, nb, D = be.pair_shape
    a, b = rows(rng, na, D, dtype), rows(rng, nb, D, dtype)
    da, db = be.put(a), be.put(b)
    for scale in (3.0,) if be.gpu else (0.7, 3.0):
        lse = be.call("pair_lse", da, db, scale, False)
        assert isinstance(lse, np.ndarray) and lse.dtype == F64 and lse.shape == (na,)
        close(lse, spec_lse(a, b, scale, False), dtype, scale=scale)
        for excl in (False, True):
            lse = be.call("pair_lse", da, da, scale, excl)
            close(lse, spec_lse(a, a, scale, excl), dtype, scale=scale)


def test_pair_lse_tiny_shapes(be):
    rng = np.random.default_rng(5)
    for n, D in ((1, 1), (2, 1), (3, 2)):
        x = be.put(rows(rng, n, D, F64))
        for excl in (False, True):
            lse = be.call("pair_lse", x, x, 2.0, excl)
            close(lse, spec_lse(to_host(x), to_host(x), 2.0, excl), F64)
    x = be.put(rows(rng, 1, 3, F32))   # one row without itself: the empty sum
    assert be.call("pair_lse", x, x, 1.0, True).tolist() == [-np.inf]


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_softmax_product(be, dtype):
    rng = np.random.default_rng(6)
    na, nb, D = be.pair_shape
    a, b = rows(rng, na, D, dtype), rows(rng, nb, D, dtype)
    da, db = be.put(a), be.put(b)
    scale = 1.5
    rs = spec_lse(a, b, scale, False)
    cs = rng.standard_normal(nb)
    for row_shift, col_shift, gain in ((None, None, 1.0), (rs, None, 0.5), (rs, cs, -2.0),
                                       (None, cs, 0.25)):
        out0 = rng.standard_normal((na, D)).astype(dtype)
        out = be.put(out0)
        assert be.call("pair_softmax_product", da, db, scale, row_shift, col_shift, False, gain,
                       out, skip=(7,)) is None
        want = out0 + spec_softmax_product(a, b, scale, row_shift, col_shift, False, gain)
        close(out, want, dtype, scale=1.0 + np.abs(want).max())
    # against itself, without the diagonal: softmax(S) a, and with a and b swapped and
    # col_shift = lse, softmax(S)^T b
    lse = spec_lse(a, a, scale, True)
    out = be.put(np.zeros((na, D), dtype))
    be.call("pair_softmax_product", da, da, scale, lse, None, True, 1.0, out, skip=(7,))
    close(out, spec_softmax_product(a, a, scale, lse, None, True, 1.0), dtype)
    lse = spec_lse(a, b, scale, False)
    out = be.put(np.zeros((nb, D), dtype))
    be.call("pair_softmax_product", db, da, scale, None, lse, False, 1.0, out, skip=(7,))
    P = np.exp(scale * f64(a) @ f64(b).T - lse[:, None])
    close(out, P.T @ f64(a), dtype, scale=10.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_lse_and_softmax_product_row_col_scale(be, dtype):
    # un-normalized rows with their inverse norms as row_scale / col_scale: the Gram value
    # g_ij rs_i cs_j before everything else; the product still with the raw rows b
    rng = np.random.default_rng(19)
    na, nb, D = be.pair_shape
    a = rows(rng, na, D, dtype) * rng.uniform(0.5, 3.0, (na, 1)).astype(dtype)
    b = rows(rng, nb, D, dtype) * rng.uniform(0.5, 3.0, (nb, 1)).astype(dtype)
    rsc = 1.0 / np.linalg.norm(f64(a), axis=1)
    csc = 1.0 / np.linalg.norm(f64(b), axis=1)
    da, db = be.put(a), be.put(b)
    scale = 2.5
    cases = ((rsc, None), (None, csc), (rsc, csc))
    for r, c in cases:
        lse = be.call("pair_lse", da, db, scale, False, r, c)
        assert lse.dtype == F64 and lse.shape == (na,)
        want = spec_lse(a, b, scale, False, r, c)
        close(lse, want, dtype, scale=10.0)
        assert np.abs(want - spec_lse(a, b, scale, False)).min() > 1e-3   # the scales count
        out0 = rng.standard_normal((na, D)).astype(dtype)
        out = be.put(out0)
        # shifts near the lse: a softmax, results of the size of b
        rs = spec_lse(a, b, scale, False, r, c) + 0.1 * rng.standard_normal(na)
        cs = 0.3 * rng.standard_normal(nb) if c is not None else None
        assert be.call("pair_softmax_product", da, db, scale, rs, cs, False, 0.5, out, r, c,
                       skip=(7,)) is None
        want = out0 + spec_softmax_product(a, b, scale, rs, cs, False, 0.5, r, c)
        close(out, want, dtype, scale=10.0)
    # one set against itself, cosine-style (rs = cs = 1 / norm), the diagonal excluded; with
    # the unit rows given instead the same results (to the dtype's rounding)
    unit = (f64(a) * rsc[:, None]).astype(dtype)
    for r, c in ((rsc, rsc), (rsc, None)):
        lse = be.call("pair_lse", da, da, scale, True, r, c)
        want = spec_lse(a, a, scale, True, r, c)
        close(lse, want, dtype, scale=10.0)
        if c is not None:
            close(lse, spec_lse(unit, unit, scale, True), dtype, scale=100.0)
        out = be.put(np.zeros((na, D), dtype))
        be.call("pair_softmax_product", da, da, scale, lse, None, True, 1.0, out, r, c,
                skip=(7,))
        close(out, spec_softmax_product(a, a, scale, lse, None, True, 1.0, r, c), dtype,
              scale=10.0)
    # row_scale / col_scale of ones: the results of None, bit for bit
    np.testing.assert_array_equal(
        be.call("pair_lse", da, db, scale, False, np.ones(na), np.ones(nb)),
        be.call("pair_lse", da, db, scale, False))
    with pytest.raises(ValueError, match="col_scale"):
        be.module.pair_lse(da, db, scale, False, None, np.ones(nb + 1))
    with pytest.raises(ValueError, match="row_scale"):
        be.module.pair_softmax_product(da, db, scale, None, None, False, 1.0,
                                       be.put(np.zeros((na, D), dtype)), np.ones(na - 1))


def test_pair_softmax_product_tiny_shapes(be):
    rng = np.random.default_rng(7)
    for n, D in ((1, 1), (2, 1), (3, 3)):
        a = rows(rng, n, D, F64)
        da = be.put(a)
        for excl in (False, True):
            out = be.put(np.zeros((n, D)))
            be.call("pair_softmax_product", da, da, 1.0, None, None, excl, 1.0, out, skip=(7,))
            close(out, spec_softmax_product(a, a, 1.0, None, None, excl, 1.0), F64)


# --- contrastive, hardest ---------------------------------------------------------------------
def _contrastive_case(be, rng, n, D, dtype, metric, classes):
    x = rows(rng, n, D, dtype, metric)
    labels = rng.integers(0, classes, n)
    base = {"euclidean": (0.5, 2.0), "sqeuclidean": (1.0, 4.0), "cosine": (0.4, 1.2)}[metric]
    pm, nm = margins(x, labels, metric, *base)
    return x, labels, pm, nm


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_contrastive(be, dtype):
    rng = np.random.default_rng(8)
    for metric in METRICS:
        # one class: no negatives (the simulator: for one metric)
        for classes in (4, 1) if (metric == "euclidean" or not be.gpu) else (4,):
            x, labels, pm, nm = _contrastive_case(be, rng, be.n, 4, dtype, metric, classes)
            dx = be.put(x)
            stats = be.call("pair_contrastive_stats", dx, labels, metric, pm, nm)
            assert isinstance(stats, np.ndarray) and stats.dtype == F64
            assert stats.shape == (be.n, 4)
            want = spec_stats(x, labels, metric, pm, nm)
            np.testing.assert_array_equal(stats[:, [1, 3]], want[:, [1, 3]])
            close(stats, want, dtype, scale=10.0)
            if classes == 1:
                assert not stats[:, 2:].any()
            grad = to_host(be.call("pair_contrastive_grad", dx, labels, metric, pm, nm, 0.7,
                                   1.3))
            assert grad.dtype == dtype and grad.shape == x.shape
            want = spec_contrastive_grad(x, labels, metric, pm, nm, 0.7, 1.3)
            close(grad, want, dtype, scale=10.0 * (1.0 + np.abs(want).max()))


def test_pair_contrastive_largest_simulator_case(gpu):
    # N = 40, D = 8: five row tiles, five column tiles in two splits
    rng = np.random.default_rng(9)
    x, labels, pm, nm = _contrastive_case(gpu, rng, 40, 8, F64, "euclidean", 3)
    grad = gpu.call("pair_contrastive_grad", gpu.put(x), labels, "euclidean", pm, nm, 1.0, 0.5)
    close(grad, spec_contrastive_grad(x, labels, "euclidean", pm, nm, 1.0, 0.5), F64)


def test_pair_contrastive_tiny_shapes(be):
    rng = np.random.default_rng(10)
    for n, D in ((1, 1), (2, 1), (3, 2), (3, 1)):
        for metric in METRICS:
            x = rows(rng, n, D, F64, metric)
            labels = np.array([0, 0, 1][:n])
            dx = be.put(x)
            close(be.call("pair_contrastive_stats", dx, labels, metric, 0.1, 1.5),
                  spec_stats(x, labels, metric, 0.1, 1.5), F64, scale=100.0)
            close(be.call("pair_contrastive_grad", dx, labels, metric, 0.1, 1.5, 1.0, 1.0),
                  spec_contrastive_grad(x, labels, metric, 0.1, 1.5, 1.0, 1.0), F64, scale=100.0)


def test_pair_contrastive_duplicate_rows_euclidean(be):
    # d == 0 between distinct rows: no gradient through it (and no nan)
    x = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    labels = np.array([0, 1, 0, 1])
    grad = to_host(be.call("pair_contrastive_grad", be.put(x), labels, "euclidean", 0.0, 5.0,
                           1.0, 1.0))
    assert np.isfinite(grad).all()
    close(grad, spec_contrastive_grad(x, labels, "euclidean", 0.0, 5.0, 1.0, 1.0), F64,
          scale=1e4)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_pair_hardest(be, dtype):
    rng = np.random.default_rng(11)
    n = be.n
    for metric in METRICS:
        x = rows(rng, n, 3, dtype, metric)
        # duplicates: ties between distinct columns, the smallest index wins
        x[n // 2] = x[1]
        x[n - 1] = x[1]
        x[n - 2] = x[3]
        labels = rng.integers(0, 3, n)
        pos, neg = be.call("pair_hardest", be.put(x), labels, metric)
        assert pos.dtype == np.int64 and neg.dtype == np.int64
        assert pos.shape == (n,) and neg.shape == (n,)
        want_pos, want_neg = spec_hardest(x, labels, metric)
        np.testing.assert_array_equal(pos, want_pos)
        np.testing.assert_array_equal(neg, want_neg)
        if be.gpu and metric != "euclidean":
            continue
        # one class: no negatives; all labels distinct: no positives
        pos, neg = be.call("pair_hardest", be.put(x), np.zeros(n, np.int64), metric)
        assert (neg == -1).all() and (pos >= 0).all()
        np.testing.assert_array_equal(pos, spec_hardest(x, np.zeros(n, int), metric)[0])
        pos, neg = be.call("pair_hardest", be.put(x), np.arange(n), metric)
        assert (pos == -1).all()
        np.testing.assert_array_equal(neg, spec_hardest(x, np.arange(n), metric)[1])


def test_pair_hardest_ties_take_the_smallest_index(be):
    # rows 1, 2, 4 equal; row 0's positives 1, 2, 4 (all at one distance), negatives 3, 5
    # (equal rows): pos 1, neg 3.  Row 3: positive 5 at distance 0, negatives all equal.
    x = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    labels = np.array([0, 0, 0, 1, 0, 1])
    for dtype in (F32, F64):
        for metric in ("euclidean", "sqeuclidean"):
            pos, neg = be.call("pair_hardest", be.put(x.astype(dtype)), labels, metric)
            assert pos.tolist() == [1, 0, 0, 5, 0, 3]
            assert neg.tolist() == [3, 3, 3, 1, 3, 1]
    pos, neg = be.call("pair_hardest", be.put(x[:1]), labels[:1], "euclidean")
    assert pos.tolist() == [-1] and neg.tolist() == [-1]


# --- row kernels ------------------------------------------------------------------------------
def check_row_kernel(be, name, args, gain, want, want_grads, dtype):
    """A row kernel's float64 per-row losses and its gradients (the inputs' shape and
    dtype) against the spec; without gradients, no gradients and the same losses."""
    loss, grads = be.call(name, *args, True, gain)
    assert loss.dtype == F64 and loss.shape == want.shape
    close(loss, want, dtype, scale=10.0)
    for g, w in zip(grads, want_grads):
        g = to_host(g)
        assert g.dtype == dtype and g.shape == w.shape
        close(g, w, dtype, scale=10.0)
    loss2, none = be.call(name, *args, False, gain)
    assert none is None
    np.testing.assert_array_equal(loss2, loss)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_triplet_rows(be, dtype):
    rng = np.random.default_rng(12)
    n = 23 if be.gpu else 150
    a, p, ng = (rng.standard_normal((n, 4)).astype(dtype) for _ in range(3))
    p[0] = a[0]          # d(a, p) = ||eps|| and, with swap, d(p, n) = d(a, n): a tie
    ng[1] = p[1]         # d(p, n) = ||eps||: swap picks it
    cases = [(2.0, False), (2.0, True), (3.0, True)] if be.gpu else \
        [(2.0, False), (2.0, True), (1.0, False), (1.0, True), (3.0, True), (0.5, False)]
    for pw, swap in cases:
        args = (be.put(a), be.put(p), be.put(ng), 0.8, pw, 1e-6, swap)
        want, want_grads = spec_triplet(a, p, ng, 0.8, pw, 1e-6, swap, 0.5)
        assert 0 < (want > 0).sum() < n        # active and inactive rows
        check_row_kernel(be, "triplet_rows", args, 0.5, want, want_grads, dtype)


def test_triplet_rows_kinks(be):
    # margin 0, a = p = n: h == 0 exactly (the gradient passes) and, with swap, a tie
    # d(a, n) == d(p, n) (half to each); row 1: a zero difference (eps = 0) in one component
    a = np.array([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]])
    p = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 3.0]])
    n = np.array([[0.5, -1.0, 2.0], [4.0, 2.0, 3.0]])
    for swap in (False, True):
        for pw in (2.0, 1.0, 3.0):
            for eps in (1e-6, 0.0):
                loss, grads = be.call("triplet_rows", be.put(a), be.put(p), be.put(n), 0.0,
                                      pw, eps, swap, True, 1.0)
                want, want_grads = spec_triplet(a, p, n, 0.0, pw, eps, swap, 1.0)
                close(loss, want, F64)
                for g, w in zip(grads, want_grads):
                    close(g, w, F64)
                if eps:
                    assert np.abs(to_host(grads[1])[0]).sum() > 0   # passed at h == 0


def test_triplet_rows_tiny_shapes(be):
    rng = np.random.default_rng(13)
    for n, D in ((1, 1), (3, 1), (2, 3)):
        a, p, ng = (rng.standard_normal((n, D)) for _ in range(3))
        loss, grads = be.call("triplet_rows", be.put(a), be.put(p), be.put(ng), 2.0, 2.0, 1e-6,
                              True, True, 1.0)
        want, want_grads = spec_triplet(a, p, ng, 2.0, 2.0, 1e-6, True, 1.0)
        close(loss, want, F64)
        for g, w in zip(grads, want_grads):
            close(g, w, F64)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_info_nce_paired(be, dtype):
    rng = np.random.default_rng(14)
    n = 13 if be.gpu else 150
    for M, D, scale in ((3, 4, 5.0), (1, 1, 2.0), (0, 2, 3.0)):
        q, k = rows(rng, n, D, dtype, "cosine"), rows(rng, n, D, dtype, "cosine")
        neg = rows(rng, n * M, D, dtype, "cosine").reshape(n, M, D)
        args = (be.put(q), be.put(k), be.put(neg), scale)
        want, want_grads = spec_info_nce(q, k, neg, scale, 0.25)
        check_row_kernel(be, "info_nce_paired", args, 0.25, want, want_grads, dtype)


# --- determinism ------------------------------------------------------------------------------
def _every_kernel(be, dtype, metrics=METRICS, seed=15):
    """The result of every kernel on one set of inputs (host arrays)."""
    rng = np.random.default_rng(seed)
    na, nb = (150, 300) if not be.gpu else (12, 9)
    a, b = rows(rng, na, 6, dtype), rows(rng, nb, 6, dtype)
    labels = rng.integers(0, 4, na)
    da, db = be.put(a), be.put(b)
    out = [to_host(be.call("pair_matrix", da, db, "euclidean")),
           be.call("pair_lse", da, db, 2.0, False), be.call("pair_lse", da, da, 2.0, True)]
    acc = be.put(np.ones((na, 6), dtype))
    be.call("pair_softmax_product", da, db, 2.0, out[1], None, False, 0.5, acc, skip=(7,))
    out.append(to_host(acc))
    for metric in metrics:
        out.append(be.call("pair_contrastive_stats", da, labels, metric, 0.5, 1.5))
        out.append(to_host(be.call("pair_contrastive_grad", da, labels, metric, 0.5, 1.5, 1.0,
                                   2.0)))
        out.extend(be.call("pair_hardest", da, labels, metric))
    loss, grads = be.call("triplet_rows", da, be.put(a[::-1].copy()), be.put(np.roll(a, 1, 0)),
                          1.0, 2.0, 1e-6, True, True, 1.0)
    out.extend([loss, *(to_host(g) for g in grads)])
    loss, grads = be.call("info_nce_paired", da, be.put(np.roll(a, 2, 0)),
                          be.put(np.stack([a, np.roll(a, 3, 0)], 1)), 3.0, True, 1.0)
    out.extend([loss, *(to_host(g) for g in grads)])
    return out


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_numba_cpu_bit_identical_for_any_thread_count(cpu, dtype):
    results = []
    for threads in (1, 2):
        fl.set_num_threads(threads)
        results.append(_every_kernel(cpu, dtype))
    for r1, r2 in zip(*results):
        assert r1.dtype == r2.dtype and r1.tobytes() == r2.tobytes()


def test_numba_cuda_repeatable(gpu):
    r1, r2 = (_every_kernel(gpu, F32, ("euclidean",)) for _ in range(2))
    for x, y in zip(r1, r2):
        assert x.tobytes() == y.tobytes()


# --- C row glue (the C backend's normalize_rows and row_dots) -------------------------------
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("d", [1, 5, 8, 37, 300])
def test_c_row_glue_against_the_spec(dtype, d):
    if not available("c"):
        pytest.skip("needs the C backend")
    from fastloss.kernels import native
    rng = np.random.default_rng(23)
    x = rows(rng, 300, d, dtype) * 3
    x[2] = 0.0                     # a zero row stays zero
    x[4] = 1e-14                   # below eps: divided by eps
    x[5, 0] = np.nan               # nan row: nan out, as NumPy's glue
    x0 = x.copy()
    for eps in (1e-12, 1e-3):
        xhat, nrm = native.normalize_rows(x, eps)
        want, want_nrm = spec_normalize(np.where(np.isnan(x), 0, x), eps)
        assert nrm.dtype == F64 and xhat.dtype == dtype
        keep = np.arange(300) != 5
        close(nrm[keep], want_nrm[keep], F64)
        close(xhat[keep], want[keep], dtype)
        assert not xhat[2].any() and np.isnan(xhat[5]).all() and np.isnan(nrm[5])
        # into a view of a larger array (NT-Xent's two views in one buffer)
        big = np.full((320, d), 7.0, dtype)
        native.normalize_rows(x, eps, out=big[10:310])
        np.testing.assert_array_equal(big[10:310], xhat)
        assert (big[:10] == 7).all() and (big[310:] == 7).all()
    y = rows(rng, 300, d, dtype)
    dots = native.row_dots(x, y)
    close(dots[keep], np.einsum("ij,ij->i", f64(x), f64(y))[keep], F64)
    # the normalization's backward, from the normalized rows and from x itself (raw),
    # into a new array and in place; below eps (and nan norms): g / eps
    g = rows(rng, 300, d, dtype)
    for eps in (1e-12, 1e-3):
        xhat, nrm = native.normalize_rows(x, eps)
        for raw, u in ((False, xhat), (True, x)):
            back = native.normalize_rows_backward(g, u, nrm, eps, raw=raw)
            want = spec_normalize_backward(g, xhat, nrm, eps)
            assert back.dtype == dtype
            close(back[keep], want[keep], dtype, scale=1.0 / eps if eps > 1e-6 else 1.0)
            np.testing.assert_allclose(back[5], f64(g[5]) / eps, rtol=1e-6)
            inplace = g.copy()
            native.normalize_rows_backward(inplace, u, nrm, eps, out=inplace, raw=raw)
            np.testing.assert_array_equal(inplace, back)
    out = np.empty_like(x)
    coef = rng.standard_normal(300)
    native.scaled_copy(out, y, coef)
    np.testing.assert_array_equal(out, (coef[:, None] * f64(y)).astype(dtype))
    native.scaled_copy(out, y, -0.25)
    np.testing.assert_array_equal(out, (-0.25 * f64(y)).astype(dtype))
    # the gradient of sum_k c_k d(y_i[k], y_j[k]), past one block of 1024 pairs, with
    # repeated rows and i = j pairs (d = 0: no euclidean gradient)
    i, j = rng.integers(0, 300, 2500), rng.integers(0, 300, 2500)
    j[:7] = i[:7]
    c = rng.standard_normal(2500)
    for metric in METRICS:
        want = np.zeros((300, d))
        for k in range(2500):
            u, v = f64(y[i[k]]), f64(y[j[k]])
            if metric == "cosine":
                gi, gj = -v, -u
            else:
                dist = np.sqrt(((u - v) ** 2).sum())
                f = 2.0 if metric == "sqeuclidean" else (1.0 / dist if dist > 0 else 0.0)
                gi = (u - v) * f
                gj = -gi
            want[i[k]] += c[k] * gi
            want[j[k]] += c[k] * gj
        got = native.pair_rows_grad(y, i, j, c, metric)
        assert got.dtype == dtype
        close(got, want, dtype)
    np.testing.assert_array_equal(x, x0)


# --- CUDA row glue ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_numba_cuda_normalize_rows(gpu, dtype):
    rng = np.random.default_rng(16)
    x = rows(rng, 9, 5, dtype) * 3
    x[2] = 0.0                     # a zero row stays zero
    x[4] = 1e-14                   # below eps: divided by eps
    dx = gpu.put(x)
    for eps in (1e-12, 1e-3):
        xhat, nrm = gpu.call("normalize_rows", dx, eps)
        want, want_nrm = spec_normalize(x, eps)
        assert isinstance(nrm, np.ndarray) and nrm.dtype == F64
        close(nrm, want_nrm, F64)
        assert to_host(xhat).dtype == dtype
        close(xhat, want, dtype)
        assert not to_host(xhat)[2].any()
        g = rng.standard_normal(x.shape).astype(dtype)
        dg = gpu.put(g)
        back = gpu.call("normalize_rows_backward", dg, xhat, nrm, eps)
        assert to_host(back).dtype == dtype
        close(back, spec_normalize_backward(g, to_host(xhat), nrm, eps), dtype,
              scale=1.0 / eps if eps > 1e-6 else 1.0)
        np.testing.assert_allclose(to_host(back)[4], g[4].astype(F64) / eps, rtol=1e-6)
    # into a view of a larger array (the two views of NT-Xent in one)
    big = gpu.put(np.full((20, 5), 7.0, dtype))
    view = big[3:12]
    res, nrm = gpu.call("normalize_rows", dx, 1e-12, view, skip=(2,))
    host = to_host(big)
    close(host[3:12], spec_normalize(x, 1e-12)[0], dtype)
    assert (host[:3] == 7).all() and (host[12:] == 7).all()


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_numba_cuda_normalize_rows_backward_raw_out_in_place(gpu, dtype):
    rng = np.random.default_rng(20)
    x = rows(rng, 9, 5, dtype) * 3
    x[2] = 0.0                     # norm 0 < eps: g / eps
    x[4] = 1e-14
    g = rng.standard_normal(x.shape).astype(dtype)
    dx, dg = gpu.put(x), gpu.put(g)
    for eps in (1e-12, 0.5):
        _, nrm = spec_normalize(x, eps)
        nrm[6] = eps        # norm == eps exactly: the gradient passes (>=), not g / eps
        xhat = gpu.put((f64(x) / np.maximum(nrm, eps)[:, None]).astype(dtype))
        want = spec_normalize_backward(g, xhat, nrm, eps)
        assert np.abs(want[6] - f64(g)[6] / eps).max() > 1e-3
        tol = 1.0 / eps if eps > 1e-6 else 1.0
        back = gpu.call("normalize_rows_backward", dg, xhat, nrm, eps)
        close(back, want, dtype, scale=tol)
        # raw: x itself, xhat on the fly (in float64: not the rounded xhat)
        want_raw = spec_normalize_backward(g, x, nrm, eps, raw=True)
        raw = gpu.call("normalize_rows_backward", dg, dx, nrm, eps, None, True)
        assert to_host(raw).dtype == dtype and tuple(raw.shape) == x.shape
        close(raw, want_raw, dtype, scale=tol)
        # into out (a view of a larger array), returned
        big = gpu.put(np.full((12, 5), 7.0, dtype))
        view = big[2:11]
        res = gpu.call("normalize_rows_backward", dg, dx, nrm, eps, view, True, skip=(4,))
        assert res is view
        host = to_host(big)
        np.testing.assert_array_equal(host[2:11], to_host(raw))
        assert (host[:2] == 7).all() and (host[11:] == 7).all()
        # in place: out is g
        for second, is_raw, ref in ((xhat, False, back), (dx, True, raw)):
            dg2 = gpu.put(g)
            res = gpu.call("normalize_rows_backward", dg2, second, nrm, eps, dg2, is_raw,
                           skip=(0, 4))
            assert res is dg2
            np.testing.assert_array_equal(to_host(dg2), to_host(ref))
    with pytest.raises(ValueError, match="out"):
        gpu.module.normalize_rows_backward(dg, dx, nrm, 1e-12, gpu.put(np.zeros((9, 4), dtype)))


def test_numba_cuda_row_dots_and_scaled_copy(gpu):
    rng = np.random.default_rng(17)
    for dtype in (F32, F64):
        a, b = rows(rng, 11, 1, dtype), rows(rng, 11, 1, dtype)
        dots = gpu.call("row_dots", gpu.put(a), gpu.put(b))
        assert dots.dtype == F64 and dots.shape == (11,)
        np.testing.assert_allclose(dots, (f64(a) * f64(b)).sum(1), rtol=1e-14)
        a = rows(rng, 11, 4, dtype)
        for coef in (0.37, rng.standard_normal(11)):
            out = gpu.put(np.zeros((11, 4), dtype))
            assert gpu.call("scaled_copy", out, gpu.put(a), coef, skip=(0,)) is None
            want = (np.asarray(coef, F64).reshape(-1, 1) * f64(a)).astype(dtype)
            np.testing.assert_array_equal(to_host(out), want)   # float64 product, one rounding


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_numba_cuda_pair_rows(gpu, dtype):
    rng = np.random.default_rng(18)
    n = 7
    x = rows(rng, n, 3, dtype)
    x[5] = x[2]                                  # d == 0 between distinct rows
    i = np.array([0, 2, 2, 6, 3, 0, 5, 4, 4])    # repeated pairs and rows, a self pair
    j = np.array([1, 5, 0, 6, 1, 1, 2, 6, 4])
    coef = rng.standard_normal(i.size)
    dx = gpu.put(x)
    for metric in METRICS:
        xm = rows(rng, n, 3, dtype, metric) if metric == "cosine" else x
        dxm = gpu.put(xm) if metric == "cosine" else dx
        d = gpu.call("pair_rows_distance", dxm, i, j, metric)
        assert isinstance(d, np.ndarray) and d.dtype == F64 and d.shape == (i.size,)
        np.testing.assert_allclose(d, spec_rows_distance(xm, i, j, metric), rtol=1e-13,
                                   atol=1e-15)
        g = to_host(gpu.call("pair_rows_grad", dxm, i, j, coef, metric))
        assert g.dtype == dtype and g.shape == xm.shape
        close(g, spec_rows_grad(xm, i, j, coef, metric), dtype)
        assert not g[np.setdiff1d(np.arange(n), np.concatenate([i, j]))].any()
    # no pairs: zeros
    g = to_host(gpu.call("pair_rows_grad", dx, np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0), "euclidean"))
    assert g.shape == x.shape and not g.any()
    with pytest.raises(IndexError):
        gpu.module.pair_rows_grad(dx, np.array([0, n]), np.array([1, 1]), np.ones(2),
                                  "euclidean")


# --- errors -----------------------------------------------------------------------------------
def test_argument_errors(be):
    x = be.put(np.zeros((3, 2)))
    y = be.put(np.zeros((3, 2), F32))
    with pytest.raises(ValueError, match="metric"):
        be.module.pair_matrix(x, x, "manhattan")
    with pytest.raises(TypeError, match="b:"):
        be.module.pair_lse(x, y, 1.0, False)
    with pytest.raises(ValueError, match="b:"):
        be.module.pair_lse(x, be.put(np.zeros((3, 4))), 1.0, False)
    with pytest.raises(ValueError, match="labels"):
        be.module.pair_hardest(x, np.zeros(2, np.int64), "cosine")
    with pytest.raises(TypeError):
        be.module.pair_matrix(be.put(np.zeros((3, 2), np.int64)), x, "cosine")
