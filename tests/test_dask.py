"""fastloss.dask against the in-memory losses (themselves tested against the
reference): values and gradients of every elementwise, row-wise and overlap
loss over several (uneven) chunks on the threaded scheduler, the chunking
rules and their errors, and one run on a two-process distributed cluster.

Everything runs on the default backend (the C kernels, compiled at build time)
or the NumPy reference: no Numba compiles here."""
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import fastloss as fl  # noqa: E402
import fastloss.dask as fld  # noqa: E402
from fastloss.losses.elementwise import ELEMENTWISE_LOSSES  # noqa: E402
from fastloss.losses.overlap import OVERLAP_LOSSES  # noqa: E402

pytestmark = pytest.mark.xdist_group("dask")

F64 = dict(rtol=1e-11, atol=1e-13)
F32 = dict(rtol=2e-5, atol=2e-6)
REDUCTIONS = ("mean", "sum", "none")


def compute(*values):
    return dask.compute(*values, scheduler="threads")


def check(fn_name, x, y, chunks, *, reduction, tol=F64, dask_kwargs=None, **kwargs):
    """fastloss.dask.<fn_name> over ``chunks`` equals fastloss.<fn_name>, value and
    gradient; the gradient has the input's chunks, the value is lazy."""
    x_before, y_before = x.copy(), np.copy(y)
    X = da.from_array(x, chunks=chunks)
    value, grad = getattr(fld, fn_name)(X, y, reduction=reduction, return_grad=True,
                                        split_every=2, **(dask_kwargs or kwargs))
    value_only = getattr(fld, fn_name)(X, y, reduction=reduction, **(dask_kwargs or kwargs))
    assert isinstance(value, da.Array) and isinstance(grad, da.Array)
    assert grad.chunks == X.chunks and grad.dtype == x.dtype and value.dtype == x.dtype
    ref_value, ref_grad = getattr(fl, fn_name)(x, y, reduction=reduction, return_grad=True,
                                               **kwargs)
    assert value.shape == np.shape(ref_value)
    got_value, got_grad, got_only = compute(value, grad, value_only)
    np.testing.assert_allclose(got_value, ref_value, **tol)
    np.testing.assert_allclose(got_only, ref_value, **tol)
    np.testing.assert_allclose(got_grad, ref_grad, **tol)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


# ---- elementwise ---------------------------------------------------------------------

SHAPE = (7, 6, 5)
UNEVEN = ((2, 5), (1, 3, 2), (5,))


def elementwise_case(name, rng, dtype=np.float64):
    """(input, target, kwargs) valid for the loss, with a broadcast weight."""
    x = rng.normal(size=SHAPE)
    y = rng.normal(size=SHAPE)
    kwargs = {"weight": rng.random(SHAPE[-1]) + 0.5}
    if name == "binary_cross_entropy":
        x, y = 1 / (1 + np.exp(-x)), rng.random(SHAPE)
    elif name in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss"):
        y = (rng.random(SHAPE) < 0.4).astype(np.float64)
    elif name == "hinge_loss":
        y = np.where(rng.random(SHAPE) < 0.5, -1.0, 1.0)
        kwargs["squared"] = True
    elif name == "huber_loss":
        kwargs["delta"] = 0.7
    elif name == "smooth_l1_loss":
        kwargs["beta"] = 0.4
    elif name == "quantile_loss":
        kwargs["q"] = 0.3
    if name == "binary_cross_entropy_with_logits":
        kwargs["pos_weight"] = rng.random(SHAPE[-1]) + 0.5
    return x.astype(dtype), y.astype(dtype), kwargs


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", sorted(ELEMENTWISE_LOSSES))
def test_elementwise(loss, reduction):
    x, y, kwargs = elementwise_case(loss, np.random.default_rng(0))
    check(loss, x, y, UNEVEN, reduction=reduction, **kwargs)


@pytest.mark.parametrize("loss", ["mse_loss", "log_cosh_loss"])
def test_elementwise_dask_weight_and_no_weight(loss):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    weight = rng.random(SHAPE[1:])                  # (6, 5): a dask weight, broadcast
    dask_weight = da.from_array(weight, chunks=UNEVEN[1:])
    for reduction in ("mean", "sum"):
        check(loss, x, y, UNEVEN, reduction=reduction, weight=weight,
              dask_kwargs=dict(weight=dask_weight))
        check(loss, x, y, UNEVEN, reduction=reduction)
    target = da.from_array(y, chunks=UNEVEN)        # a dask target of the input's chunks
    value = fld.mse_loss(da.from_array(x, chunks=UNEVEN), target)
    np.testing.assert_allclose(value.compute(), fl.mse_loss(x, y), **F64)


