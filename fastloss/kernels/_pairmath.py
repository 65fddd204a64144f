"""Per-pair and per-row math of the pairwise (representation-learning) kernels, written once.

Plain Python, compiled by Numba for the CPU (``njit``) and for the GPU
(``cuda.jit(device=True)``) by :func:`compile_for`, like :mod:`._overlapmath`.
The contract is kernels.PAIRWISE.

* Scalar pieces (float64): the distance of one pair from its Gram value and
  the two float64 squared norms, the contrastive terms / coefficients /
  gradient weights, the online log-sum-exp merge, the p-norm pieces of
  triplet_margin_loss.
* Tile-row functions: one row r of a Gram tile ``G`` (rows x columns, in the
  input's dtype; column j of the tile is column c0 + j of b, row r is row gi
  of a), walked in column order, its running state passed in and returned.
  The CPU skeleton calls them for each row of a 64 x 256 tile, the CUDA
  skeleton from one thread per row of a shared-memory tile.  The product
  kernels overwrite the tile row with the weights (P or W, in the dtype) that
  the skeleton then multiplies with the b tile.
* Row functions: one row i of the row kernels (triplet_rows,
  info_nce_paired) and of the CUDA row glue, with their loops over D: a
  prange iteration on the CPU, a thread on the GPU.

``exp`` and ``log`` are called by those plain names (``math``'s by default,
replaceable per target through :func:`compile_for`).  Divisions are guarded
(the simulator runs this as Python, where a division by zero raises).
"""
import math

PRIMITIVES = ("exp", "log")
exp, log = math.exp, math.log
NINF = -math.inf

# metric codes (losses.pairwise.METRICS order, as the C enum)
EUCLIDEAN, SQEUCLIDEAN, COSINE = 0, 1, 2
METRIC_CODES = {"euclidean": EUCLIDEAN, "sqeuclidean": SQEUCLIDEAN, "cosine": COSINE}


def metric_code(metric):
    if metric not in METRIC_CODES:
        raise ValueError(f"metric: expected one of {tuple(METRIC_CODES)}, got {metric!r}")
    return METRIC_CODES[metric]


# --- scalar pieces ---------------------------------------------------------------------------
def vmax(m, v):
    """max(m, v) that propagates nan (from either side)."""
    return v if (v > m or v != v) else m


def relu(v):
    """max(v, 0), nan kept."""
    return 0.0 if v <= 0.0 else v


def pair_distance(g, na, nb, metric):
    """d of one pair from g = a.b (float64 of the dtype's value) and the squared norms."""
    if metric == COSINE:
        return 1.0 - g
    if g - g != 0.0:    # an overflowed (inf) or nan Gram value: the distance is unknown
        return math.nan
    s = na + nb - 2.0 * g
    s = 0.0 if s < 0.0 else s
    return math.sqrt(s) if metric == EUCLIDEAN else s


def lse_merge(m, s, m2, s2):
    """(max, sum of exp(. - max)) of two parts of a log-sum-exp, (-inf, 0) an empty part."""
    if m2 == NINF:
        return m, s
    if m == NINF:
        return m2, s2
    if m2 > m:
        return m2, s * exp(m - m2) + s2
    return m, s + s2 * exp(m2 - m)


def lse_finish(m, s):
    """log sum exp from the merged (m, s): -inf for an empty sum, nan kept."""
    if s > 0.0:
        return m + log(s)
    return NINF if s == 0.0 else s


def contrastive_coef(d, same_label, pm, nm, cpos, cneg):
    """c = dL/dd of one ordered pair: cpos [pos and d > pm] - cneg [neg and d < nm];
    nan for a nan distance (nan in, nan out)."""
    if d != d:
        return d
    if same_label:
        return cpos if d > pm else 0.0
    return -cneg if d < nm else 0.0


def contrastive_weight(d, c, metric):
    """W = 2 c phi: phi = 1/d (euclidean, W = 0 where d == 0), 2 (sqeuclidean);
    cosine: 2 c (the gradient is -sum_j W x_j there)."""
    if metric == EUCLIDEAN:
        if c != c:
            return c
        return 2.0 * c / d if (d > 0.0 and c != 0.0) else 0.0
    if metric == SQEUCLIDEAN:
        return 4.0 * c
    return 2.0 * c


