"""The box regression losses (generalized / distance / complete IoU): the NumPy
reference against torchvision's formulas under torch autograd; every backend
against the reference; finite differences; deterministic C sums across thread
counts and ISA paths; the kernels' arctangent; validation.

Expected values come from torchvision's formulas (ops/_utils.py
``_loss_inter_union``, giou_loss.py, diou_loss.py ``_diou_iou_loss``,
ciou_loss.py), written out below in torch and differentiated by autograd:
torchvision itself is not importable beside torch 2.13 here.
"""
import numpy as np
import pytest

import fastloss as fl
from fastloss import reference
from fastloss.losses import boxes as B
from fastloss.testing import torchvision_box_loss

from conftest import KERNEL_BACKENDS, to_device, to_host, tol

NAMES = list(B.BOX_LOSSES)            # public names; the parameter is called `name` (xdist groups)
HOST_BACKENDS = [b for b in KERNEL_BACKENDS if b.values[0] != "cuda"] + ["numpy"]
CUDA = [b for b in KERNEL_BACKENDS if b.values[0] == "cuda"]
C_ONLY = [b for b in KERNEL_BACKENDS if b.values[0] == "c"]
UNIT = 2048                            # csrc/boxes.c BX_UNIT (boxes per unit of summation)


def loss_fn(name):
    return getattr(B, name)


# ------------------------------------------------------------------ inputs
def make_boxes(n, rng, scale=100.0):
    """(boxes1, boxes2) float64 (n, 4): random overlapping pairs, and every 8th of
    each kind: identical, shared edges (ties of max and min), touching at an edge
    (zero-width intersection), boxes1 nested inside boxes2, boxes2 nested inside
    boxes1, disjoint."""
    c = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(0.01, 0.3, (n, 2)) * scale
    b1 = np.concatenate([c, c + wh], -1)
    c2 = c + rng.normal(0, 0.1 * scale, (n, 2))
    b2 = np.concatenate([c2, c2 + wh * rng.uniform(0.5, 1.5, (n, 2))], -1)
    k = np.arange(n) % 8
    b2[k == 1] = b1[k == 1]
    e = k == 2
    b2[e, 0], b2[e, 3] = b1[e, 0], b1[e, 3]
    e = k == 3
    b2[e, 0], b2[e, 2] = b1[e, 2], b1[e, 2] + wh[e, 0]
    e = k == 4
    b2[e] = b1[e] + np.array([-1, -1, 1, 1]) * 0.05 * scale
    e = k == 5
    b2[e] = b1[e] + np.array([1, 1, -1, -1]) * 0.05 * wh[e, :1]
    e = k == 6
    b2[e, :2] = b1[e, 2:] + 0.1 * scale
    b2[e, 2:] = b2[e, :2] + wh[e]
    lo, hi = np.minimum(b2[:, :2], b2[:, 2:]), np.maximum(b2[:, :2], b2[:, 2:])
    return b1, np.concatenate([lo, hi], -1)


def shaped(shape, seed=0):
    n = int(np.prod(shape[:-1]))
    b1, b2 = make_boxes(n, np.random.default_rng(seed + n))
    return b1.reshape(shape), b2.reshape(shape)


def degenerate_pairs():
    """Boxes the default check rejects or that test its edges (check_degenerate=False):
    flipped in x / y / both, zero width, zero height, a single point, against
    proper boxes, flipped ones and zero-area ones."""
    b1 = np.array([[2, 0, 1, 3], [0, 3, 2, 1], [3, 3, 1, 1], [1, 0, 1, 2], [0, 1, 2, 1],
                   [1, 1, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0], [0, 0, 2, 2]],
                  dtype=np.float64)
    b2 = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2],
                   [0, 0, 2, 2], [2, 0, 1, 3], [1, 0, 1, 2], [0, 0, 0, 0], [0, 1, 3, 1]],
                  dtype=np.float64)
    return b1, b2


