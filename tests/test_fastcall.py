"""The compiled entry point of the common small call (csrc/py/fastcall.c).

It must return, bit for bit, what the Python path returns, or NotImplemented
having written nothing, so that the Python path runs the call and raises its
usual errors.  Every case here is run both ways: through the entry point and
with it switched off (``host_fast_path`` -> None).
"""
import sys
import threading

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch, reference
from fastloss._registry import records

from conftest import available

pytestmark = pytest.mark.skipif(not available("c"), reason="needs the C backend")


def _fast():
    from fastloss.kernels import native
    return native.fast


def test_the_entry_point_is_built_wherever_the_kernels_are():
    # (setup.py builds it as optional: a compile error there must fail here, not skip)
    assert _fast() is not None


@pytest.fixture
def python_path(monkeypatch):
    """Run a call with the entry point switched off."""
    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(_dispatch, "host_fast_path", lambda backend: None)
            return fn(*args, **kwargs)
    return run


@pytest.fixture
def taken(monkeypatch):
    """The names of the entry point's functions that returned a result."""
    fast, seen = _fast(), []
    real = _dispatch.host_fast_path

    class Recorded:
        def __getattr__(self, name):
            def call(*args):
                result = getattr(fast, name)(*args)
                if result is not NotImplemented:
                    seen.append(name)
                return result
            return call
    monkeypatch.setattr(_dispatch, "host_fast_path",
                        lambda backend: None if real(backend) is None else Recorded())
    return seen


def _same(got, want):
    """Identical results: types, dtypes, shapes and bits."""
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    assert type(got) is type(want)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.asarray(got).shape == np.asarray(want).shape
    np.testing.assert_array_equal(got, want, strict=True)


rng = np.random.default_rng(7)

_ELEMENTWISE_INPUTS = {
    "binary_cross_entropy": lambda n: (rng.uniform(0.01, 0.99, n), rng.uniform(0, 1, n)),
    "hinge_loss": lambda n: (rng.standard_normal(n), rng.choice([-1.0, 1.0], n)),
}


def _elementwise_inputs(name, shape, dtype):
    n = int(np.prod(shape))
    make = _ELEMENTWISE_INPUTS.get(name, lambda n: (rng.standard_normal(n), rng.standard_normal(n)))
    x, y = make(n)
    if name in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        y = (y > 0).astype(float)
    return x.reshape(shape).astype(dtype), y.reshape(shape).astype(dtype)


