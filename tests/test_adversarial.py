"""An adversarial input generator, in the spirit of bottleneck's ``array_generator``:
for every loss of the registry, on the c and numba backends, generated inputs over
layouts (Fortran, negative strides, strided, zero strides, read-only, big-endian),
sizes (0, 1, odd, a block boundary) and values (nan, ±inf, ±1e30, denormals,
saturated logits), compared with the NumPy reference for the value, the gradient
and their NaN/inf pattern (``assert_allclose`` checks where nan and inf are).  A
call that raises must name its argument.  Inputs are never modified.

One test per (loss, backend) walks its whole generated set, so that a loss's Numba
kernels compile once per worker."""
from __future__ import annotations

import itertools
import re
import warnings
import zlib

import numpy as np
import pytest

import fastloss as fl
from fastloss import reference, testing
from fastloss._registry import REGISTRY

from conftest import backend_param

BACKENDS = [backend_param(b) for b in ("c", "numba")]
LOSSES = sorted(REGISTRY)

#: float64 throughout: the reference's precision; the kernels' float64 paths
RTOL, ATOL = 1e-9, 1e-12

SPECIALS = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 5e-324, -2e-310, 1e4, -1e4, 0.0])


# ---- layouts: the same values in other memory ---------------------------------------------

def _fortran(a):
    return np.asfortranarray(a)


def _reversed(a):
    """Negative strides along every axis, same values."""
    flipped = np.ascontiguousarray(a[(slice(None, None, -1),) * a.ndim])
    return flipped[(slice(None, None, -1),) * a.ndim]


def _strided(a):
    """Every other element of a buffer twice as long along the last axis."""
    if a.ndim == 0:
        return a
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


LAYOUTS = {"fortran": _fortran, "reversed": _reversed, "strided": _strided,
           "read_only": _read_only, "big_endian": _big_endian}


# ---- inputs per family ---------------------------------------------------------------------

def _elementwise(name, size, rng):
    x, y = testing.make_inputs(name, (size, 3) if size else (0, 3), np.float64,
                               seed=int(rng.integers(1 << 30)))
    # a zero-stride weight: one row broadcast over the rows
    w = np.broadcast_to(rng.uniform(0.5, 2.0, 3), x.shape)
    return [x, y], {"weight": w}


def _multiclass(name, size, rng):
    classes = 5
    x = 3.0 * rng.standard_normal((size, classes))
    if name == "nll_loss":
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    y = rng.integers(0, classes, size)
    return [x, y], {}


def _overlap(name, size, rng):
    x = rng.uniform(0.01, 0.99, (size, 3, 5))
    y = rng.integers(0, 3, (size, 5))
    return [x, y], {}


def _boxes(name, size, rng):
    b1, b2 = testing.make_boxes(size, np.float64, seed=int(rng.integers(1 << 30)))
    return [b1, b2], {}


def _pairwise(name, size, rng):
    n = max(size, 2)            # the pair losses need two rows
    e = lambda: rng.standard_normal((n, 4))  # noqa: E731
    if name == "triplet_margin_loss":
        return [e(), e(), e()], {}
    if name in ("info_nce_loss", "nt_xent_loss"):
        return [e(), e()], {}
    if name == "pairwise_distances":
        return [e()], {}
    return [e(), rng.integers(0, 3, n)], {}


MAKERS = {"elementwise": _elementwise, "multiclass": _multiclass, "overlap": _overlap,
          "boxes": _boxes, "pairwise": _pairwise}

#: sizes (rows): empty, one, odd, past a kernel block (16384 elements)
SIZES = {"elementwise": (0, 1, 7, 5462), "multiclass": (0, 1, 7, 3277), "overlap": (1, 7),
         "boxes": (0, 1, 7, 4097), "pairwise": (2, 7, 65)}


def _with_specials(args, name, rng):
    """The first (float) argument with special values at random places; within its
    documented range where the loss checks one (its check is tested below)."""
    x = args[0].copy()
    if x.size == 0:
        return None
    k = max(1, x.size // 4)
    where = rng.choice(x.size, k, replace=False)
    record = REGISTRY[name]
    pool = SPECIALS if record.input_range is None else np.array([0.0, 1.0, 5e-324, 1 - 1e-16])
    x.reshape(-1)[where] = rng.choice(pool, k)
    return [x, *args[1:]]


# ---- the comparison ----------------------------------------------------------------------

def _call(fn, args, kwargs, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, backend=backend, return_grad=True, **kwargs)


def _ref(name, args, kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = getattr(reference, name)
        try:
            return ref(*args, return_grad=True, **kwargs)
        except TypeError:       # pairwise_distances: no gradient
            return ref(*args, **kwargs), None


def _same(got, want, what):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for g, w in zip(got, want):
            _same(g, w, what)
        return
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    scale = np.abs(want[np.isfinite(want)]).max() if np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * max(1.0, scale),
                               err_msg=what)


def _check(name, args, kwargs, backend, what):
    fn = getattr(fl, name)
    before = [np.array(a, copy=True) for a in args]
    if name == "pairwise_distances":
        got, want = fn(*args, backend=backend, **kwargs), _ref(name, args, kwargs)[0]
        _same(got, want, what)
    else:
        _same(_call(fn, args, kwargs, backend), _ref(name, args, kwargs), what)
    for a, b in zip(args, before):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: an input was modified")


def _cases(name, rng):
    family = REGISTRY[name].family
    for size in SIZES[family]:
        args, kwargs = MAKERS[family](name, size, rng)
        yield f"size {size}", args, kwargs
        for layout, (index, arg) in itertools.product(LAYOUTS, enumerate(args)):
            moved = list(args)
            moved[index] = LAYOUTS[layout](arg)
            yield f"size {size}, argument {index} {layout}", moved, kwargs
        if family in ("elementwise", "multiclass"):
            for trial in range(3):
                special = _with_specials(args, name, rng)
                if special is not None:
                    yield f"size {size}, special values #{trial}", special, kwargs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LOSSES)
def test_generated_inputs_match_the_reference(name, backend):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for what, args, kwargs in _cases(name, rng):
        _check(name, args, kwargs, backend, f"{name} on {backend}, {what}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [n for n in LOSSES if REGISTRY[n].input_range])
def test_out_of_range_values_raise_naming_the_argument(name, backend):
    rng = np.random.default_rng(5)
    args, kwargs = MAKERS[REGISTRY[name].family](name, 7, rng)
    lo, hi = REGISTRY[name].input_range
    for bad in (np.nan, lo - 0.5, hi + 0.5, np.inf):
        x = args[0].copy()
        x[3, 1] = bad
        with pytest.raises(ValueError, match=re.escape("input") + ".*"):
            getattr(fl, name)(x, *args[1:], backend=backend, **kwargs)
