"""Tests of the C layer itself (fastloss._native): vector math accuracy on
every ISA path, deterministic totals, the thread pool (counts, fork,
concurrent callers), the value checks, and the per-element math of each
elementwise loss against an independent float64 NumPy formula.

Builds nothing: skipped if the extension is not built
(``pip install -e . --no-build-isolation`` or ``python csrc/build_ffi.py``).
"""
import multiprocessing as mp
import os
import threading

import numpy as np
import pytest

try:
    from fastloss._native import ffi, lib
except ImportError as exc:  # pragma: no cover
    pytest.skip(f"fastloss._native is not built ({exc})", allow_module_level=True)

LOSSES = [ffi.string(lib.fl_ew_name(i)).decode() for i in range(lib.fl_ew_count())]
LOSS_ID = {name: i for i, name in enumerate(LOSSES)}
DT = {np.float32: 0, np.float64: 1}
ISAS = list(range(lib.fl_max_isa() + 1))
MATH = ["exp", "log", "log1p", "expm1"]


@pytest.fixture
def isa_path(request):
    old = lib.fl_get_isa()
    assert lib.fl_set_isa(request.param) == request.param
    yield request.param
    lib.fl_set_isa(old)


@pytest.fixture
def restore_threads():
    old = lib.fl_get_num_threads()
    yield
    lib.fl_set_num_threads(old)


def ptr(a):
    return ffi.NULL if a is None else ffi.from_buffer(a)


def call(loss, x, y, w=None, a=None, p0=0.0, p1=0.0, out=True, grad=True, total=True, gs=1.0):
    """One fl_elementwise call; returns (total, out, grad)."""
    args = ffi.new("fl_ew_args *")
    o = np.empty_like(x) if out else None
    g = np.empty_like(x) if grad else None
    args.input, args.target, args.weight, args.param = ptr(x), ptr(y), ptr(w), ptr(a)
    args.p0, args.p1, args.n = p0, p1, x.size
    args.out, args.grad, args.grad_scale, args.want_total = ptr(o), ptr(g), gs, int(total)
    rc = lib.fl_elementwise(LOSS_ID[loss], DT[x.dtype.type], args)
    assert rc == 0
    return args.total, o, g


def fl_math(fn, x):
    y = np.empty_like(x)
    assert lib.fl_math(MATH.index(fn), DT[x.dtype.type], ffi.from_buffer(x), ffi.from_buffer(y), x.size) == 0
    return y


# ---------------------------------------------------------------- ulp errors
def ulp_error(res, ref, mant_bits, min_exp, max_exp):
    """|res - ref| in units of the last place of the result format at ref.
    ref is in a wider type; inf counts as the next power of two above the
    largest finite (so rounding to inf near overflow is 1 ulp, not inf)."""
    wide = ref.dtype
    big = np.ldexp(wide.type(1), max_exp)
    r = res.astype(wide)
    r = np.where(np.isinf(r), np.sign(r) * big, r)
    f = np.where(np.abs(ref) > big, np.sign(ref) * big, ref)  # beyond: rounds to inf
    _, e = np.frexp(np.abs(f))
    ulp = np.ldexp(wide.type(1), np.maximum(e.astype(np.int64) - 1 - mant_bits, min_exp))
    err = np.abs(r - f) / ulp
    both_nan = np.isnan(r) & np.isnan(f)
    err = np.where(both_nan, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


def ref_fn(fn, x):
    with np.errstate(all="ignore"):
        return getattr(np, fn)(x)


F32_SPECIAL = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754944e-38, 1e-30, -1e-30, 1e-8, -1e-8, 0.25,
     -0.25, 0.5, 1.0, -1.0, -0.99999994, 2.0, 88.72283, 88.72284, 89.0, -87.33654, -103.27893,
     -103.97208, -104.0, -110.0, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan],
    dtype=np.float32)


def f32_sample():
    # a sweep over all bit patterns (every 1021st, both signs) plus dense
    # samples where each function is delicate, plus special points
    bits = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32)
    rng = np.random.default_rng(0)
    dense = [rng.uniform(-110, 90, 200_000), rng.uniform(-1, 1, 200_000),
             np.ldexp(rng.uniform(-1, 1, 200_000), rng.integers(-149, 5, 200_000))]
    return np.concatenate([bits.view(np.float32), *[d.astype(np.float32) for d in dense],
                           F32_SPECIAL])