def test_quantile_array_q_along_the_chunked_last_axis():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4, 5))
    y = rng.normal(size=(6, 4))                      # one target per row
    q = np.array([0.1, 0.25, 0.5, 0.75, 0.9])
    for reduction in REDUCTIONS:
        check("quantile_loss", x, y, ((3, 3), (4,), (2, 3)), reduction=reduction, q=q)


def test_float32():
    rng = np.random.default_rng(3)
    x, y, kwargs = elementwise_case("log_cosh_loss", rng, np.float32)
    check("log_cosh_loss", x, y, UNEVEN, reduction="mean", tol=F32, **kwargs)
    logits = rng.normal(size=(9, 4)).astype(np.float32)
    check("cross_entropy", logits, rng.integers(0, 4, 9), ((4, 5), 4), reduction="mean",
          tol=F32)
    volume = rng.normal(size=(3, 2, 6, 4)).astype(np.float32)
    check("dice_loss", volume, rng.integers(0, 2, (3, 6, 4)), ((1, 2), 2, (2, 4), 4),
          reduction="mean", tol=F32, activation="softmax")


def test_empty_mean_is_nan_like_the_core():
    x = np.zeros((0, 3))
    value = fld.mse_loss(da.from_array(x, chunks=(1, 3)), x)
    assert np.isnan(value.compute()) and np.isnan(fl.mse_loss(x, x))


# ---- row-wise (multi-class) -------------------------------------------------------------

CE_SHAPE, CE_CHUNKS = (9, 4, 3, 2), ((2, 3, 4), 4, (1, 2), 2)


def labels(rng, shape, classes, ignore_index=None):
    y = rng.integers(0, classes, size=shape)
    if ignore_index is not None:
        y.reshape(-1)[::5] = ignore_index
    return y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", [
    dict(),
    dict(weight=np.array([0.5, 2.0, 1.0, 3.0]), ignore_index=1),
    dict(weight=np.array([0.5, 2.0, 1.0, 3.0]), ignore_index=-100, label_smoothing=0.2),
    dict(label_smoothing=0.1, z_loss=1e-3),
], ids=["plain", "weight-ignore", "weight-ignore-smoothing", "smoothing-z"])
def test_cross_entropy(options, reduction):
    rng = np.random.default_rng(4)
    x = rng.normal(size=CE_SHAPE)
    ignore = options.get("ignore_index")
    y = labels(rng, (9, 3, 2), 4, -100 if ignore == -100 else None)
    check("cross_entropy", x, y, CE_CHUNKS, reduction=reduction, **options)


def test_cross_entropy_probability_targets_and_all_ignored():
    rng = np.random.default_rng(5)
    x = rng.normal(size=CE_SHAPE)
    p = rng.random(CE_SHAPE)
    p /= p.sum(axis=1, keepdims=True)
    for reduction in REDUCTIONS:
        check("cross_entropy", x, p, CE_CHUNKS, reduction=reduction,
              weight=np.array([1.0, 2.0, 0.5, 1.5]))
    ignored = np.full((9, 3, 2), -100)
    check("cross_entropy", x, ignored, CE_CHUNKS, reduction="mean")      # nan, as the core


@pytest.mark.parametrize("loss,options", [
    ("nll_loss", dict(weight=np.array([0.5, 2.0, 1.0, 3.0]), ignore_index=2)),
    ("softmax_focal_loss", dict(alpha=np.array([0.2, 0.3, 0.4, 0.1]), gamma=1.5,
                                ignore_index=0)),
    ("multi_margin_loss", dict(p=2, margin=0.8, weight=np.array([0.5, 2.0, 1.0, 3.0]))),
    ("multiclass_hinge_loss", dict(margin=0.5)),
])
def test_other_rowwise_losses(loss, options):
    rng = np.random.default_rng(6)
    two_d = loss.startswith("multi")
    shape, chunks = ((10, 4), ((3, 3, 4), 4)) if two_d else (CE_SHAPE, CE_CHUNKS)
    x = rng.normal(size=shape)
    if loss == "nll_loss":
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    y = labels(rng, (shape[0],) + shape[2:], 4)
    for reduction in REDUCTIONS:
        check(loss, x, y, chunks, reduction=reduction, **options)


# ---- overlap ---------------------------------------------------------------------------

VOLUME, VOLUME_CHUNKS = (5, 3, 6, 5), ((2, 3), 3, (1, 3, 2), (2, 3))


