"""Row-wise (multi-class) kernels of the Numba backends, called directly with
kernels.RowwiseCall: every kernel against a float64 NumPy evaluation of the
formulas of notes/rowwise_spec.md written out below, on numba_cpu (S = 1 and
S > 1 loop shapes) and numba_cuda (under the simulator: tiny inputs, thread-
and block-per-row kernels), bit-identical totals for any thread count, and
scan_labels.  The cases are a sparse cover of the options (weight, alpha,
ignored rows, smoothing, z-loss, want_out / want_grad, dtypes, C in 1, 2, 3,
70), not a full product: every Numba variant costs compile time."""
import numpy as np
import pytest

import fastloss as fl
from fastloss.kernels import RowwiseCall

from conftest import available, tol, to_device, to_host

pytest.importorskip("numba")

IGNORE = -100


# --- the spec, in float64 NumPy ----------------------------------------------------------------
def _rows(a, n, C, S):
    """(n*S, C) rows of a flat (N, C, S) array (row r = i*S + s)."""
    return np.asarray(a, np.float64).reshape(n, C, S).transpose(0, 2, 1).reshape(n * S, C)


def _unrows(g, n, C, S):
    return g.reshape(n, S, C).transpose(0, 2, 1).reshape(-1)


def spec(call):
    """(total, per-row values, grad) by notes/rowwise_spec.md."""
    n, C, S = call.n, call.classes, call.inner
    x = _rows(call.input, n, C, S)
    R = n * S
    w = np.ones(C) if call.weight is None else np.asarray(call.weight, np.float64)
    eps, z, gs = call.smoothing, call.z_loss, call.grad_scale
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    p = np.exp(x - lse[:, None])
    cls = np.arange(C)[None, :]
    if call.loss == "cross_entropy_prob":
        t = (1 - eps) * _rows(call.target, n, C, S) + eps / C
        tw = t @ w
        value = tw * lse - (w * t * x).sum(axis=1) + z * lse ** 2
        grad = gs * ((tw + 2 * z * lse)[:, None] * p - w * t)
        return value.sum(), value, _unrows(grad, n, C, S)
    y = np.asarray(call.target).astype(np.int64)
    valid = y != call.ignore_index   # every label kernel honours it (as the C kernels do)
    yv = np.where(valid, y, 0)
    hot = (cls == yv[:, None]).astype(np.float64)
    xy = x[np.arange(R), yv]
    wy = w[yv]
    if call.loss == "cross_entropy":
        value = (1 - eps) * wy * (lse - xy) + eps / C * (w.sum() * lse - x @ w) + z * lse ** 2
        A = (1 - eps) * wy + eps / C * w.sum() + 2 * z * lse
        grad = gs * (A[:, None] * p - (1 - eps) * wy[:, None] * hot - eps / C * w)
    elif call.loss == "nll":
        value = -wy * xy
        grad = -gs * wy[:, None] * hot
    elif call.loss == "softmax_focal":
        gamma = call.p1
        a = (np.full(C, call.p0) if call.alpha is None else np.asarray(call.alpha))[yv] * wy
        L = xy - lse
        u = -np.expm1(L)
        ug = u ** gamma
        value = -a * ug * L
        r = np.where(u > 0, L / np.where(u > 0, u, 1), -1.0)
        F = ug * (1 - gamma * np.exp(L) * r)
        grad = gs * (a * F)[:, None] * (p - hot)
    elif call.loss == "multi_margin":
        zc = call.p0 - xy[:, None] + x
        on = (zc > 0) & (hot == 0)
        h = np.where(on, zc if call.p1 == 1 else zc ** 2, 0.0)
        value = wy * h.sum(axis=1) / C
        grad = gs * (wy / C)[:, None] * np.where(on, 1.0 if call.p1 == 1 else 2 * zc, 0.0)
        grad -= hot * grad.sum(axis=1)[:, None]
    elif call.loss == "crammer_singer":
        xm = np.where(hot == 1, -np.inf, x)
        k = xm.argmax(axis=1)
        hm = call.p0 + xm.max(axis=1) - xy
        value = np.maximum(hm, 0.0)
        grad = gs * (hm > 0)[:, None] * ((cls == k[:, None]) - hot)
    value = np.where(valid, value, 0.0)
    grad = np.where(valid[:, None], grad, 0.0)
    return value.sum(), value, _unrows(grad, n, C, S)