def better(d, best, idx, maximize):
    """Does d replace the best so far (idx < 0: none yet)?  Strict: ties keep the
    earlier (smaller) column.  The first NaN wins and stays (as NumPy's argmax):
    nan in, nan out."""
    if idx < 0 or (d != d and best == best):
        return True
    return d > best if maximize else d < best


def pnorm_pow(v, p):
    """|v|^p."""
    if p == 2.0:
        return v * v
    if p == 1.0:
        return abs(v)
    return abs(v) ** p


def pnorm_root(s, p):
    """s^(1/p): the p-norm from the sum of |v|^p."""
    if p == 2.0:
        return math.sqrt(s)
    if p == 1.0:
        return s
    return s ** (1.0 / p)


def pnorm_grad(v, norm, p):
    """d ||v||_p / d v_k = sign(v_k) (|v_k| / ||v||)^(p-1); 0 where v_k == 0 or v == 0."""
    if norm == 0.0 or v == 0.0:
        return 0.0
    if p == 2.0:
        return v / norm
    sg = 1.0 if v > 0.0 else -1.0
    if p == 1.0:
        return sg
    return sg * (abs(v) / norm) ** (p - 1.0)


# --- tile-row functions (row r of a Gram tile, columns c0 .. c0 + nc - 1) ----------------------
def matrix_tile(G, r, nc, c0, gi, ni, nB, metric, same, out):
    """out[gi, c0 + j] = d (0 on the diagonal of a set against itself)."""
    for j in range(nc):
        gj = c0 + j
        d = pair_distance(float(G[r, j]), ni, nB[gj], metric)
        out[gi, gj] = 0.0 if (same and gj == gi) else d


def scale_tile(G, r, nc, c0, fi, cs, cf):
    """The tile row (in the dtype, the Gram values g) becomes s = f_ij g in the dtype, the
    factor f_ij = fi * cs[c0 + j] (fi = scale * row_scale_i; float64) rounded to the dtype
    through cf, a 1-entry array of the dtype (C: s = (T)(scale rs_i cs_j) * g)."""
    for j in range(nc):
        cf[0] = fi * cs[c0 + j]
        G[r, j] = G[r, j] * cf[0]


def lse_tile(G, r, nc, c0, gi, excl, scale, m, s):
    """(m, s) of the row's log-sum-exp of scale * g, merged with this tile's."""
    mt = NINF
    for j in range(nc):
        z = scale * float(G[r, j])
        mt = mt if (excl and c0 + j == gi) else vmax(mt, z)
    if mt == NINF:
        return m, s
    st = 0.0
    for j in range(nc):
        st += 0.0 if (excl and c0 + j == gi) else exp(scale * float(G[r, j]) - mt)
    return lse_merge(m, s, mt, st)


def softmax_tile(G, r, nc, c0, gi, excl, scale, rsi, cs):
    """The tile row becomes P = exp(scale g - rs_i - cs_j) (0 at j == gi when excl)."""
    for j in range(nc):
        gj = c0 + j
        G[r, j] = 0.0 if (excl and gj == gi) else exp(scale * float(G[r, j]) - rsi - cs[gj])


def stats_tile(G, r, nc, c0, gi, ni, nB, yi, lab, metric, pm, nm, s0, s1, s2, s3):
    """The row's contrastive sums (pos sum, pos count, neg sum, neg count) over the tile."""
    for j in range(nc):
        gj = c0 + j
        if gj != gi:
            d = pair_distance(float(G[r, j]), ni, nB[gj], metric)
            if lab[gj] == yi:
                v = relu(d - pm)
                s0 += v
                s1 += 1.0 if v > 0.0 else 0.0
            else:
                v = relu(nm - d)
                s2 += v
                s3 += 1.0 if v > 0.0 else 0.0
    return s0, s1, s2, s3


def weight_tile(G, r, nc, c0, gi, ni, nB, yi, lab, metric, pm, nm, cpos, cneg):
    """The tile row becomes W_ij = 2 c_ij phi_ij (in the dtype, 0 at j == gi); returns
    the sum of the stored W in float64."""
    sw = 0.0
    for j in range(nc):
        gj = c0 + j
        w = 0.0
        if gj != gi:
            d = pair_distance(float(G[r, j]), ni, nB[gj], metric)
            c = contrastive_coef(d, lab[gj] == yi, pm, nm, cpos, cneg)
            w = contrastive_weight(d, c, metric)
        G[r, j] = w
        sw += float(G[r, j])
    return sw


