"""fastloss.torch: every loss as an autograd function and a module, against the
library it stands in for (values and gradients by torch autograd through that
library's own code), torch.autograd.gradcheck in float64, and the adapter's
contracts (kept gradients scaled by grad_output, retain_graph, no copies)."""
import inspect
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastloss as fl  # noqa: E402
import fastloss.torch as ft  # noqa: E402
from fastloss import testing  # noqa: E402
from fastloss.torch import functional as F  # noqa: E402

TF = torch.nn.functional
REDUCTIONS = ("mean", "sum", "none")
NEGATED_TARGET = {"mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss",
                  "quantile_loss"}


def leaf(array, grad=True):
    return torch.tensor(np.asarray(array), dtype=torch.float64, requires_grad=grad)


def grads_of(value, tensors, grad_output=None):
    if grad_output is None:
        grad_output = torch.ones_like(value)
    return torch.autograd.grad(value, tensors, grad_output)


def assert_same(ours, theirs, rtol=1e-10, atol=1e-12):
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,),
                    theirs if isinstance(theirs, tuple) else (theirs,)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol,
                                   atol=atol)


def random_like(value, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(value.shape, generator=gen, dtype=value.dtype) + 0.5


# ---- elementwise: fastloss.testing's torch formulas (torch.nn.functional's, written
#      out where torch has no such loss) -----------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(testing.CASES))
def test_elementwise_against_torch(name, reduction):
    case = testing.CASES[name]
    x, y = testing.make_inputs(case, (6, 5), np.float64, seed=3)
    wants_target = name in NEGATED_TARGET
    xt, yt = leaf(x), leaf(y, grad=wants_target)
    ours = getattr(F, name)(xt, yt, reduction=reduction, **case.params)
    theirs = case.torch_fn(xt, yt, None, reduction, **case.params)
    assert_same(ours, theirs)
    leaves = (xt, yt) if wants_target else (xt,)
    g = random_like(ours)      # every elementwise entry depends on its own element only
    assert_same(grads_of(ours, leaves, g), grads_of(theirs, leaves, g))


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
def test_elementwise_weight_as_torch(name):
    x, y = testing.make_inputs(name, (4, 3), np.float64)
    w = torch.rand(4, 1, dtype=torch.float64) + 0.1
    for reduction in REDUCTIONS:
        xt = leaf(x)
        ours = getattr(F, name)(xt, leaf(y, False), reduction=reduction, weight=w)
        xr = leaf(x)
        theirs = getattr(TF, name)(xr, leaf(y, False), reduction=reduction,
                                   weight=w.expand(4, 3))
        assert_same(ours, theirs)
        assert_same(grads_of(ours, (xt,)), grads_of(theirs, (xr,)))


def test_bce_with_logits_pos_weight_and_modules():
    x, y = testing.make_inputs("binary_cross_entropy_with_logits", (5, 3), np.float64)
    pw, w = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64), torch.rand(5, 3,
                                                                        dtype=torch.float64)
    xt, xr = leaf(x), leaf(x)
    ours = ft.BCEWithLogitsLoss(weight=w, pos_weight=pw)(xt, leaf(y, False))
    theirs = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw)(xr, leaf(y, False))
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (xt,)), grads_of(theirs, (xr,)))
    p, t = testing.make_inputs("binary_cross_entropy", (5, 3), np.float64)
    pt, pr = leaf(p), leaf(p)
    ours, theirs = ft.BCELoss(weight=w)(pt, leaf(t, False)), torch.nn.BCELoss(weight=w)(
        pr, leaf(t, False))
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (pt,)), grads_of(theirs, (pr,)))


# ---- multi-class ----------------------------------------------------------------------

def _logits(shape=(7, 5), seed=0):
    rng = np.random.default_rng(seed)
    return 2.0 * rng.standard_normal(shape), rng.integers(0, shape[1], (shape[0],) + shape[2:])


MULTICLASS = [
    ("cross_entropy", {}),
    ("cross_entropy", {"weight": "w", "ignore_index": 2, "label_smoothing": 0.2}),
    ("nll_loss", {"weight": "w"}),
    ("multi_margin_loss", {"p": 2, "margin": 0.7, "weight": "w"}),
]