# --------------------------------------------- torchvision's formulas in torch
def tv_value_and_grad(name, b1, b2, reduction, eps=1e-7):
    import torch

    t1 = torch.tensor(b1, dtype=torch.float64, requires_grad=True)
    loss = torchvision_box_loss(name, t1, torch.tensor(b2, dtype=torch.float64), eps)
    if reduction == "mean":
        loss = loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()   # torchvision's rule
    elif reduction == "sum":
        loss = loss.sum()
    (grad,) = torch.autograd.grad(loss.sum(), t1)
    return loss.detach().numpy(), grad.numpy()


def assert_grad_close(grad, expected, t, err_msg=""):
    """Gradients compared relative to their own scale (mean divides by N)."""
    finite = np.isfinite(expected)
    scale = np.max(np.abs(expected[finite])) if finite.any() else 1.0
    np.testing.assert_allclose(grad, expected, rtol=t["rtol"],
                               atol=t["atol"] * max(scale, 1e-30) + 1e-300, err_msg=err_msg)


# ---------------------------------------------- reference vs torch autograd
@pytest.mark.parametrize("case", ["mixed", "degenerate", "eps"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_matches_torchvision_formulas(name, case):
    pytest.importorskip("torch")
    if case == "degenerate":
        b1, b2 = degenerate_pairs()
        b1, b2 = np.concatenate([b1, b2]), np.concatenate([b2, b1])
    else:
        b1, b2 = make_boxes(203, np.random.default_rng(7))
    eps = 1e-3 if case == "eps" else 1e-7          # CIoU: eps enters alpha only
    t = dict(rtol=1e-12, atol=1e-14)
    for reduction in ("none", "sum", "mean"):
        want, want_grad = tv_value_and_grad(name, b1, b2, reduction, eps)
        value, grad = getattr(reference, name)(b1, b2, reduction=reduction, eps=eps,
                                               return_grad=True)
        np.testing.assert_allclose(value, want, **t, err_msg=f"value, {reduction}")
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))
        assert_grad_close(grad, want_grad, t, err_msg=f"grad, {reduction}")


def test_torch_rules_the_reference_follows():
    """The cases named in the brief, checked by hand: ties split the gradient in
    half, the zero branch of the intersection has none, CIoU with zero height."""
    pytest.importorskip("torch")
    same = np.array([[0.0, 0.0, 2.0, 2.0]])
    _, g = reference.generalized_box_iou_loss(same, same, reduction="sum", return_grad=True)
    _, tg = tv_value_and_grad("generalized_box_iou_loss", same, same, "sum")
    np.testing.assert_allclose(g, tg, rtol=1e-12, atol=1e-15)
    # identical boxes: every max/min ties; d/dx1 = 0 by symmetry of the halves
    np.testing.assert_allclose(g, 0.0, atol=1e-7)
    # touching at x = 2: the intersection's zero branch, no gradient through it
    b1, b2 = np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([[2.0, 0.0, 4.0, 2.0]])
    for name in NAMES:
        v, g = getattr(reference, name)(b1, b2, reduction="sum", return_grad=True)
        tv, tg = tv_value_and_grad(name, b1, b2, "sum")
        np.testing.assert_allclose(v, tv, rtol=1e-12)
        np.testing.assert_allclose(g, tg, rtol=1e-12, atol=1e-15)
    # CIoU, zero-height box: finite value, nan gradient (torch's 0/0 at h = 0)
    flat, target = np.array([[0.0, 1.0, 2.0, 1.0]]), np.array([[0.0, 0.0, 2.0, 2.0]])
    v, g = reference.complete_box_iou_loss(flat, target, reduction="sum", return_grad=True)
    tv, tg = tv_value_and_grad("complete_box_iou_loss", flat, target, "sum")
    assert np.isfinite(v) and np.isnan(g).all() and np.isnan(tg).all()
    np.testing.assert_allclose(v, tv, rtol=1e-12)