def hardest_tile(G, r, nc, c0, gi, ni, nB, yi, lab, metric, bp, ip, bn, jn):
    """The row's farthest positive (bp, ip) and nearest negative (bn, jn) so far."""
    for j in range(nc):
        gj = c0 + j
        if gj != gi:
            d = pair_distance(float(G[r, j]), ni, nB[gj], metric)
            if lab[gj] == yi:
                if better(d, bp, ip, True):
                    bp = d
                    ip = gj
            elif better(d, bn, jn, False):
                bn = d
                jn = gj
    return bp, ip, bn, jn


# --- row functions (row i; loops over D) -----------------------------------------------------
def row_sqnorm(x, i, D):
    s = 0.0
    for d in range(D):
        v = float(x[i, d])
        s += v * v
    return s


def row_dot(a, b, i, D):
    s = 0.0
    for d in range(D):
        s += float(a[i, d]) * float(b[i, d])
    return s


def rows_distance(x, u, v, D, metric):
    """d(x_u, x_v) from the rows, float64: ||x_u - x_v||, its square, 1 - x_u . x_v."""
    s = 0.0
    if metric == COSINE:
        for d in range(D):
            s += float(x[u, d]) * float(x[v, d])
        return 1.0 - s
    for d in range(D):
        t = float(x[u, d]) - float(x[v, d])
        s += t * t
    return math.sqrt(s) if metric == EUCLIDEAN else s


def normalize_row(x, i, D, eps, out):
    """out[i] = x[i] / max(||x[i]||, eps); returns ||x[i]||."""
    nrm = math.sqrt(row_sqnorm(x, i, D))
    den = nrm if nrm > eps else eps
    if den > 0.0:
        for d in range(D):
            out[i, d] = float(x[i, d]) / den
    else:   # eps == 0 and a zero row
        for d in range(D):
            out[i, d] = 0.0
    return nrm


def normalize_backward_row(g, x, i, D, nrm, eps, raw, dx):
    """dx[i] = (g - xhat (xhat . g)) / norm where norm >= eps (and > 0), else g / eps
    (0 for eps == 0 and a zero row), xhat = x[i] or, with raw, x[i] / norm (x the
    un-normalized rows; float64).  Reads all of row i of g (the dot) before writing
    dx[i], and each element before writing it: dx may be g."""
    if nrm >= eps and nrm > 0.0:
        dot = 0.0
        for d in range(D):
            xh = float(x[i, d]) / nrm if raw else float(x[i, d])
            dot += xh * float(g[i, d])
        for d in range(D):
            xh = float(x[i, d]) / nrm if raw else float(x[i, d])
            dx[i, d] = (float(g[i, d]) - xh * dot) / nrm
    elif eps > 0.0:
        for d in range(D):
            dx[i, d] = float(g[i, d]) / eps
    else:
        for d in range(D):
            dx[i, d] = 0.0