@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 2, 3)], ids=["2d", "4d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,params", MULTICLASS, ids=lambda v: str(v))
def test_multiclass_against_torch(name, params, reduction, shape):
    if name == "multi_margin_loss" and len(shape) > 2:
        pytest.skip("multi_margin_loss takes (N, C) as in PyTorch")
    x, y = _logits(shape)
    if name == "nll_loss":
        x = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    params = {k: (torch.rand(shape[1], dtype=torch.float64) + 0.2 if v == "w" else v)
              for k, v in params.items()}
    xt, xr, yt = leaf(x), leaf(x), torch.from_numpy(y)
    ours = getattr(F, name)(xt, yt, reduction=reduction, **params)
    theirs = getattr(TF, name)(xr, yt, reduction=reduction, **params)
    assert_same(ours, theirs)
    g = random_like(ours)
    assert_same(grads_of(ours, (xt,), g), grads_of(theirs, (xr,), g))


@pytest.mark.parametrize("name", ["softmax_focal_loss", "multiclass_hinge_loss"])
def test_multiclass_fastloss_only_against_written_torch(name):
    x, y = _logits()
    xt, xr, yt = leaf(x), leaf(x), torch.from_numpy(y)
    ref = {"softmax_focal_loss": testing._t_softmax_focal,
           "multiclass_hinge_loss": testing._t_crammer_singer}[name]
    ours, theirs = getattr(F, name)(xt, yt), ref(xr, yt)
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (xt,)), grads_of(theirs, (xr,)))


def test_cross_entropy_probability_targets_and_module():
    x, _ = _logits()
    p = np.random.default_rng(4).dirichlet(np.ones(5), 7)
    xt, xr = leaf(x), leaf(x)
    ours = ft.CrossEntropyLoss(label_smoothing=0.1)(xt, leaf(p, False))
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(xr, leaf(p, False))
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (xt,)), grads_of(theirs, (xr,)))


# ---- overlap: MONAI's modules -----------------------------------------------------------


OVERLAP = [
    ("DiceLoss", dict(softmax=True, to_onehot_y=True)),
    ("DiceLoss", dict(sigmoid=True, to_onehot_y=True, include_background=False,
                      squared_pred=True, batch=True)),
    ("DiceLoss", dict(softmax=True, to_onehot_y=True, jaccard=True, weight=[1.0, 2.0, 0.5])),
    ("DiceLoss", dict(sigmoid=True, weight=2.0)),
    ("TverskyLoss", dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)),
    ("TverskyLoss", dict(sigmoid=True, to_onehot_y=True, include_background=False,
                         batch=True)),
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True)),
    ("GeneralizedDiceLoss", dict(sigmoid=True, to_onehot_y=True, w_type="simple",
                                 batch=True)),
    ("DiceLoss", dict(other_act=torch.tanh, to_onehot_y=True)),
]


def _segmentation(seed=0, mask=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 4, 5))
    labels = rng.integers(0, 3, (2, 1, 4, 5))
    if mask:
        return x, (rng.random((2, 3, 4, 5)) < 0.4).astype(np.float64)
    return x, labels


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cls,kwargs", OVERLAP, ids=[f"{cls}-{i}" for i, (cls, _) in
                                                     enumerate(OVERLAP)])
def test_overlap_modules_against_monai(cls, kwargs, reduction):
    monai = pytest.importorskip("monai.losses")
    x, target = _segmentation(mask=not kwargs.get("to_onehot_y"))
    target = torch.from_numpy(target)
    xt, xr = leaf(x), leaf(x)
    ours = getattr(ft, cls)(reduction=reduction, **kwargs)(xt, target)
    theirs = getattr(monai, cls)(reduction=reduction, **kwargs)(xr, target)
    assert ours.shape == theirs.shape      # MONAI's "none" shape, spatial axes kept as 1
    assert_same(ours, theirs.to(torch.float64), rtol=1e-9)
    separable = kwargs.get("softmax") is None or reduction != "none"
    g = random_like(ours) if separable else torch.ones_like(ours)
    # MONAI computes the generalized Dice's class weights in float32 (ground_o.float())
    rtol = 1e-6 if cls == "GeneralizedDiceLoss" else 1e-8
    assert_same(grads_of(ours, (xt,), g), grads_of(theirs, (xr,), g), rtol=rtol, atol=1e-11)