# ------------------------------------------------------- backends vs reference
HOST_SHAPES = [(4,), (7, 4), (2, 3, 4), (0, 4), (2 * UNIT + 3, 4)]


def _check(name, backend, shape, dtype, *, b1=None, b2=None, check_degenerate=True,
           reductions=("mean", "sum", "none"), value_only=True):
    if b1 is None:
        b1, b2 = shaped(shape)
    b1, b2 = b1.astype(dtype), b2.astype(dtype)
    before1, before2 = b1.copy(), b2.copy()
    on_gpu = backend == "cuda"
    prep = to_device if on_gpu else (lambda a: a)
    fn = loss_fn(name)
    t = tol(dtype)
    lead = b1.shape[:-1]
    for reduction in reductions:
        want, want_grad = getattr(reference, name)(b1, b2, reduction=reduction,
                                                   return_grad=True)
        value, grad = fn(prep(b1), prep(b2), reduction=reduction, return_grad=True,
                         check_degenerate=check_degenerate, backend=backend)
        value, grad = to_host(value), to_host(grad)
        assert grad.shape == b1.shape and grad.dtype == b1.dtype
        if reduction == "none":
            assert value.shape == lead and value.dtype == b1.dtype
        else:
            assert value.shape == () and value.dtype == b1.dtype
        np.testing.assert_allclose(value, want, **t, err_msg=f"value, {reduction}")
        assert_grad_close(grad, want_grad, t, err_msg=f"grad, {reduction}")
        if value_only:
            only = to_host(fn(prep(b1), prep(b2), reduction=reduction,
                              check_degenerate=check_degenerate, backend=backend))
            np.testing.assert_array_equal(only, value, err_msg="value without grad differs")
    np.testing.assert_array_equal(b1, before1)
    np.testing.assert_array_equal(b2, before2)