F64_SPECIAL = np.array(
    [0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, -1e-300, 1e-17,
     -1e-17, 0.5, -0.5, 1.0, -1.0, -0.9999999999999999, 2.0, 709.782712893384,
     709.7827128933841, 710.0, -708.3964185322641, -745.1332191019411, -745.2, -746.0,
     1.7976931348623157e308, -1.7976931348623157e308, np.inf, -np.inf, np.nan])


def f64_sample():
    rng = np.random.default_rng(1)
    rand_bits = rng.integers(0, 2**63, 300_000, dtype=np.uint64, endpoint=True)
    rand_bits[::2] |= np.uint64(1) << np.uint64(63)
    parts = [rand_bits.view(np.float64), rng.uniform(-750, 712, 200_000),
             rng.uniform(-1, 1, 200_000), rng.uniform(-40, 40, 100_000),
             np.ldexp(rng.uniform(-1, 1, 200_000), rng.integers(-1074, 12, 200_000)), F64_SPECIAL]
    return np.concatenate(parts)


_SAMPLES = {}


def sample_and_refs(dtype):
    if dtype not in _SAMPLES:
        np.seterr(all="ignore")
        if dtype is np.float32:
            x = f32_sample()
            refs = {fn: ref_fn(fn, x.astype(np.float64)) for fn in MATH}
        else:
            x = f64_sample()
            refs = {fn: ref_fn(fn, x.astype(np.longdouble)) for fn in MATH}
        _SAMPLES[dtype] = (x, refs)
    return _SAMPLES[dtype]


@pytest.mark.parametrize("isa_path", ISAS, indirect=True, ids=lambda i: ffi.string(lib.fl_isa_name(i)).decode())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fn", MATH)
def test_math_ulp(isa_path, dtype, fn):
    if dtype is np.float64 and np.finfo(np.longdouble).nmant < 63:
        pytest.skip("needs an 80-bit long double for the float64 reference")
    x, refs = sample_and_refs(dtype)
    res = fl_math(fn, x)
    if dtype is np.float32:
        err = ulp_error(res, refs[fn], 23, -149, 128)
    else:
        err = ulp_error(res, refs[fn], 52, -1074, 1024)
    worst = int(np.argmax(err))
    assert err[worst] <= 4.0, f"{fn} {dtype.__name__}: {err[worst]:.2f} ulp at x={x[worst]!r}: got {res[worst]!r}, want {refs[fn][worst]!r}"
    # signed zeros and exact special values
    with np.errstate(all="ignore"):
        z = np.array([0.0, -0.0], dtype=dtype)
        if fn in ("log1p", "expm1"):
            assert np.array_equal(np.signbit(fl_math(fn, z)), [False, True])
        sp = np.array([np.inf, -np.inf, np.nan], dtype=dtype)
        want = {"exp": [np.inf, 0, np.nan], "log": [np.inf, np.nan, np.nan],
                "log1p": [np.inf, np.nan, np.nan], "expm1": [np.inf, -1, np.nan]}[fn]
        np.testing.assert_array_equal(fl_math(fn, sp), np.array(want, dtype=dtype))


# ------------------------------------------------ per-element math of each loss
def sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def ref_loss(loss, x, y, a, p0, p1):
    """Independent float64 formulas (value, derivative)."""
    d = x - y
    ad = np.abs(d)
    if loss == "mse":
        return d * d, 2 * d
    if loss == "l1":
        return ad, np.sign(d)
    if loss == "huber":
        return (np.where(ad < p0, 0.5 * d * d, p0 * (ad - 0.5 * p0)),
                np.where(ad < p0, d, p0 * np.sign(d)))
    if loss == "smooth_l1":
        with np.errstate(all="ignore"):
            return (np.where(ad < p0, 0.5 * d * d / p0, ad - 0.5 * p0),
                    np.where(ad < p0, d / p0, np.sign(d)))
    if loss == "log_cosh":
        return ad + np.log1p(np.exp(-2 * ad)) - np.log(2.0), np.tanh(d)
    if loss == "quantile":
        r = y - x
        return np.maximum(a * r, (a - 1) * r), np.where(x > y, 1 - a, -a)
    if loss == "bce":
        with np.errstate(all="ignore"):
            lx = np.maximum(np.log(x), -100)
            l1x = np.maximum(np.log1p(-x), -100)
            return -(y * lx + (1 - y) * l1x), (x - y) / np.maximum(x * (1 - x), 1e-12)
    if loss == "bce_logits":
        lw = 1 + (a - 1) * y
        return (1 - y) * x + lw * softplus(-x), (1 - y) - lw * sigmoid(-x)
    if loss == "sigmoid_focal":
        p = sigmoid(x)
        ce = (1 - y) * x + softplus(-x)
        m = p * (1 - y) + (1 - p) * y
        at = p0 * y + (1 - p0) * (1 - y) if p0 >= 0 else 1.0
        dm = (1 - 2 * y) * p * (1 - p)
        with np.errstate(all="ignore"):
            g = at * ((p - y) * m**p1 + ce * p1 * m ** (p1 - 1) * dm) if p1 else at * (p - y)
        return at * ce * m**p1, g
    if loss == "hinge":
        z = p0 - y * x
        if p1:
            return np.maximum(z, 0) ** 2, np.where(z > 0, -2 * y * z, 0.0)
        return np.maximum(z, 0), np.where(z > 0, -y, 0.0)
    raise KeyError(loss)