def triplet_row(an, po, ne, i, D, margin, p, eps, swap, want_grad, gain, ga, gp, gn):
    """torch's triplet_margin_loss of row i: dist(u, v) = ||u - v + eps||_p, with swap
    d_an = min(d(a, n), d(p, n)) (torch.min: half the gradient to each at a tie);
    loss = max(h, 0), h = margin + d_ap - d_an (nan kept, as torch's clamp_min).
    With want_grad, gain * the gradient into ga, gp, gn [i]: it passes where h >= 0
    (clamp_min's rule at 0).  Returns the loss (float64)."""
    s_ap = 0.0
    s_an = 0.0
    s_pn = 0.0
    for d in range(D):
        ad = float(an[i, d])
        pd = float(po[i, d])
        nd = float(ne[i, d])
        s_ap += pnorm_pow(ad - pd + eps, p)
        s_an += pnorm_pow(ad - nd + eps, p)
        if swap:
            s_pn += pnorm_pow(pd - nd + eps, p)
    d_ap = pnorm_root(s_ap, p)
    d_an = pnorm_root(s_an, p)
    d_pn = 0.0
    w_an = 1.0      # d_neg = w_an d(a, n) + w_pn d(p, n), for the gradient
    w_pn = 0.0
    d_neg = d_an
    if swap:
        d_pn = pnorm_root(s_pn, p)
        if d_pn < d_an:
            d_neg = d_pn
            w_an = 0.0
            w_pn = 1.0
        elif d_pn == d_an:
            w_an = 0.5
            w_pn = 0.5
    h = margin + d_ap - d_neg
    loss = h if (h > 0.0 or h != h) else 0.0
    if want_grad:
        c = gain if h >= 0.0 else 0.0
        for d in range(D):
            ad = float(an[i, d])
            pd = float(po[i, d])
            nd = float(ne[i, d])
            g_ap = 0.0
            e_an = 0.0
            e_pn = 0.0
            if c != 0.0:
                g_ap = pnorm_grad(ad - pd + eps, d_ap, p)              # d d_ap / d a
                if w_an != 0.0:
                    e_an = w_an * pnorm_grad(ad - nd + eps, d_an, p)   # d d(a, n) / d a
                if w_pn != 0.0:
                    e_pn = w_pn * pnorm_grad(pd - nd + eps, d_pn, p)   # d d(p, n) / d p
            ga[i, d] = c * (g_ap - e_an)
            gp[i, d] = c * (-g_ap - e_pn)
            gn[i, d] = c * (e_an + e_pn)
    return loss


def neg_dot(q, ne, i, m, D):
    s = 0.0
    for d in range(D):
        s += float(q[i, d]) * float(ne[i, m, d])
    return s


def info_nce_row(q, k, ne, i, D, M, scale, want_grad, gain, gq, gk, gneg, acc, arow):
    """loss_i = logsumexp(z) - z_0, z_0 = scale q_i . k_i, z_m = scale q_i . neg_im;
    with want_grad, gain * its gradient into gq, gk [i] and gneg [i], the sum over m
    of gq accumulated in float64 in acc[arow] (scratch of D values).  Returns loss_i."""
    z0 = scale * row_dot(q, k, i, D)
    m = z0
    s = 1.0
    for mm in range(M):
        m, s = lse_merge(m, s, scale * neg_dot(q, ne, i, mm, D), 1.0)
    lse = lse_finish(m, s)
    if want_grad:
        c = gain * scale
        dz0 = exp(z0 - lse) - 1.0     # d loss / d z_0
        for d in range(D):
            acc[arow, d] = dz0 * float(k[i, d])
        for mm in range(M):
            pm = exp(scale * neg_dot(q, ne, i, mm, D) - lse)
            for d in range(D):
                acc[arow, d] += pm * float(ne[i, mm, d])
                gneg[i, mm, d] = c * pm * float(q[i, d])
        for d in range(D):
            gq[i, d] = c * acc[arow, d]
            gk[i, d] = c * dz0 * float(q[i, d])
    return lse - z0


SCALARS = (vmax, relu, pair_distance, lse_merge, lse_finish, contrastive_coef,
           contrastive_weight, better, pnorm_pow, pnorm_root, pnorm_grad)
# in dependency order
LOOPS = (matrix_tile, scale_tile, lse_tile, softmax_tile, stats_tile, weight_tile, hardest_tile,
         row_sqnorm, row_dot, rows_distance, normalize_row, normalize_backward_row,
         triplet_row, neg_dot, info_nce_row)


def compile_for(jit, loop_jit=None, primitives=None):
    """Every function above compiled, as a dict by name: the scalar ones with
    ``jit`` (``njit(inline="always")`` or ``cuda.jit(device=True)``), the loops
    with ``loop_jit`` (default ``jit``).  ``primitives`` maps names in
    PRIMITIVES to compiled replacements.  The functions call each other through
    one namespace holding the compiled versions."""
    import builtins

    from . import compile_into
    namespace = {"math": math, "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in PRIMITIVES})
    namespace.update({name: globals()[name] for name in (
        "NINF", "EUCLIDEAN", "SQEUCLIDEAN", "COSINE")})
    namespace.update(primitives or {})
    return compile_into(namespace, ((SCALARS, jit), (LOOPS, loop_jit or jit)))