@pytest.mark.parametrize("shape", HOST_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_host_parity(name, backend, dtype, shape):
    _check(name, backend, shape, dtype)


#: the simulator runs a Python thread per CUDA thread (64 here, ~0.3 s a call): few,
#: small shapes, every reduction on one; 70 boxes make the grid-stride loop go round
CUDA_COMBOS = [(np.float64, (4,)), (np.float64, (2, 3, 4)), (np.float64, (0, 4)),
               (np.float64, (70, 4)), (np.float32, (7, 4))]


@pytest.mark.parametrize("dtype,shape", CUDA_COMBOS, ids=str)
@pytest.mark.parametrize("backend", CUDA)
@pytest.mark.parametrize("name", NAMES)
def test_cuda_parity(name, backend, dtype, shape):
    full = shape == (70, 4)
    _check(name, backend, shape, dtype, value_only=full,
           reductions=("mean", "sum", "none") if full else ("mean", "none"))


@pytest.mark.parametrize("backend", HOST_BACKENDS + CUDA)
@pytest.mark.parametrize("name", NAMES)
def test_eps(name, backend):
    """A large eps shows where it enters (CIoU: alpha only, as torchvision); eps = 0."""
    b1, b2 = shaped((9, 4), seed=5)
    prep = to_device if backend == "cuda" else (lambda a: a)
    for eps in (0.5, 0.0):
        want, want_grad = getattr(reference, name)(b1, b2, reduction="sum", eps=eps,
                                                   return_grad=True)
        value, grad = loss_fn(name)(prep(b1), prep(b2), reduction="sum", eps=eps,
                                    return_grad=True, backend=backend)
        np.testing.assert_allclose(to_host(value), want, **tol(np.float64))
        assert_grad_close(to_host(grad), want_grad, tol(np.float64))
    default = reference.complete_box_iou_loss(b1, b2)
    assert reference.complete_box_iou_loss(b1, b2, eps=0.5) != default   # eps matters


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the simulator divides by zero in NumPy
@pytest.mark.parametrize("backend", HOST_BACKENDS + CUDA)
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_boxes_unchecked(name, backend):
    """check_degenerate=False computes the formulas as written: the reference's values
    (nan where torch gives nan), in every backend."""
    b1, b2 = degenerate_pairs()
    _check(name, backend, None, np.float64, b1=np.concatenate([b1, b2]),
           b2=np.concatenate([b2, b1]), check_degenerate=False,
           reductions=("none", "sum") if backend == "cuda" else ("mean", "sum", "none"),
           value_only=backend != "cuda")


@pytest.mark.parametrize("backend", HOST_BACKENDS + CUDA)
@pytest.mark.parametrize("name", NAMES)
def test_nan_in_nan_out(name, backend):
    b1, b2 = shaped((5, 4))
    b1[1, 0] = np.nan
    b2[3, 2] = np.nan
    prep = to_device if backend == "cuda" else (lambda a: a)
    out = to_host(loss_fn(name)(prep(b1), prep(b2), reduction="none", backend=backend))
    assert np.isnan(out).tolist() == [False, True, False, True, False]
    assert np.isnan(to_host(loss_fn(name)(prep(b1), prep(b2), backend=backend)))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_empty_and_broadcast_and_strided(name, backend):
    fn = loss_fn(name)
    empty = np.zeros((0, 4))
    v, g = fn(empty, empty, return_grad=True, backend=backend)
    assert v == 0.0 and g.shape == (0, 4)          # torchvision: mean of no boxes is 0
    assert fn(empty, empty, reduction="sum", backend=backend) == 0.0
    assert fn(empty, empty, reduction="none", backend=backend).shape == (0,)
    # one target for every box (host only)
    b1, b2 = shaped((6, 4))
    v, g = fn(b1, b2[2], reduction="sum", return_grad=True, backend=backend)
    ev, eg = getattr(reference, name)(b1, np.broadcast_to(b2[2], b1.shape), reduction="sum",
                                      return_grad=True)
    np.testing.assert_allclose(v, ev, **tol(np.float64))
    np.testing.assert_allclose(g, eg, **tol(np.float64))
    # strided / Fortran-ordered inputs
    b1, b2 = shaped((9, 4))
    big1 = np.zeros((9, 8))
    big1[:, ::2] = b1
    s1 = big1[::2, ::2]                        # strided
    s2 = np.asfortranarray(b2[::2])            # F-order
    v, g = fn(s1, s2, reduction="sum", return_grad=True, backend=backend)
    ev, eg = getattr(reference, name)(s1, s2, reduction="sum", return_grad=True)
    np.testing.assert_allclose(v, ev, **tol(np.float64))
    np.testing.assert_allclose(g, eg, **tol(np.float64))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_integer_boxes_upcast_to_float32(backend):
    b1 = np.array([[0, 0, 4, 4], [1, 2, 5, 9]], dtype=np.int64)
    b2 = np.array([[1, 1, 3, 5], [0, 0, 5, 5]], dtype=np.int32)
    for name in NAMES:
        v, g = loss_fn(name)(b1, b2, reduction="none", return_grad=True, backend=backend)
        assert v.dtype == np.float32 and g.dtype == np.float32        # as torchvision
        np.testing.assert_allclose(v, getattr(reference, name)(b1, b2, reduction="none"),
                                   **tol(np.float32))


# ------------------------------------------------------- finite differences
def _aspect_term(b1, b2):
    """CIoU's v = 4/pi^2 (atan(W/H) - atan(w/h))^2 per box."""
    w, h = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    W, H = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    return 4 / np.pi ** 2 * (np.arctan(W / H) - np.arctan(w / h)) ** 2


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name, backend):
    """Central differences of the summed loss.  CIoU's gradient holds alpha constant
    (torchvision computes it under no_grad), so its objective here is
    DIoU(b) + sum_i alpha_i(b0) v_i(b), alpha frozen at the point b0."""
    if backend != "numpy" and not fl.backends()[backend].available:
        pytest.skip(fl.backends()[backend].reason)
    rng = np.random.default_rng(3)
    b1, b2 = make_boxes(40, rng)
    keep = (np.arange(40) % 8 == 0) | (np.arange(40) % 8 == 7)     # no ties: differentiable
    b1, b2 = b1[keep], b2[keep]
    fn = loss_fn(name)
    _, grad = fn(b1, b2, reduction="sum", return_grad=True, backend=backend)
    if name == "complete_box_iou_loss":
        diou = B.distance_box_iou_loss
        alpha = (fn(b1, b2, reduction="none", backend=backend)
                 - diou(b1, b2, reduction="none", backend=backend)) / _aspect_term(b1, b2)

        def objective(b):
            return (diou(b, b2, reduction="sum", backend=backend)
                    + np.sum(alpha * _aspect_term(b, b2)))
    else:
        def objective(b):
            return fn(b, b2, reduction="sum", backend=backend)
    h = 1e-6
    fd = np.empty_like(b1)
    for idx in np.ndindex(b1.shape):
        up, down = b1.copy(), b1.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (objective(up) - objective(down)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


# ---------------------------------------------------- determinism, ISA paths
def _isa_paths():
    if not fl.backends()["c"].available:
        return [pytest.param(None, marks=pytest.mark.skip(reason=fl.backends()["c"].reason))]
    from fastloss.kernels import native
    return list(native.ISA_NAMES[:native.ISA_NAMES.index(native.max_isa()) + 1])


def _c_results(name, b1, b2):
    fn = loss_fn(name)
    return [fn(b1, b2, reduction="mean", backend="c"),
            *fn(b1, b2, reduction="sum", return_grad=True, backend="c"),
            fn(b1, b2, reduction="none", backend="c")]


def _assert_bits_equal(a, b, what):
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), what


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("backend", C_ONLY)
@pytest.mark.parametrize("name", NAMES)
def test_c_bits_same_for_any_thread_count_and_isa(name, backend, dtype):
    """1 vs 2 threads on every ISA path, and the same bits on every path (the box
    math has no FMA: each path does the same IEEE operations)."""
    b1, b2 = shaped((5 * UNIT + 77, 4), seed=11)
    b1, b2 = b1.astype(dtype), b2.astype(dtype)
    first = None
    for isa in _isa_paths():
        fl.set_isa(isa)
        fl.set_num_threads(1)
        one = _c_results(name, b1, b2)
        fl.set_num_threads(2)
        two = _c_results(name, b1, b2)
        _assert_bits_equal(one, two, f"1 vs 2 threads, {isa}")
        first = first or one
        _assert_bits_equal(first, one, f"{_isa_paths()[0]} vs {isa}")
        np.testing.assert_allclose(one[0], getattr(reference, name)(b1, b2), **tol(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_numba_bits_same_for_any_thread_count(name):
    if not fl.backends()["numba"].available:
        pytest.skip(fl.backends()["numba"].reason)
    b1, b2 = shaped((3 * 4096 + 5, 4), seed=12)
    fn = loss_fn(name)
    fl.set_num_threads(1)
    one = fn(b1, b2, reduction="sum", return_grad=True, backend="numba")
    fl.set_num_threads(2)
    two = fn(b1, b2, reduction="sum", return_grad=True, backend="numba")
    _assert_bits_equal(one, two, "1 vs 2 threads")


# ------------------------------------------------------------- the arctangent
def _ulp_error(res, ref, mant_bits, min_exp):
    _, e = np.frexp(np.abs(ref))
    ulp = np.ldexp(ref.dtype.type(1), np.maximum(e.astype(np.int64) - 1 - mant_bits, min_exp))
    return np.abs(res.astype(ref.dtype) - ref) / ulp


def _atan_sample(dtype):
    rng = np.random.default_rng(0)
    if dtype is np.float32:
        bits = np.arange(0, 2 ** 31, 4099, dtype=np.uint64).astype(np.uint32)
        bits = bits[(bits & 0x7F800000) != 0x7F800000]            # finite
        x = np.concatenate([bits.view(np.float32), -bits.view(np.float32)])
    else:
        bits = rng.integers(0, 0x7FF0000000000000, 400_000, dtype=np.uint64)
        x = np.concatenate([bits.view(np.float64), -bits.view(np.float64)])
    dense = [rng.uniform(-3, 3, 200_000), rng.uniform(-50, 50, 100_000),
             np.ldexp(rng.uniform(-1, 1, 100_000), rng.integers(-30, 30, 100_000)),
             [0.4142135623730950, 0.41421357, 0.66, 2.414213562373095, 2.4142137, 1.0, -1.0]]
    return np.concatenate([x, *[np.asarray(d).astype(dtype) for d in dense]]).astype(dtype)


@pytest.mark.parametrize("isa", _isa_paths())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_c_atan_accuracy(dtype, isa):
    from fastloss.kernels import native
    if dtype is np.float64 and np.finfo(np.longdouble).nmant < 63:
        pytest.skip("needs an 80-bit long double for the float64 reference")
    fl.set_isa(isa)
    x = _atan_sample(dtype)
    y = native.box_atan(x)
    if dtype is np.float32:
        err = _ulp_error(y, np.arctan(x.astype(np.float64)), 23, -149)
    else:
        err = _ulp_error(y, np.arctan(x.astype(np.longdouble)), 52, -1074)
    worst = int(np.argmax(err))
    bound = 3.0 if dtype is np.float32 else 2.0      # measured: 2.2 and 0.94
    assert err[worst] <= bound, f"{err[worst]:.2f} ulp at x={x[worst]!r}: got {y[worst]!r}"
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45 if dtype is np.float32
                        else 5e-324], dtype=dtype)
    got = native.box_atan(special)
    half_pi = dtype(np.pi / 2)
    np.testing.assert_array_equal(got[:3], [half_pi, -half_pi, np.nan])
    assert got[3] == 0 and not np.signbit(got[3]) and np.signbit(got[4])
    assert got[5] == special[5]                                     # atan x = x, tiny x


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("name", NAMES)
def test_validation_errors(name, backend):
    fn = loss_fn(name)
    good = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    with pytest.raises(ValueError, match=r"boxes1: expected boxes of shape \(\.\.\., 4\).*\(2, 3\)"):
        fn(good[:, :3], good[:, :3], backend=backend)
    with pytest.raises(ValueError, match=r"boxes2: expected boxes of shape"):
        fn(good, good[:, :3], backend=backend)
    with pytest.raises(ValueError, match=r"boxes1: expected boxes of shape.*\(\)"):
        fn(np.float64(1.0), good, backend=backend)
    with pytest.raises(ValueError, match=r"boxes2: shape \(3, 4\) must equal or broadcast"):
        fn(good, np.tile(good, (2, 1))[:3], backend=backend)
    with pytest.raises(ValueError, match=r"boxes2: shape \(2, 4\) must equal or broadcast"):
        fn(good[:1], good, backend=backend)     # boxes1 never broadcasts (its gradient)
    with pytest.raises(TypeError, match=r"boxes2: dtype float32 .* differs from boxes1's float64"):
        fn(good, good.astype(np.float32), backend=backend)
    with pytest.raises(TypeError, match=r"boxes2: dtype int64 \(float32 as boxes\) differs"):
        fn(good, good.astype(np.int64), backend=backend)
    with pytest.raises(TypeError, match=r"boxes1: expected float32 or float64 boxes.*float16"):
        fn(good.astype(np.float16), good.astype(np.float16), backend=backend)
    with pytest.raises(TypeError, match=r"boxes1: expected a real numeric array"):
        fn(good.astype(complex), good, backend=backend)
    for eps in (-1e-7, np.inf):
        with pytest.raises(ValueError, match=r"eps: expected a finite value ≥ 0"):
            fn(good, good, eps=eps, backend=backend)
    with pytest.raises(ValueError, match="eps: expected a number, got nan"):
        fn(good, good, eps=np.nan, backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        fn(good, good, reduction="avg", backend=backend)
    with pytest.raises(TypeError, match="check_degenerate: expected True or False"):
        fn(good, good, check_degenerate=1, backend=backend)
    with pytest.raises(TypeError, match="return_grad: expected True or False"):
        fn(good, good, return_grad="yes", backend=backend)
    # degenerate boxes: the argument, the box's index, its coordinates
    bad = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 4.0, 1.0]])
    ok = np.tile(good[:1], (3, 1))
    with pytest.raises(ValueError, match=r"boxes1: box 2 is degenerate, \(x1, y1, x2, y2\) = "
                                         r"\(5\.0, 0\.0, 4\.0, 1\.0\)"):
        fn(bad, ok, backend=backend)
    flipped_y = bad[:, [1, 0, 3, 2]]
    with pytest.raises(ValueError, match=r"boxes2: box 2 is degenerate.*\(0\.0, 5\.0, 1\.0, 4\.0\)"):
        fn(ok, flipped_y, backend=backend)
    nd = np.tile(good[:1], (2, 3, 1))
    nd[1, 0] = bad[2]
    with pytest.raises(ValueError, match=r"boxes1: box \(1, 0\) is degenerate"):
        fn(nd, np.ones(4) * [0, 0, 1, 1], backend=backend)
    with pytest.raises(ValueError, match=r"boxes1: the box is degenerate"):
        fn(bad[2], ok[0], backend=backend)
    # zero-area boxes and NaN are not degenerate; unchecked, anything computes
    fn(np.array([[1.0, 1.0, 1.0, 3.0]]), good[:1], backend=backend)
    fn(np.array([[np.nan, 1.0, 0.0, 3.0]]), good[:1], backend=backend)
    fn(bad, ok, check_degenerate=False, backend=backend)