def overlap_options(name):
    if name == "tversky_loss":
        return dict(alpha=0.3, beta=0.7, gamma=1.5, weight=[1.0, 2.0], ignore_empty=True)
    if name == "generalized_dice_loss":
        return dict(w_type="simple")
    return dict(squared_pred=True, weight=[1.0, 2.0], ignore_empty=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch", [False, True], ids=["per-sample", "batch"])
@pytest.mark.parametrize("loss", OVERLAP_LOSSES)
def test_overlap(loss, batch, reduction):
    rng = np.random.default_rng(7)
    x = rng.normal(size=VOLUME)
    y = labels(rng, (5, 6, 5), 3, 255)
    y[0] = np.where(y[0] == 2, 0, y[0])              # a class absent from a sample
    check(loss, x, y.astype(np.uint8), VOLUME_CHUNKS, reduction=reduction, batch=batch,
          activation="softmax", include_background=False, ignore_index=255,
          **overlap_options(loss))


@pytest.mark.parametrize("target", ["mask", "labels_n1", "sigmoid_c1"])
def test_overlap_target_layouts(target):
    rng = np.random.default_rng(8)
    x = rng.normal(size=VOLUME)
    if target == "mask":
        y = rng.random(VOLUME) < 0.4
        kwargs = dict(activation="sigmoid")
    elif target == "labels_n1":
        y = labels(rng, (5, 1, 6, 5), 3)
        kwargs = dict(activation="softmax")
    else:
        x = x[:, :1]
        y = labels(rng, (5, 6, 5), 2)
        kwargs = dict(activation="sigmoid")
    chunks = VOLUME_CHUNKS if target != "sigmoid_c1" else ((2, 3), 1, (1, 3, 2), (2, 3))
    for loss in ("dice_loss", "generalized_dice_loss"):
        for batch in (False, True):
            check(loss, x, y, chunks, reduction="mean", batch=batch, **kwargs)


def test_backend_is_passed_to_the_chunks():
    rng = np.random.default_rng(9)
    x = rng.normal(size=VOLUME)
    y = labels(rng, (5, 6, 5), 3)
    X = da.from_array(x, chunks=VOLUME_CHUNKS)
    want = fl.jaccard_loss(x, y, activation="softmax", return_grad=True, backend="numpy")
    got = fld.jaccard_loss(X, y, activation="softmax", return_grad=True, backend="numpy")
    with fl.use_backend("numpy"):            # taken when the graph is built
        in_block = fld.jaccard_loss(X, y, activation="softmax", return_grad=True)
    for result in (got, in_block):
        value, grad = compute(*result)
        np.testing.assert_allclose(value, want[0], **F64)
        np.testing.assert_allclose(grad, want[1], **F64)
    t = rng.normal(size=VOLUME)
    check("huber_loss", x, t, VOLUME_CHUNKS, reduction="mean", backend="numpy", delta=0.5)


def test_deterministic_and_lazy():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 3, 8))
    calls = []

    def counted(block):
        calls.append(1)
        return block

    X = da.from_array(x, chunks=(3, 3, 3)).map_blocks(counted, meta=np.empty((0, 0, 0)))
    y = labels(rng, (40, 8), 3)
    value, grad = fld.dice_loss(X, y, activation="softmax", batch=True, return_grad=True)
    assert not calls                         # building the graph computes nothing
    first = compute(value, grad)
    again = compute(value, grad)
    serial = dask.compute(value, grad, scheduler="synchronous")
    for other in (again, serial):
        assert first[0].tobytes() == other[0].tobytes()
        assert first[1].tobytes() == other[1].tobytes()


# ---- bad input ---------------------------------------------------------------------------

X4 = da.zeros((4, 3, 6), chunks=(2, 3, 3))
Y4 = np.zeros((4, 6), np.int64)