# --- inputs ------------------------------------------------------------------------------------
def make_call(loss, n, C, S, dtype, *, weight=False, alpha=False, ignored=False, eps=0.0, z=0.0,
              p0=None, p1=None, want_out=True, want_grad=True, label_dtype=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    R = n * S
    ignore = 255 if label_dtype == np.uint8 else IGNORE
    x = (rng.standard_normal(n * C * S) * 3).astype(dtype)
    if loss == "cross_entropy_prob":
        t = rng.random((n, C, S))
        target = (t / t.sum(axis=1, keepdims=True)).astype(dtype).reshape(-1)
    else:
        target = rng.integers(0, C, R)
        if ignored:
            target[rng.random(R) < 0.3] = ignore
            target[0] = ignore
        target = target.astype(label_dtype)
        if loss == "nll":   # log-probabilities
            x = (x - np.log(np.exp(x.astype(np.float64)).sum())).astype(dtype)
    defaults = {"softmax_focal": (0.25, 2.0), "multi_margin": (1.0, 1.0),
                "crammer_singer": (1.0, 0.0)}.get(loss, (0.0, 0.0))
    return RowwiseCall(
        loss=loss, input=x, target=target, n=n, classes=C, inner=S,
        weight=rng.uniform(0.2, 2.0, C) if weight else None,
        alpha=rng.uniform(0.1, 0.9, C) if alpha else None,
        ignore_index=ignore, smoothing=eps, z_loss=z,
        p0=defaults[0] if p0 is None else p0, p1=defaults[1] if p1 is None else p1,
        want_out=want_out, want_grad=want_grad, grad_scale=0.7, total_scale=1.0 / max(R, 1))


def check(call, value, out, grad):
    total, v_ref, g_ref = spec(call)
    t = tol(call.input.dtype)
    np.testing.assert_allclose(float(value), total * call.total_scale, rtol=t["rtol"],
                               atol=t["atol"])
    if call.want_out:
        assert out.dtype == call.input.dtype and out.shape == (call.n * call.inner,)
        np.testing.assert_allclose(out, v_ref, **t)
    else:
        assert out is None
    if call.want_grad:
        assert grad.dtype == call.input.dtype and grad.shape == call.input.shape
        np.testing.assert_allclose(grad, g_ref, **t)
        rows = _rows(grad, call.n, call.classes, call.inner)
        if call.loss != "cross_entropy_prob":
            assert not rows[np.asarray(call.target) == call.ignore_index].any()   # exactly 0
    else:
        assert grad is None


# (loss, n, C, S, dtype, options): every kernel on both paths, the options spread over the
# cases; 14 compiled variants (each (loss, path) in one dtype, cross_entropy in both)
F32, F64 = np.float32, np.float64
CPU_CASES = [
    # S == 1: contiguous rows
    ("cross_entropy", 5, 70, 1, F32, dict(weight=True, ignored=True, eps=0.1, z=1e-3)),
    ("cross_entropy", 9, 3, 1, F64, dict(ignored=True, want_out=False, label_dtype=np.uint8)),
    ("cross_entropy", 3, 1, 1, F64, dict(eps=0.2)),
    ("cross_entropy", 2, 140_000, 1, F32, dict(weight=True, eps=0.1)),   # > ROW_CACHE classes
    ("cross_entropy_prob", 4, 70, 1, F64, dict(weight=True, eps=0.1, z=1e-3)),
    ("nll", 6, 70, 1, F64, dict(weight=True, ignored=True)),
    ("softmax_focal", 6, 70, 1, F32, dict(weight=True, alpha=True, ignored=True)),
    ("softmax_focal", 7, 2, 1, F32, dict(p1=0.5)),
    ("multi_margin", 6, 70, 1, F64, dict(weight=True, p1=2.0, ignored=True)),
    ("crammer_singer", 6, 70, 1, F32, dict(ignored=True)),
    ("crammer_singer", 3, 1, 1, F32, dict()),
    # S > 1: tiles of up to 256 positions (260: a full and a partial tile)
    ("cross_entropy", 3, 5, 300, F64, dict(weight=True, ignored=True, eps=0.1, z=1e-3)),
    ("cross_entropy", 1, 300, 260, F64, dict(ignored=True, eps=0.1)),   # T*C > TILE_CACHE
    ("cross_entropy", 2, 3, 7, F32, dict(want_grad=False, label_dtype=np.int32)),
    ("cross_entropy_prob", 2, 3, 260, F32, dict(want_out=False)),
    ("cross_entropy_prob", 1, 300, 260, F32, dict(weight=True, eps=0.1)),
    ("nll", 2, 2, 260, F32, dict(ignored=True)),
    ("softmax_focal", 2, 3, 260, F64, dict(weight=True, ignored=True, p1=0.0)),
    ("multi_margin", 6, 1, 1, F64, dict(want_grad=False)),
]


def _id(case):
    loss, n, C, S, dtype, opts = case
    return f"{loss}-{n}x{C}x{S}-{np.dtype(dtype).name}-" + "-".join(sorted(opts)) if opts else \
        f"{loss}-{n}x{C}x{S}-{np.dtype(dtype).name}"


@pytest.fixture(scope="module")
def cpu():
    if not available("numba"):
        pytest.skip(fl.backends()["numba"].reason)
    from fastloss.kernels import numba_cpu
    return numba_cpu


@pytest.mark.parametrize("case", CPU_CASES, ids=_id)
def test_numba_cpu_matches_spec(cpu, case):
    loss, n, C, S, dtype, opts = case
    call = make_call(loss, n, C, S, dtype, **opts)
    value, out, grad = cpu.rowwise(call)
    assert isinstance(value, float)
    check(call, value, out, grad)


@pytest.mark.parametrize("loss", ["multi_margin", "crammer_singer"])
def test_numba_cpu_margin_losses_take_rows_only(cpu, loss):
    """(N, C) only, as the public API, PyTorch and the C kernels: no strided path."""
    with pytest.raises(ValueError, match=r"\(N, C\) input only"):
        cpu.rowwise(make_call(loss, 2, 3, 5, F64))


def test_numba_cpu_saturated_and_edge_rows(cpu):
    # focal with saturated logits stays finite (gamma < 1 too); crammer's first argmax on ties
    x = np.array([1e4, -1e4, 0.0, -1e4, 1e4, 0.0], np.float32)
    for gamma in (0.0, 0.5, 2.0):
        call = make_call("softmax_focal", 2, 3, 1, F32, p1=gamma)
        call.input, call.target = x, np.array([0, 0])
        value, out, grad = cpu.rowwise(call)
        assert np.isfinite(value) and np.isfinite(out).all() and np.isfinite(grad).all()
        check(call, value, out, grad)
    call = make_call("crammer_singer", 1, 4, 1, F32)
    call.input, call.target = np.array([0.5, 2.0, 2.0, 1.0], np.float32), np.array([0])
    value, out, grad = cpu.rowwise(call)
    np.testing.assert_array_equal(grad, np.array([-0.7, 0.7, 0.0, 0.0], np.float32))
    check(call, value, out, grad)


def test_numba_cpu_bit_identical_for_any_thread_count(cpu):
    # several work units on both paths (the S = 1 kernel with 70 classes: 234 rows a unit)
    calls = [make_call("cross_entropy", 2000, 70, 1, F32, weight=True, ignored=True, eps=0.1,
                       seed=3),
             make_call("cross_entropy", 4, 5, 3001, F64, ignored=True, seed=4)]
    for call in calls:
        results = []
        for threads in (1, 2):
            fl.set_num_threads(threads)
            results.append(cpu.rowwise(call))
        (v1, o1, g1), (v2, o2, g2) = results
        assert np.float64(v1).tobytes() == np.float64(v2).tobytes()
        assert o1.tobytes() == o2.tobytes() and g1.tobytes() == g2.tobytes()
        check(call, v1, o1, g1)


def _scan_cases():
    t = np.array([0, 2, -100, 1, 2, -100, 0], np.int64)
    w = np.array([0.5, 2.0, 0.25])
    return [(t, None, (-1, 5.0, 5)), (t, w, (-1, 0.5 + 0.25 + 2.0 + 0.25 + 0.5, 5)),
            (np.array([0, 1, 3, -1, 2]), w, (2, None, None)),
            (np.array([0, -100, -2], np.int32), None, (2, None, None)),
            (np.array([1, 200, 7], np.uint8), None, (1, None, None)),
            (np.array([], np.int64), w, (-1, 0.0, 0))]


def _check_scan(got, want):
    first_bad, weight_sum, count = got
    assert isinstance(first_bad, int) and first_bad == want[0]
    if want[0] < 0:
        assert isinstance(count, int) and count == want[2]
        assert weight_sum == pytest.approx(want[1], rel=1e-15)


def test_numba_cpu_scan_labels(cpu):
    for t, w, want in _scan_cases():
        _check_scan(cpu.scan_labels(t, 3, IGNORE, w), want)
    big = np.random.default_rng(1).integers(0, 4, 100_000)
    big[[70_000, 90_000]] = 9
    assert cpu.scan_labels(big, 4, IGNORE, None)[0] == 70_000
    big[big == 9] = IGNORE
    w = np.array([0.1, 0.2, 0.3, 0.4])
    _, ws, count = cpu.scan_labels(big, 4, IGNORE, w)
    assert count == 99_998 and ws == pytest.approx(w[big[big >= 0]].sum(), rel=1e-12)


# --- CUDA (simulator: a few hundred elements a case) -------------------------------------------
CUDA_CASES = [
    ("cross_entropy", 3, 70, 1, F32, dict(weight=True, ignored=True, eps=0.1, z=1e-3)),  # block/row
    ("cross_entropy", 4, 3, 9, F64, dict(weight=True, ignored=True, eps=0.1, label_dtype=np.uint8)),
    ("cross_entropy", 3, 1, 1, F64, dict(want_out=False)),
    ("cross_entropy_prob", 3, 70, 1, F64, dict(weight=True, eps=0.1, z=1e-3)),
    ("cross_entropy_prob", 2, 3, 9, F32, dict(want_grad=False)),
    ("nll", 3, 70, 1, F64, dict(weight=True, ignored=True)),
    ("nll", 2, 2, 9, F32, dict(ignored=True, label_dtype=np.int32)),
    ("softmax_focal", 3, 70, 1, F64, dict(alpha=True, ignored=True)),
    ("softmax_focal", 2, 3, 9, F32, dict(weight=True, ignored=True, p1=0.5)),
    ("multi_margin", 3, 70, 1, F64, dict(weight=True, p1=2.0)),
    ("multi_margin", 2, 3, 9, F32, dict(weight=True, ignored=True)),
    ("crammer_singer", 3, 70, 1, F64, dict(ignored=True)),
    ("crammer_singer", 2, 3, 9, F32, dict(p0=0.5)),
]


@pytest.fixture(scope="module")
def gpu():
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    from fastloss.kernels import numba_cuda
    return numba_cuda


@pytest.mark.parametrize("case", CUDA_CASES, ids=_id)
def test_numba_cuda_matches_spec(gpu, case):
    loss, n, C, S, dtype, opts = case
    call = make_call(loss, n, C, S, dtype, **opts)
    host = RowwiseCall(**{f: getattr(call, f) for f in RowwiseCall.__slots__})
    for f in ("input", "target", "weight", "alpha"):
        if getattr(call, f) is not None:
            setattr(call, f, to_device(getattr(call, f)))
    value, out, grad = gpu.rowwise(call)
    assert to_host(value).shape == ()
    check(host, to_host(value), None if out is None else to_host(out),
          None if grad is None else to_host(grad))


def test_numba_cuda_scan_labels(gpu):
    for t, w, want in _scan_cases():
        if t.size:
            _check_scan(gpu.scan_labels(to_device(t), 3, IGNORE,
                                        None if w is None else to_device(w)), want)
