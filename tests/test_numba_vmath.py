"""The vectorisable float64 primitives of the Numba CPU backend
(fastloss/kernels/_numba_vmath.py): at most 2 ulp from NumPy over the whole range,
special values as libm, and a loop calling them compiled to SIMD code."""
import math
import re

import numpy as np
import pytest

numba = pytest.importorskip("numba")
vm = pytest.importorskip("fastloss.kernels._numba_vmath")

NAMES = ("exp", "log", "log1p", "expm1", "tanh")
TINY = np.finfo(np.float64).tiny
MAX = np.finfo(np.float64).max


def _vectorised(fn):
    @numba.njit(error_model="numpy")
    def loop(x, out):
        for i in range(x.size):
            out[i] = fn(x[i])
    return loop


_LOOPS = {}


def run(name, x):
    if name not in _LOOPS:
        _LOOPS[name] = _vectorised(getattr(vm, name))
    x = np.ascontiguousarray(x, np.float64)
    out = np.empty_like(x)
    _LOOPS[name](x, out)
    return out


def ulp_error(got, want):
    """|got - want| in units of the last place of want (subnormal: of the smallest
    subnormal); inf/nan must match exactly."""
    got, want = np.asarray(got), np.asarray(want)
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    g, w = got[finite], want[finite]
    unit = np.spacing(np.maximum(np.abs(w), TINY))
    return np.abs(g - w) / unit


def magnitudes(rng, lo, hi, n, signs=True):
    m = 10.0 ** rng.uniform(lo, hi, n)
    return np.concatenate([m, -m]) if signs else m


def domain(name, rng):
    n = 100_000
    if name == "exp":
        parts = [rng.uniform(-745.2, 709.8, n), rng.uniform(-20, 20, n), magnitudes(rng, -300, 2.85, n)]
    elif name == "log":
        parts = [magnitudes(rng, -323, 308.2, n, signs=False), rng.uniform(0.5, 2.0, n),
                 1.0 + magnitudes(rng, -15, -1, n)]
    elif name == "log1p":
        parts = [magnitudes(rng, -300, 308, n, signs=False), -magnitudes(rng, -300, -1e-9, n, signs=False),
                 rng.uniform(-1.0, 3.0, n), rng.uniform(-0.3, 0.42, n)]
    elif name == "expm1":
        parts = [rng.uniform(-60, 709.7, n), rng.uniform(-2, 2, n), magnitudes(rng, -300, 1, n)]
    else:  # tanh
        parts = [rng.uniform(-25, 25, n), rng.uniform(-1, 1, n), rng.uniform(0.6, 0.65, n),
                 magnitudes(rng, -300, 1.5, n)]
    x = np.concatenate(parts)
    return x[np.isfinite(x)]


@pytest.mark.parametrize("name", NAMES)
def test_dense_random_within_2_ulp(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    x = domain(name, rng)
    with np.errstate(all="ignore"):
        want = getattr(np, name)(x)
    err = ulp_error(run(name, x), want)
    worst = int(np.argmax(err))
    assert err[worst] <= 2.0, f"{name}({x[np.isfinite(want)][worst]!r}): {err[worst]:.2f} ulp"


SPECIALS = np.array([0.0, -0.0, 5e-324, -5e-324, TINY, -TINY, 1e-300, -1e-300, 1e-20, -1e-20,
                     0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 0.625, -0.625, 19.0, 20.0, 21.0, -40.0,
                     -41.0, 700.0, 709.78, 709.79, 710.0, 1e5, -1e5, -708.4, -708.39, -720.0,
                     -745.13, -745.14, -746.0, 1e300, -1e300, MAX, -MAX,
                     math.inf, -math.inf, math.nan])


@pytest.mark.parametrize("name", NAMES)
def test_special_values(name):
    x = SPECIALS
    with np.errstate(all="ignore"):
        want = getattr(np, name)(x)
    got = run(name, x)
    err = ulp_error(got, want)
    assert err.max() <= 2.0, list(zip(x[np.isfinite(want)], err))
    # signed zeros: exp/log never give -0; the odd functions keep the sign of 0
    zeros = want == 0
    assert np.array_equal(np.signbit(got[zeros]), np.signbit(want[zeros])), name


def test_log_and_log1p_domain_edges():
    assert run("log", np.array([0.0]))[0] == -math.inf
    assert np.isnan(run("log", np.array([-1e-300, -1.0, -math.inf]))).all()
    assert run("log1p", np.array([-1.0]))[0] == -math.inf
    assert np.isnan(run("log1p", np.array([-1.0000000000000002, -2.0, -math.inf]))).all()
    assert run("expm1", np.array([-math.inf]))[0] == -1.0
    assert list(run("tanh", np.array([math.inf, -math.inf]))) == [1.0, -1.0]


def test_subnormal_results_of_exp():
    # gradual underflow: within one subnormal ulp of the correctly rounded value
    x = np.linspace(-745.13, -708.4, 20001)
    got, want = run("exp", x), np.exp(x)
    sub = want < TINY
    assert np.all(np.abs(got[sub] - want[sub]) <= 5e-324)
    assert np.all(ulp_error(got[~sub], want[~sub]) <= 2.0)


def test_bit_casts_round_trip():
    @numba.njit
    def roundtrip(x):
        return vm.as_float(vm.as_int(x)), vm.as_int(x)
    for v in (0.0, -0.0, 1.5, -math.inf, 5e-324):
        back, bits = roundtrip(v)
        assert np.float64(back).tobytes() == np.float64(v).tobytes()
        assert bits == np.float64(v).view(np.int64)


def test_a_loop_calling_them_is_simd():
    """The point of the module: LLVM widens a loop that calls these (no libm calls left)."""
    run("tanh", np.ones(8))
    loop = _LOOPS["tanh"]
    asm = loop.inspect_asm(loop.signatures[0])
    assert re.search(r"\b(v\w+pd)\s+[^\n]*%[yz]mm", asm), "no packed-double SIMD in the loop"
    assert not re.search(r"call\w*\s+\S*(tanh|expm1|exp)\b", asm)