def test_overlap_softmax_none_needs_equal_grad_output_per_sample():
    x, target = _segmentation()
    xt = leaf(x)
    value = ft.DiceLoss(softmax=True, to_onehot_y=True, reduction="none")(xt,
                                                                          torch.from_numpy(target))
    per_sample = torch.tensor([1.0, 3.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    (grad,) = grads_of(value, (xt,), per_sample.expand_as(value))   # one weight per sample: fine
    xr = leaf(x)
    ref = ft.DiceLoss(softmax=True, to_onehot_y=True, reduction="none")(xr,
                                                                        torch.from_numpy(target))
    assert_same(grad, grads_of((ref * per_sample).sum(), (xr,))[0])
    value = ft.DiceLoss(softmax=True, to_onehot_y=True, reduction="none")(xt,
                                                                          torch.from_numpy(target))
    with pytest.raises(RuntimeError, match="equal grad_output entries across the classes"):
        grads_of(value, (xt,), random_like(value))


def test_overlap_functional_matches_core():
    x, target = _segmentation()
    xt = leaf(x)
    value = F.tversky_loss(xt, torch.from_numpy(target[:, 0]), activation="softmax", gamma=0.75)
    core_value, core_grad = fl.tversky_loss(x, target[:, 0], activation="softmax", gamma=0.75,
                                            return_grad=True)
    np.testing.assert_allclose(value.item(), core_value, rtol=1e-12)
    np.testing.assert_allclose(grads_of(value, (xt,))[0].numpy(), core_grad, rtol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigmoid=True, softmax=True), "at most one"),
    (dict(soft_label=True), "soft_label"),
])
def test_overlap_module_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ft.DiceLoss(**kwargs)


def test_overlap_target_shape_errors():
    x, labels = _segmentation()
    with pytest.raises(ValueError, match="to_onehot_y=True"):
        ft.DiceLoss(softmax=True)(leaf(x), torch.from_numpy(labels))
    with pytest.raises(ValueError, match=r"target: with to_onehot_y=True"):
        ft.DiceLoss(softmax=True, to_onehot_y=True)(leaf(x), torch.from_numpy(labels[:, 0]))


# ---- boxes: torchvision's formulas, default reduction "none" ------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", testing.BOX_LOSS_NAMES)
def test_box_losses_against_torchvision_formulas(name, reduction):
    b1, b2 = testing.make_boxes(9, np.float64, seed=2)
    bt, br = leaf(b1), leaf(b1)
    ours = getattr(F, name)(bt, leaf(b2, False), reduction=reduction)
    per_box = testing.torchvision_box_loss(name, br, leaf(b2, False))
    theirs = {"none": per_box, "sum": per_box.sum(), "mean": per_box.mean()}[reduction]
    assert_same(ours, theirs, rtol=1e-9)
    g = random_like(ours)
    assert_same(grads_of(ours, (bt,), g), grads_of(theirs, (br,), g), rtol=1e-8, atol=1e-11)
    assert getattr(F, name)(bt, leaf(b2, False)).shape == (9,)     # torchvision's default


def test_box_modules_default_to_none():
    b1, b2 = testing.make_boxes(4, np.float64)
    for cls in (ft.GeneralizedBoxIoULoss, ft.DistanceBoxIoULoss, ft.CompleteBoxIoULoss):
        assert cls()(leaf(b1), leaf(b2, False)).shape == (4,)


# ---- pairwise ----------------------------------------------------------------------------

def _embeddings(n=6, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("swap", [False, True])
def test_triplet_against_torch(swap, reduction):
    a, p, n = (_embeddings(seed=s) for s in range(3))
    ours_leaves, their_leaves = [leaf(v) for v in (a, p, n)], [leaf(v) for v in (a, p, n)]
    ours = ft.TripletMarginLoss(margin=0.5, swap=swap, reduction=reduction)(*ours_leaves)
    theirs = torch.nn.TripletMarginLoss(margin=0.5, swap=swap, reduction=reduction)(
        *their_leaves)
    assert_same(ours, theirs)
    g = random_like(ours)
    assert_same(grads_of(ours, ours_leaves, g), grads_of(theirs, their_leaves, g))


def test_contrastive_and_ntxent_against_pml():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    e = _embeddings(8)
    labels = torch.tensor([0, 1, 0, 2, 1, 2, 0, 3])
    et, er = leaf(e), leaf(e)
    ours, theirs = ft.ContrastiveLoss()(et, labels), pml.ContrastiveLoss()(er, labels)
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (et,)), grads_of(theirs, (er,)))
    pairs = torch.tensor([3, 0, 1, 2, 0, 3, 2, 1])           # each label twice, any order
    et, er = leaf(e), leaf(e)
    ours, theirs = ft.NTXentLoss()(et, pairs), pml.NTXentLoss()(er, pairs)
    assert_same(ours, theirs)
    assert_same(grads_of(ours, (et,)), grads_of(theirs, (er,)))
    et = leaf(e)
    halves = ft.NTXentLoss(temperature=0.2)(et)
    assert_same(halves, F.nt_xent_loss(leaf(e[:4]), leaf(e[4:]), temperature=0.2))