def loss_inputs(loss, n, rng):
    x = rng.normal(0, 3, n)
    y = rng.normal(0, 3, n)
    a = None
    p0, p1 = {"huber": (1.5, 0), "smooth_l1": (0.7, 0), "sigmoid_focal": (0.25, 2.0),
              "hinge": (1.0, 0)}.get(loss, (0.0, 0.0))
    if loss == "quantile":
        a = rng.uniform(0.05, 0.95, n)
    if loss == "bce":
        x = rng.uniform(0, 1, n)
        x[:3] = [0.0, 1.0, 1e-30]
        y = rng.uniform(0, 1, n)
    if loss == "bce_logits":
        a = rng.uniform(0.5, 3, n)
        y = rng.uniform(0, 1, n)
        x[:2] = [1e4, -1e4]
    if loss == "sigmoid_focal":
        y = rng.uniform(0, 1, n)
        y[: n // 3] = np.round(y[: n // 3])
        x[:4] = [30.0, -30.0, 80.0, -80.0]
    if loss == "hinge":
        y = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
    if loss == "log_cosh":
        x[:4], y[:4] = [1e-20, -1e-20, 1e30, -50.0], 0.0
    return x, y, a, p0, p1


TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


@pytest.mark.parametrize("isa_path", ISAS, indirect=True, ids=lambda i: ffi.string(lib.fl_isa_name(i)).decode())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_math(isa_path, dtype, loss):
    rng = np.random.default_rng(LOSS_ID[loss])
    n = 40_003  # odd: exercises the sub-block tail
    x, y, a, p0, p1 = loss_inputs(loss, n, rng)
    xc, yc = x.astype(dtype), y.astype(dtype)
    ac = None if a is None else a.astype(dtype)
    w = rng.uniform(0, 2, n).astype(dtype)
    # reference from the rounded inputs, in float64
    lr, gr = ref_loss(loss, xc.astype(np.float64), yc.astype(np.float64),
                      p0 if a is None else ac.astype(np.float64), p0, p1)
    w64 = w.astype(np.float64)
    total, out, grad = call(loss, xc, yc, w=w, a=ac, p0=p0, p1=p1, gs=0.5)
    np.testing.assert_allclose(out, w64 * lr, **TOL[dtype])
    np.testing.assert_allclose(grad, 0.5 * w64 * gr, **TOL[dtype])
    assert total == pytest.approx(np.sum(out, dtype=np.float64), rel=1e-12)
    # each output alone gives the same bits
    t2, o2, g2 = call(loss, xc, yc, w=w, a=ac, p0=p0, p1=p1, gs=0.5, grad=False, total=False)
    _, _, g3 = call(loss, xc, yc, w=w, a=ac, p0=p0, p1=p1, gs=0.5, out=False, total=False)
    t4, _, _ = call(loss, xc, yc, w=w, a=ac, p0=p0, p1=p1, out=False, grad=False)
    np.testing.assert_array_equal(o2, out)
    np.testing.assert_array_equal(g3, grad)
    assert t4 == total and t2 == 0.0
    # NaN in, NaN out (value and derivative)
    if loss not in ("bce", "hinge"):  # their inputs are validated before the call
        xn = xc[:8].copy()
        xn[3] = np.nan
        _, o, g = call(loss, xn, yc[:8].copy(), a=None if ac is None else ac[:8].copy(), p0=p0, p1=p1)
        assert np.isnan(o[3]) and np.isnan(g[3]) and np.isfinite(o[4])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_focal_gammas(dtype, gamma, alpha):
    # integer gamma takes an internal kernel (powers by multiplication), the
    # others the log-space one: both against the same reference
    rng = np.random.default_rng(11)
    n = 5000
    x = rng.normal(0, 4, n).astype(dtype)
    y = rng.uniform(0, 1, n)
    y[: n // 2] = np.round(y[: n // 2])
    y = y.astype(dtype)
    lr, gr = ref_loss("sigmoid_focal", x.astype(np.float64), y.astype(np.float64), None, alpha, gamma)
    _, o, g = call("sigmoid_focal", x, y, p0=alpha, p1=gamma)
    tol = dict(rtol=5e-5, atol=1e-6) if dtype is np.float32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(o, lr, **tol)
    np.testing.assert_allclose(g, gr, **tol)


@pytest.mark.parametrize("isa_path", ISAS, indirect=True, ids=lambda i: ffi.string(lib.fl_isa_name(i)).decode())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_log_cosh_ulp(isa_path, dtype):
    # value and tanh over the whole positive range (both are even/odd in d)
    if dtype is np.float32:
        x = np.arange(0, 0x7F800000, 1021, dtype=np.uint32).view(np.float32)
        fmt = (23, -149, 128)
    else:
        if np.finfo(np.longdouble).nmant < 63:
            pytest.skip("needs an 80-bit long double for the float64 reference")
        rng = np.random.default_rng(3)
        x = np.concatenate([np.ldexp(rng.uniform(0.5, 1, 100_000), rng.integers(-1074, 1024, 100_000)),
                            rng.uniform(0, 40, 100_000)])
        fmt = (52, -1074, 1024)
    _, o, g = call("log_cosh", x, np.zeros_like(x), total=False)
    X = x.astype(np.longdouble)
    with np.errstate(all="ignore"):
        e = np.expm1(np.minimum(X, 40))
        ref = np.where(X < 40, np.log1p(e * e / (2 * (1 + e))), X - np.log(np.longdouble(2)))
    for res, want, what in [(o, ref, "value"), (g, np.tanh(X), "tanh")]:
        err = ulp_error(res, want, *fmt)
        i = int(np.argmax(err))
        assert err[i] <= 4, f"log_cosh {what}: {err[i]:.2f} ulp at d={x[i]!r}"


def test_loss_edge_values():
    for dt in (np.float32, np.float64):
        z = np.zeros(4, dt)
        # log-cosh relative accuracy at both ends
        x = np.array([1e-20, -1e-20, 1e30, -1e30], dt)
        _, o, g = call("log_cosh", x, z)
        rtol = 1e-14 if dt is np.float64 else 1e-3  # float32 5e-41 is subnormal
        np.testing.assert_allclose(o, [5e-41, 5e-41, 1e30 - np.log(2), 1e30 - np.log(2)], rtol=rtol)
        np.testing.assert_allclose(g, [1e-20, -1e-20, 1, -1], rtol=1e-6)
        # smooth_l1 with beta = 0 is l1
        x = np.array([-2.0, 0.0, 3.0, 1e-30], dt)
        _, o, g = call("smooth_l1", x, z, p0=0.0)
        np.testing.assert_array_equal(o, np.abs(x))
        np.testing.assert_array_equal(g, np.sign(x))
        # BCE with logits and focal loss stay finite at +-1e4
        x = np.array([1e4, -1e4, 1e4, -1e4], dt)
        y = np.array([0.0, 1.0, 1.0, 0.0], dt)
        for loss, p0, p1 in [("bce_logits", 1.0, 0.0), ("sigmoid_focal", 0.25, 0.5),
                             ("sigmoid_focal", -1.0, 0.0), ("sigmoid_focal", 0.25, 2.0),
                             ("sigmoid_focal", 0.25, 1.5)]:
            _, o, g = call(loss, x, y, p0=p0, p1=p1)
            assert np.isfinite(o).all() and np.isfinite(g).all(), (loss, dt, o, g)


def test_bad_arguments():
    args = ffi.new("fl_ew_args *")
    assert lib.fl_elementwise(-1, 0, args) == -1
    assert lib.fl_elementwise(len(LOSSES), 0, args) == -1
    assert lib.fl_elementwise(0, 2, args) == -1
    assert lib.fl_math(4, 0, ffi.NULL, ffi.NULL, 0) == -1
    assert lib.fl_ew_name(len(LOSSES)) == ffi.NULL
    args.n = 0
    args.want_total = 1
    assert lib.fl_elementwise(0, 0, args) == 0 and args.total == 0.0


# ---------------------------------------------------------------- threads
@pytest.mark.parametrize("loss", ["mse", "log_cosh", "sigmoid_focal"])
def test_total_bit_identical_across_threads(loss, restore_threads):
    rng = np.random.default_rng(5)
    n = 3_000_001
    x = rng.normal(size=n).astype(np.float32)
    y = rng.uniform(size=n).astype(np.float32)
    w = rng.uniform(size=n).astype(np.float32)
    results = []
    for t in (1, 2, 3, 7):
        assert lib.fl_set_num_threads(t) == t and lib.fl_get_num_threads() == t
        results.append(call(loss, x, y, w=w, p0=0.25, p1=2.0))
    t0, o0, g0 = results[0]
    for t, o, g in results[1:]:
        assert t == t0  # bitwise: == on floats
        np.testing.assert_array_equal(o, o0)
        np.testing.assert_array_equal(g, g0)
    assert t0 == pytest.approx(np.sum(o0, dtype=np.float64), rel=1e-12)


def test_thread_count(restore_threads):
    assert lib.fl_set_num_threads(3) == 3
    assert lib.fl_get_num_threads() == 3
    default = lib.fl_set_num_threads(0)
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.split(",")[0].strip().isdigit() and int(env.split(",")[0]) > 0:
        assert default == int(env.split(",")[0])
    else:
        assert default == len(os.sched_getaffinity(0))
    assert lib.fl_get_num_threads() == default


def _child(q):
    lib.fl_set_num_threads(2)  # the parent's module, inherited by fork
    x = np.linspace(-3, 3, 500_000, dtype=np.float32)
    y = np.zeros_like(x)
    t, _, _ = call("log_cosh", x, y, out=False, grad=False)
    q.put(t)


def test_fork_after_threads(restore_threads):
    lib.fl_set_num_threads(2)
    x = np.linspace(-3, 3, 500_000, dtype=np.float32)
    y = np.zeros_like(x)
    want, _, _ = call("log_cosh", x, y, out=False, grad=False)  # workers now exist
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=30)
    if p.is_alive():
        p.kill()
        pytest.fail("child forked after threaded use hung")
    assert p.exitcode == 0
    assert q.get(timeout=5) == want


def test_concurrent_callers(restore_threads):
    lib.fl_set_num_threads(2)
    rng = np.random.default_rng(7)
    n = 1_000_003
    x = rng.normal(size=n)
    y = rng.normal(size=n)
    jobs = [("mse", np.float32), ("log_cosh", np.float64), ("huber", np.float32),
            ("bce_logits", np.float32)]
    data = {k: (x.astype(k[1]), np.clip(y, 0, 1).astype(k[1])) for k in jobs}
    serial = {k: call(k[0], *data[k], p0=1.0) for k in jobs}
    errors = []

    def run(k):
        try:
            for _ in range(5):
                t, o, g = call(k[0], *data[k], p0=1.0)
                assert t == serial[k][0]
                assert np.array_equal(o, serial[k][1]) and np.array_equal(g, serial[k][2])
        except Exception as e:  # pragma: no cover
            errors.append((k, e))

    threads = [threading.Thread(target=run, args=(k,)) for k in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads), "concurrent calls hung"
    assert not errors, errors


# ---------------------------------------------------------------- value checks
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_find_outside(dtype):
    n = 20_000
    x = np.linspace(0, 1, n).astype(dtype)
    f = lambda a, lo=0.0, hi=1.0: lib.fl_find_outside(DT[dtype], ffi.from_buffer(a), a.size, lo, hi)
    assert f(x) == -1
    assert f(x[:0]) == -1
    for i in (0, 4095, 4096, 12_345, n - 1):
        for bad in (np.nan, -1e-7, 1.0000001, np.inf, -np.inf):
            b = x.copy()
            b[i] = bad
            b[min(i + 7, n - 1)] = 2.0  # a later bad value must not win
            assert f(b) == i, (i, bad)
    assert f(x, 0.5, 1.0) == 0
    assert f(x, 0.0, 0.5) == int(np.argmax(x > 0.5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_find_not_pm1(dtype):
    n = 10_001
    y = np.where(np.arange(n) % 3 == 0, -1.0, 1.0).astype(dtype)
    f = lambda a: lib.fl_find_not_pm1(DT[dtype], ffi.from_buffer(a), a.size)
    assert f(y) == -1
    for i in (0, 4095, 4096, n - 1):
        for bad in (0.0, np.nan, 0.9999999, -1.0000001, np.inf):
            b = y.copy()
            b[i] = bad
            assert f(b) == i, (i, bad)
    assert lib.fl_find_not_pm1(7, ffi.from_buffer(y), n) == -2