@pytest.mark.parametrize("name", [r.name for r in records("elementwise")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("grad", [False, True])
def test_elementwise_calls_match_the_python_path_bit_for_bit(name, dtype, reduction, grad,
                                                             taken, python_path):
    fn = getattr(fl, name)
    x, y = _elementwise_inputs(name, (7, 13), dtype)
    x0, y0 = x.copy(), y.copy()
    got = fn(x, y, reduction=reduction, return_grad=grad)
    assert taken == ["elementwise"]
    _same(got, python_path(fn, x, y, reduction=reduction, return_grad=grad))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    # and the numbers are the reference's
    want = getattr(reference, name)(x.astype(np.float64), y.astype(np.float64),
                                     reduction=reduction, return_grad=grad)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for g, w in zip(got if grad else (got,), want if grad else (want,)):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=rtol)


def test_elementwise_hyper_parameters_reach_the_kernel(taken, python_path):
    x, y = _elementwise_inputs("huber_loss", (300,), np.float32)
    for fn, kwargs in ((fl.huber_loss, {"delta": 0.3}), (fl.smooth_l1_loss, {"beta": 0.2}),
                       (fl.quantile_loss, {"q": 0.8}),
                       (fl.sigmoid_focal_loss, {"alpha": 0.4, "gamma": 1.5})):
        got = fn(x, (y > 0).astype(np.float32), return_grad=True, **kwargs)
        _same(got, python_path(fn, x, (y > 0).astype(np.float32), return_grad=True, **kwargs))
    assert taken == ["elementwise"] * 4


_MULTICLASS = [
    ("cross_entropy", {}),
    ("cross_entropy", {"label_smoothing": 0.1, "z_loss": 1e-3, "ignore_index": 2}),
    ("nll_loss", {}),
    ("nll_loss", {"ignore_index": 0}),
    ("softmax_focal_loss", {"gamma": 1.5, "alpha": 0.3}),
    ("multi_margin_loss", {"p": 2, "margin": 0.5}),
    ("multiclass_hinge_loss", {}),
]


@pytest.mark.parametrize("name, kwargs", _MULTICLASS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("grad", [False, True])
def test_multiclass_calls_match_the_python_path_bit_for_bit(name, kwargs, dtype, label_dtype,
                                                            reduction, grad, taken,
                                                            python_path):
    fn = getattr(fl, name)
    x = rng.standard_normal((37, 6)).astype(dtype)
    t = rng.integers(0, 6, 37).astype(label_dtype)
    x0, t0 = x.copy(), t.copy()
    got = fn(x, t, reduction=reduction, return_grad=grad, **kwargs)
    assert taken == ["rowwise"]
    _same(got, python_path(fn, x, t, reduction=reduction, return_grad=grad, **kwargs))
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


def test_nll_gather_on_long_rows_matches(taken, python_path):
    # the value-only int64 gather of nll has its own loop in the kernel
    x = rng.standard_normal((1001, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 1001)
    t[::7] = -100
    for kwargs in ({}, {"reduction": "sum"}, {"return_grad": True}, {"reduction": "none"}):
        _same(fl.nll_loss(x, t, **kwargs), python_path(fl.nll_loss, x, t, **kwargs))
    want = -x[np.arange(1001), t][t != -100].astype(np.float64).mean()
    np.testing.assert_allclose(float(fl.nll_loss(x, t)), want, rtol=1e-6)


def _not_taken_cases():
    x = rng.standard_normal((8, 5))
    t = rng.integers(0, 5, 8)
    y = rng.standard_normal((8, 5))
    big_endian = x.astype(">f8")
    return [
        ("strided input", fl.mse_loss, (x[:, ::2], y[:, ::2]), {}),
        ("Fortran order", fl.mse_loss, (np.asfortranarray(x), np.asfortranarray(y)), {}),
        ("big-endian", fl.mse_loss, (big_endian, big_endian), {}),
        ("mixed dtypes", fl.mse_loss, (x, y.astype(np.float32)), {}),
        ("a subclass", fl.mse_loss, (x.view(np.matrix), y.view(np.matrix)), {}),
        ("a list", fl.mse_loss, (x.tolist(), y), {}),
        ("empty", fl.mse_loss, (x[:0], y[:0]), {}),
        ("weight", fl.mse_loss, (x, y), {"weight": np.ones(5)}),
        ("3-d scores", fl.cross_entropy, (x.reshape(8, 5, 1), t.reshape(8, 1)), {}),
        ("one row", fl.cross_entropy, (x[0], t[0]), {}),
        ("int16 labels", fl.cross_entropy, (x, t.astype(np.int16)), {}),
        ("probability targets", fl.cross_entropy, (x, np.full((8, 5), 0.2)), {}),
        ("class weights", fl.cross_entropy, (x, t), {"weight": np.ones(5)}),
        ("strided labels", fl.cross_entropy, (x[::2], t[::2]), {}),
        ("no rows", fl.cross_entropy, (x[:0], t[:0]), {}),
    ]


@pytest.mark.parametrize("case", _not_taken_cases(), ids=lambda c: c[0])
def test_calls_it_does_not_take_run_the_python_path(case, taken, python_path):
    _, fn, args, kwargs = case
    with np.errstate(all="ignore"):
        got = fn(*args, **kwargs)
        want = python_path(fn, *args, **kwargs)
    assert taken == []
    _same(got, want)


@pytest.mark.parametrize("fn, args, kwargs, message", [
    (fl.mse_loss, (np.zeros(3, np.float16), np.zeros(3, np.float16)), {}, "float16"),
    (fl.cross_entropy, (np.zeros((4, 3)), np.array([0, 1.0, 2, 0])), {}, "integer class"),
    (fl.cross_entropy, (np.zeros((4, 3)), np.array([0, 1, 3, 0])), {}, "class index 3"),
    (fl.nll_loss, (np.zeros((4, 3)), np.array([0, -1, 2, 0])), {}, "class index -1"),
    (fl.multi_margin_loss, (np.zeros((2, 3)), np.array([0, -100])), {}, "class index -100"),
    (fl.binary_cross_entropy, (np.array([0.5, 1.5]), np.array([0.0, 1.0])), {}, "input"),
    (fl.binary_cross_entropy, (np.array([0.5, 0.5]), np.array([0.0, 2.0])), {}, "target"),
    (fl.hinge_loss, (np.array([0.5, 0.5]), np.array([1.0, 0.0])), {}, "-1 or \\+1"),
    (fl.mse_loss, (np.zeros(3), np.zeros(4)), {}, "target"),
    (fl.mse_loss, (np.zeros(3), np.zeros(3)), {"reduction": "avg"}, "reduction"),
])
def test_bad_calls_raise_the_python_paths_errors(fn, args, kwargs, message, python_path):
    _fast()
    with pytest.raises((ValueError, TypeError), match=message) as fast_error:
        fn(*args, **kwargs)
    with pytest.raises((ValueError, TypeError), match=message) as python_error:
        python_path(fn, *args, **kwargs)
    assert str(fast_error.value) == str(python_error.value)


def test_explicit_and_chosen_backends_are_honoured(taken, monkeypatch):
    x, y = _elementwise_inputs("mse_loss", (50,), np.float64)
    fl.mse_loss(x, y, backend="c")
    assert taken == ["elementwise"]
    fl.mse_loss(x, y, backend="numpy")
    with fl.use_backend("numpy"):
        fl.mse_loss(x, y)
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    fl.mse_loss(x, y)
    assert taken == ["elementwise"]


def test_torch_cpu_tensors_take_it(taken):
    torch = pytest.importorskip("torch")
    x = torch.randn(64, 10)
    t = torch.randint(0, 10, (64,))
    got = fl.cross_entropy(x, t)
    assert taken == ["rowwise"] and isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(x, t))


def test_the_entry_point_keeps_no_references_and_writes_no_input():
    fast = _fast()
    x = rng.standard_normal((16, 4)).astype(np.float32)
    t = rng.integers(0, 4, 16)
    bad = t.copy()
    bad[3] = 9
    strided = x[:, ::2]
    before = [sys.getrefcount(a) for a in (x, t, bad, strided)]
    x0 = x.copy()
    for _ in range(2000):
        fast.rowwise(0, 0, x, t, "mean", True, -100, 0.0, 0.0, 0.0, 0.0)
        fast.rowwise(0, 0, x, t, "none", False, -100, 0.0, 0.0, 0.0, 0.0)
        assert fast.rowwise(0, 0, x, bad, "mean", True, -100, 0.0, 0.0, 0.0, 0.0) \
            is NotImplemented
        assert fast.elementwise(0, 0, strided, strided, "sum", True, 0.0, 0.0) \
            is NotImplemented
        fast.elementwise(0, 0, x, x, "none", True, 0.0, 0.0)
    assert [sys.getrefcount(a) for a in (x, t, bad, strided)] == before
    np.testing.assert_array_equal(x, x0)
    with pytest.raises(TypeError, match="takes 8 arguments"):
        fast.elementwise(0, 0, x, x)


def test_threads_calling_at_once_get_their_own_results():
    _fast()
    inputs = [(rng.standard_normal((64, 10)).astype(np.float32), rng.integers(0, 10, 64))
              for _ in range(8)]
    want = [fl.cross_entropy(x, t, return_grad=True) for x, t in inputs]
    errors = []

    def work(k):
        x, t = inputs[k]
        for _ in range(300):
            got = fl.cross_entropy(x, t, return_grad=True)
            if not (got[0] == want[k][0] and np.array_equal(got[1], want[k][1])):
                errors.append(k)
                return
    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