def test_ntxent_labels_must_pair_rows():
    with pytest.raises(ValueError, match="exactly twice"):
        ft.NTXentLoss()(leaf(_embeddings(6)), torch.tensor([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="even number"):
        ft.NTXentLoss()(leaf(_embeddings(5)))


@pytest.mark.parametrize("mode", ["in-batch", "unpaired", "paired"])
def test_info_nce_against_info_nce_pytorch(mode):
    info_nce = pytest.importorskip("info_nce")
    q, k = _embeddings(5, 4, 0), _embeddings(5, 4, 1)
    negatives = {"in-batch": None, "unpaired": _embeddings(7, 4, 2),
                 "paired": np.random.default_rng(3).standard_normal((5, 3, 4))}[mode]
    negative_mode = "paired" if mode == "paired" else "unpaired"
    ours_leaves = [leaf(v) for v in (q, k, negatives) if v is not None]
    their_leaves = [leaf(v) for v in (q, k, negatives) if v is not None]
    ours = ft.InfoNCE(temperature=0.3, negative_mode=negative_mode)(*ours_leaves)
    theirs = info_nce.InfoNCE(temperature=0.3, negative_mode=negative_mode)(*their_leaves)
    assert_same(ours, theirs)
    assert_same(grads_of(ours, ours_leaves), grads_of(theirs, their_leaves))


def test_batch_hard_matches_core_reference():
    e, labels = _embeddings(8), np.array([0, 1, 0, 2, 1, 2, 0, 2])
    et = leaf(e)
    value = ft.BatchHardTripletLoss(margin=0.3, soft=True)(et, torch.from_numpy(labels))
    ref_value, ref_grad = fl.batch_hard_triplet_loss(e, labels, margin=0.3, soft=True,
                                                     return_grad=True, backend="numpy")
    np.testing.assert_allclose(value.item(), ref_value, rtol=1e-10)
    np.testing.assert_allclose(grads_of(value, (et,))[0].numpy(), ref_grad, rtol=1e-9,
                               atol=1e-12)


def test_pair_losses_none_need_equal_grad_output():
    e, labels = leaf(_embeddings(6)), torch.tensor([0, 1, 0, 1, 2, 2])
    value = F.contrastive_loss(e, labels, reduction="none")
    (sum_grad,) = grads_of(value, (e,))                    # equal entries: the sum's gradient
    (ref,) = grads_of(F.contrastive_loss(e, labels, reduction="sum"), (e,))
    assert_same(sum_grad, ref)
    value = F.contrastive_loss(e, labels, reduction="none")
    with pytest.raises(RuntimeError, match="needs a grad_output with equal entries"):
        grads_of(value, (e,), random_like(value))


# ---- gradcheck: every loss in float64 -------------------------------------------------------

def _gradcheck_cases():
    rng = np.random.default_rng(7)
    cases = []
    for name, case in testing.CASES.items():
        x, y = testing.make_inputs(case, (3, 2), np.float64, seed=5)
        if name in ("l1_loss", "quantile_loss", "hinge_loss", "smooth_l1_loss", "huber_loss"):
            x = y + np.where(rng.random(x.shape) < 0.5, -1.0, 1.0) * rng.uniform(0.2, 0.8,
                                                                                 x.shape)
            if name == "hinge_loss":
                x = y * rng.uniform(0.2, 0.8, x.shape) * np.where(rng.random(x.shape) < 0.5,
                                                                 -1, 2)
        for reduction in ("mean", "none"):
            cases.append((f"{name}-{reduction}", getattr(F, name),
                          (leaf(x), leaf(y, name in NEGATED_TARGET)),
                          dict(case.params, reduction=reduction)))
    x, y = _logits((4, 3))
    yt = torch.from_numpy(y)
    for name, kwargs in [("cross_entropy", dict(label_smoothing=0.1)), ("nll_loss", {}),
                         ("softmax_focal_loss", {}), ("multi_margin_loss", dict(p=2)),
                         ("multiclass_hinge_loss", {})]:
        for reduction in ("mean", "none"):
            cases.append((f"{name}-{reduction}", getattr(F, name), (leaf(x), yt),
                          dict(kwargs, reduction=reduction)))
    seg, labels = _segmentation()
    for name, kwargs in [("dice_loss", dict(activation="softmax")),
                         ("jaccard_loss", dict(activation="sigmoid", reduction="none")),
                         ("tversky_loss", dict(activation="softmax", gamma=1.5, alpha=0.3)),
                         ("generalized_dice_loss", dict(activation="sigmoid",
                                                        reduction="none"))]:
        cases.append((name, getattr(F, name), (leaf(seg), torch.from_numpy(labels)), kwargs))
    b1, b2 = testing.make_boxes(4, np.float64, seed=1)
    # not complete_box_iou_loss: its gradient is torchvision's, which holds CIoU's alpha
    # constant (computed under no_grad), so it is not the derivative gradcheck measures;
    # test_box_losses_against_torchvision_formulas checks it against torchvision's autograd
    for name in ("generalized_box_iou_loss", "distance_box_iou_loss"):
        cases.append((name, getattr(F, name), (leaf(b1), leaf(b2, False)), {}))
    a, p, n = (_embeddings(4, 3, s) for s in range(3))
    lab = torch.tensor([0, 1, 0, 1])
    cases += [
        ("triplet_margin_loss-none", F.triplet_margin_loss, (leaf(a), leaf(p), leaf(n)),
         dict(reduction="none", swap=True)),
        ("contrastive_loss", F.contrastive_loss, (leaf(a), lab), dict(neg_margin=1.5)),
        ("batch_hard_triplet_loss", F.batch_hard_triplet_loss, (leaf(a), lab),
         dict(soft=True)),
        ("info_nce_loss", F.info_nce_loss, (leaf(a), leaf(p), leaf(n)), {}),
        ("nt_xent_loss", F.nt_xent_loss, (leaf(a), leaf(p)), {}),
    ]
    return cases


GRADCHECK = _gradcheck_cases()


@pytest.mark.parametrize("label,fn,args,kwargs", GRADCHECK, ids=[c[0] for c in GRADCHECK])
def test_gradcheck(label, fn, args, kwargs):
    assert torch.autograd.gradcheck(lambda *a: fn(*a, **kwargs), args, eps=1e-6, atol=1e-6)


def test_every_core_loss_has_a_function():
    public = {n for n in fl.__all__ if n.endswith("_loss") or n in (
        "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy")}
    missing = public - set(F.__all__)
    assert not missing
    covered = {label.split("-")[0] for label, *_ in GRADCHECK}
    assert public - covered == {"complete_box_iou_loss"}   # see _gradcheck_cases


# ---- the adapter's contracts ------------------------------------------------------------------

def test_backward_twice_with_retain_graph_and_grad_output_scaling():
    x, y = testing.make_inputs("log_cosh_loss", (5, 4), np.float64)
    xt = leaf(x)
    value = F.log_cosh_loss(xt, leaf(y, False))
    (3.0 * value).backward(retain_graph=True)
    first = xt.grad.clone()
    value.backward()
    _, core_grad = fl.log_cosh_loss(x, y, return_grad=True)
    np.testing.assert_allclose(first.numpy(), 3.0 * core_grad, rtol=1e-13)
    np.testing.assert_allclose(xt.grad.numpy(), 4.0 * core_grad, rtol=1e-13)


def test_plain_backward_returns_the_kept_gradient_safely():
    """loss.backward() (grad_output 1) hands autograd the kept gradient itself: two
    backward passes, a second loss on the same leaf and a non-leaf input must all
    still see the right, unchanged values."""
    x, y = testing.make_inputs("mse_loss", (5, 4), np.float64)
    _, g = fl.mse_loss(x, y, return_grad=True)
    xt = leaf(x)
    value = F.mse_loss(xt, leaf(y, False))
    value.backward(retain_graph=True)
    value.backward(retain_graph=True)
    F.mse_loss(xt, leaf(y, False)).backward()
    np.testing.assert_allclose(xt.grad.numpy(), 3 * g, rtol=1e-13)
    value.backward()
    np.testing.assert_allclose(xt.grad.numpy(), 4 * g, rtol=1e-13)
    w = leaf(x)
    (F.mse_loss(w * 2.0, leaf(y, False)) + F.mse_loss(w * 2.0, leaf(y, False))).backward()
    _, g2 = fl.mse_loss(2.0 * x, y, return_grad=True)
    np.testing.assert_allclose(w.grad.numpy(), 4 * g2, rtol=1e-13)


def test_forward_without_backward_and_under_no_grad():
    x, y = testing.make_inputs("mse_loss", (5, 4), np.float64)
    assert F.mse_loss(leaf(x), leaf(y)).grad_fn is not None
    with torch.no_grad():
        value = F.mse_loss(leaf(x), leaf(y))
    assert value.grad_fn is None and value.item() == pytest.approx(fl.mse_loss(x, y))


def test_inputs_are_not_modified_and_cpu_tensors_are_not_copied(monkeypatch):
    x, y = testing.make_inputs("huber_loss", (64, 8), np.float64)
    xt, yt = leaf(x), leaf(y, False)
    seen = []
    original = fl.huber_loss

    def spy(input, target, **kwargs):
        seen.append((np.asarray(input).ctypes.data, np.asarray(target).ctypes.data))
        return original(input, target, **kwargs)

    monkeypatch.setattr(F._fl, "huber_loss", spy)
    value = F.huber_loss(xt, yt, delta=0.5)
    value.backward()
    assert seen == [(xt.data_ptr(), yt.data_ptr())]
    np.testing.assert_array_equal(xt.detach().numpy(), x)
    np.testing.assert_array_equal(yt.numpy(), y)


@pytest.mark.parametrize("make_call,match", [
    (lambda x: F.binary_cross_entropy(torch.sigmoid(x.detach()), leaf(np.full((2, 2), 0.5))),
     "target: requires grad"),
    (lambda x: F.mse_loss(x, x.detach(), weight=leaf(np.ones(2))), "weight: requires grad"),
    (lambda x: F.generalized_box_iou_loss(leaf([[0, 0, 1, 1.]]), leaf([[0, 0, 2, 2.]])),
     "boxes2: requires grad"),
])
def test_missing_gradients_raise(make_call, match):
    with pytest.raises(ValueError, match=match):
        make_call(leaf(np.zeros((2, 2))))


# ---- signatures: the names and defaults PyTorch users type -----------------------------------

def _defaults(callable_):
    return {name: p.default for name, p in inspect.signature(callable_).parameters.items()
            if p.kind is not p.KEYWORD_ONLY}


TORCH_FUNCTIONS = ["mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss",
                   "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
                   "nll_loss", "multi_margin_loss", "triplet_margin_loss"]
TORCH_MODULES = ["MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "BCELoss",
                 "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss", "MultiMarginLoss",
                 "TripletMarginLoss"]


@pytest.mark.parametrize("name", TORCH_FUNCTIONS)
def test_functional_signature_as_torch(name):
    assert _defaults(getattr(F, name)) == _defaults(getattr(TF, name))


@pytest.mark.parametrize("name", TORCH_MODULES)
def test_module_signature_as_torch(name):
    assert _defaults(getattr(ft, name)) == _defaults(getattr(torch.nn, name))


@pytest.mark.parametrize("name", ["DiceLoss", "TverskyLoss", "GeneralizedDiceLoss"])
def test_module_signature_as_monai(name):
    monai = pytest.importorskip("monai.losses")
    ours, theirs = _defaults(getattr(ft, name)), _defaults(getattr(monai, name))
    assert list(ours) == list(theirs)
    assert all(ours[k] == theirs[k] or str(ours[k]) == str(theirs[k]) for k in ours)


def test_torchvision_pml_and_info_nce_defaults():
    assert _defaults(F.sigmoid_focal_loss) == {"inputs": inspect.Parameter.empty,
                                               "targets": inspect.Parameter.empty,
                                               "alpha": 0.25, "gamma": 2, "reduction": "none"}
    for name in testing.BOX_LOSS_NAMES:
        assert _defaults(getattr(F, name))["reduction"] == "none"
        assert _defaults(getattr(F, name))["eps"] == 1e-7
    assert ft.NTXentLoss().options()["temperature"] == 0.07
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    ours = ft.ContrastiveLoss().options()
    theirs = pml.ContrastiveLoss()
    assert (ours["pos_margin"], ours["neg_margin"]) == (theirs.pos_margin, theirs.neg_margin)
    assert _defaults(ft.InfoNCE) == {"temperature": 0.1, "reduction": "mean",
                                     "negative_mode": "unpaired"}


def test_module_weight_is_a_buffer():
    module = ft.CrossEntropyLoss(weight=torch.ones(3))
    assert "weight" in dict(module.named_buffers())
    assert module.to(torch.float64).weight.dtype == torch.float64


# ---- the core API on tensors: same type out as in ------------------------------------------

def test_core_api_returns_tensors_for_tensors():
    x, y = (torch.from_numpy(a) for a in testing.make_inputs("mse_loss", (4, 3), np.float64))
    value, grad = fl.mse_loss(x, y, return_grad=True)
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert isinstance(grad, torch.Tensor) and grad.shape == x.shape
    value, (g1, g2) = fl.nt_xent_loss(x, y, return_grad=True)
    assert all(isinstance(v, torch.Tensor) for v in (value, g1, g2))
    assert isinstance(fl.cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction="none"),
                      torch.Tensor)
    with pytest.raises(TypeError, match="input: a tensor that requires grad.*fastloss.torch"):
        fl.mse_loss(x.clone().requires_grad_(), y)


def test_import_fastloss_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, fastloss as fl\n"
            "print(fl.mse_loss(np.ones(3), np.zeros(3)))\n"
            "try:\n    import fastloss.torch\nexcept ImportError as e:\n    print('ImportError', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[0] == "1.0"
    assert "fastloss.torch needs PyTorch" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_the_device():
    x, y = testing.make_inputs("mse_loss", (64, 8), np.float32)
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    value = F.mse_loss(xt, torch.tensor(y, device="cuda"))
    assert value.device.type == "cuda"
    value.backward()
    _, ref = fl.mse_loss(x, y, return_grad=True)
    np.testing.assert_allclose(xt.grad.cpu().numpy(), ref, rtol=1e-5, atol=1e-7)


# ---- defects found by a hostile user (issue 17) -------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_quantile_row_target_gets_its_gradient(reduction):
    """A target of shape input.shape[:-1] (one per row, against every quantile) gets
    a gradient of its own shape: the input's, negated and summed over the row."""
    rng = np.random.default_rng(8)
    x, y = leaf(rng.standard_normal((4, 3))), leaf(rng.standard_normal(4))
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: F.quantile_loss(a, b, q=q,
                                                                 reduction=reduction), (x, y))
    value = F.quantile_loss(x, y, q=q, reduction=reduction)
    gx, gy = grads_of(value, (x, y), random_like(value))
    assert gy.shape == y.shape
    wide = leaf(y.detach().numpy()[:, None].repeat(3, 1))
    (g_wide,) = grads_of(F.quantile_loss(x, wide, q=q, reduction=reduction), (wide,),
                         random_like(value))
    assert_same(gy, g_wide.sum(1))