@pytest.mark.parametrize("loss,args,kwargs,error,words", [
    ("cross_entropy", (X4.rechunk({1: 1}), Y4), {}, ValueError,
     ["input", "class axis", "one chunk", "rechunk"]),
    ("dice_loss", (X4.rechunk({1: 2}), Y4), {}, ValueError, ["input", "class axis"]),
    ("cross_entropy", (X4, np.zeros((4, 5), np.int64)), {}, ValueError,
     ["target", "(4, 6)", "(4, 5)"]),
    ("dice_loss", (X4, np.zeros((4, 5), np.int64)), {}, ValueError, ["target", "(4, 5)"]),
    ("dice_loss", (X4, da.zeros((4, 6), chunks=(1, 6), dtype=np.int64)), {}, ValueError,
     ["target", "chunks", "rechunk"]),
    ("mse_loss", (X4, da.zeros((4, 3, 6), chunks=2)), {}, ValueError, ["target", "chunks"]),
    ("mse_loss", (X4, np.zeros((4, 3, 5))), {}, ValueError, ["target", "(4, 3, 5)"]),
    ("mse_loss", (X4, np.zeros((4, 3, 6))), dict(weight=np.ones(5)), ValueError,
     ["weight", "(5,)", "broadcast"]),
    ("mse_loss", (X4, np.zeros((4, 3, 6))), dict(weight=da.ones((3, 6), chunks=2)),
     ValueError, ["weight", "chunks"]),
    ("huber_loss", (X4, np.zeros((4, 3, 6))), dict(delta=-1.0), ValueError, ["delta"]),
    ("mse_loss", (X4, np.zeros((4, 3, 6))), dict(reduction="avg"), ValueError,
     ["reduction", "avg"]),
    ("mse_loss", (X4, np.zeros((4, 3, 6))), dict(return_grad="yes"), TypeError,
     ["return_grad"]),
    ("mse_loss", (X4, np.zeros((4, 3, 6))), dict(bogus=1), TypeError, ["mse_loss", "bogus"]),
    ("cross_entropy", (X4, Y4), dict(label_smoothing=2.0), ValueError, ["label_smoothing"]),
    ("dice_loss", (X4, Y4), dict(weight=[1.0, 2.0]), ValueError, ["weight", "3 values"]),
    ("dice_loss", (X4, Y4), dict(activation="relu"), ValueError, ["activation", "relu"]),
    ("tversky_loss", (X4, Y4), dict(gamma=0.0), ValueError, ["gamma"]),
    ("dice_loss", (np.zeros((4, 3, 6)), Y4), {}, TypeError, ["input", "dask array"]),
    ("dice_loss", (X4.astype(np.int32), Y4), {}, TypeError, ["input", "float32 or float64"]),
    ("dice_loss", (da.zeros((4, 6), chunks=2), Y4), {}, ValueError, ["input", "(N, C"]),
    ("mse_loss", (X4[X4[:, 0, 0] > -1], np.zeros((4, 3, 6))), {}, ValueError,
     ["input", "unknown", "compute_chunk_sizes"]),
])
def test_errors_when_the_graph_is_built(loss, args, kwargs, error, words):
    with pytest.raises(error) as info:
        getattr(fld, loss)(*args, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_value_errors_raise_from_compute():
    value = fld.dice_loss(X4, np.full((4, 6), 7), activation="softmax")
    with pytest.raises(ValueError, match="class index 7"):
        value.compute(scheduler="synchronous")


def test_signatures_follow_the_core():
    import inspect
    assert set(fld.LOSSES) == set(ELEMENTWISE_LOSSES) | set(OVERLAP_LOSSES) | set(
        fld.ROWWISE_MEANS)
    for name, fn in fld.LOSSES.items():
        core = inspect.signature(getattr(fl, name)).parameters
        params = inspect.signature(fn).parameters
        assert list(params) == list(core) + ["split_every"], name
        assert all(params[k].default == core[k].default for k in core), name
    assert fld.MEAN_BY_WEIGHT_SUM == {"mse_loss", "l1_loss"}


# ---- a distributed cluster ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.mark.timeout(120)
def test_local_cluster_two_processes(cluster_client):
    import distributed
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 3, 12, 10))
    y = labels(rng, (8, 12, 10), 3)
    X = da.from_array(x, chunks=(2, 3, 6, 5))             # 16 chunks, 8 per worker
    Y = da.from_array(y, chunks=(2, 6, 5))
    dice = fld.dice_loss(X, Y, activation="softmax", batch=True, return_grad=True)
    ce = fld.cross_entropy(X, Y, weight=np.array([0.5, 1.0, 2.0]), label_smoothing=0.1,
                           return_grad=True)
    with distributed.get_task_stream(cluster_client) as tasks:
        (dice_value, dice_grad), (ce_value, ce_grad) = cluster_client.compute(
            [dice, ce], sync=True)
    assert len({task["worker"] for task in tasks.data}) == 2     # both processes worked
    want = fl.dice_loss(x, y, activation="softmax", batch=True, return_grad=True)
    np.testing.assert_allclose(dice_value, want[0], **F64)
    np.testing.assert_allclose(dice_grad, want[1], **F64)
    want = fl.cross_entropy(x, y, weight=np.array([0.5, 1.0, 2.0]), label_smoothing=0.1,
                            return_grad=True)
    np.testing.assert_allclose(ce_value, want[0], **F64)
    np.testing.assert_allclose(ce_grad, want[1], **F64)