@pytest.mark.parametrize("backend", ["c", "numba", "numpy"])
def test_degenerate_check_finds_the_first_bad_box_in_a_large_input(backend):
    """The kernels check in their own pass (C, numba: per unit, the first unit with one
    wins); the reference backend scans first (the C scan when built)."""
    if backend != "numpy" and not fl.backends()[backend].available:
        pytest.skip(fl.backends()[backend].reason)
    b1, b2 = shaped((3 * 4096 + 9, 4))
    fl.set_num_threads(2)
    for where in (0, UNIT - 1, 2 * UNIT + 300, 3 * 4096 + 8):
        for arg in ("boxes1", "boxes2"):
            bad1, bad2 = b1.copy(), b2.copy()
            bad = bad1 if arg == "boxes1" else bad2
            bad[where, 3] = bad[where, 1] - 1.0
            bad[-1, 2] = bad[-1, 0] - 1.0            # a later one must not win
            with pytest.raises(ValueError, match=rf"{arg}: box {where} is degenerate"):
                B.complete_box_iou_loss(bad1, bad2, reduction="none", return_grad=True,
                                        backend=backend)


@pytest.mark.parametrize("backend", CUDA)
def test_cuda_validation(backend):
    good = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [1.0, 2.0, 0.0, 3.0]])
    d = to_device(good)
    with pytest.raises(ValueError, match=r"boxes1: box 2 is degenerate.*\(1\.0, 2\.0, 0\.0, 3\.0\)"):
        B.distance_box_iou_loss(d, to_device(good[[0, 0, 0]]), backend=backend)
    with pytest.raises(TypeError, match="different devices"):
        B.distance_box_iou_loss(d, good, backend=backend)
    with pytest.raises(ValueError, match=r"boxes2: shape \(4,\) must equal the shape of boxes1"):
        B.distance_box_iou_loss(d, to_device(good[0]), backend=backend)
    with pytest.raises(TypeError, match="integer boxes"):
        B.distance_box_iou_loss(to_device(good.astype(np.int32)),
                                to_device(good.astype(np.int32)), backend=backend)