def test_a_hook_that_changes_its_gradient_in_place_is_harmless():
    """loss.backward() hands autograd the kept gradient without a copy; a hook may
    then change it in place, so the next backward (retain_graph) must not see that."""
    x, y = testing.make_inputs("mse_loss", (5, 4), np.float64)
    grads = []
    for mse_loss in (F.mse_loss, TF.mse_loss):
        xt = leaf(x)
        xt.register_hook(lambda g: g.mul_(2))
        value = mse_loss(xt, leaf(y, False))
        value.backward(retain_graph=True)
        value.backward(retain_graph=True)
        (3.0 * value).backward()
        grads.append(xt.grad)
    assert_same(grads[0], grads[1])


def test_monai_style_weight_is_monais_buffer():
    """DiceLoss's weight is the buffer class_weight, as in MONAI: in state_dict(),
    loaded both ways with strict=True, following .to()."""
    monai_losses = pytest.importorskip("monai.losses")
    ours = ft.DiceLoss(softmax=True, to_onehot_y=True, weight=[1.0, 2.0, 3.0])
    theirs = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, weight=[3.0, 1.0, 0.5])
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["class_weight"]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x, y), theirs(x, y), rtol=1e-5, atol=1e-6)
    theirs.load_state_dict(ft.DiceLoss(weight=[1.0, 1.0, 2.0]).state_dict(), strict=True)
    assert ours.to(torch.float64).class_weight.dtype == torch.float64
    assert list(ft.DiceLoss().state_dict()) == list(monai_losses.DiceLoss().state_dict()) == []
