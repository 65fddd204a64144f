"""The loss registry: one record per public loss, the one list of what the rest
of the package needs to know about it.

The family modules (``fastloss.losses.*``), ``fastloss.torch``, ``fastloss.dask``,
the CLI, the benchmarks and the tests read these records; the tables they used
to keep of their own (which losses divide a weighted mean by the weights, which
are losses of input - target, which kernels a loss runs) are derived from here.
``tests/test_registry.py`` checks every record against every backend's kernel
tables, the reference, the public API and the test and benchmark cases, so a
loss cannot lack a part silently.

Adding an elementwise loss touches its math (``csrc/elementwise_math.h`` and
its X-macro list, ``kernels/_math.py``), its reference (``fastloss/reference.py``),
its record here and its public function; nothing else.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

__all__ = ["LossRecord", "REGISTRY", "FAMILIES", "records", "MEAN_DIVISORS"]

#: the loop shapes, in the order of the README's catalogue
FAMILIES = ("elementwise", "multiclass", "overlap", "boxes", "pairwise")

#: what "mean" divides the summed loss by, per family
MEAN_DIVISORS = {
    # N elements; "weight_sum": sum(weight) when a weight is given (PyTorch's mse/l1)
    "elementwise": ("n", "weight_sum"),
    # "weight": the weights of the non-ignored targets (their count without a weight;
    # every row for probability targets); "valid": the non-ignored targets; "rows": rows
    "multiclass": ("weight", "valid", "rows"),
    # the (sample, class) ratios of MONAI's losses
    "overlap": ("ratios",),
    "boxes": ("n",),
    # "pairs": the pairs or rows the loss is defined over (pml, info-nce-pytorch); None:
    # pairwise_distances, which is not reduced
    "pairwise": ("pairs", None),
}


@dataclass(frozen=True)
class LossRecord:
    """Everything the package knows about one public loss but its code."""

    name: str                       # fastloss.<name>, fastloss.reference.<name>
    family: str                     # one of FAMILIES: its loop shape
    kernels: tuple[str, ...]        # its kernel names in the family's kernel tables,
                                    # the same on every backend (C, Numba CPU, CUDA)
    mean: str | None                # how "mean" divides: one of MEAN_DIVISORS[family]
    matches: str                    # the library function it matches (docstring departures)
    gradients: tuple[str, ...] = ("input",)   # the arguments return_grad differentiates
    of_difference: bool = False     # a loss of input - target: d/d target = -d/d input
    # value checks run on every call (elementwise)
    input_range: tuple[float, float] | None = None
    target_range: tuple[float, float] | None = None
    target_pm1: bool = False
    bench: bool = True              # has a benchmark case (a False here says why)

    # (cached: these are read on every call)
    @functools.cached_property
    def kernel(self) -> str:
        """The kernel, for families with one kernel per loss."""
        return self.kernels[0]

    @functools.cached_property
    def mean_by_weight_sum(self) -> bool:
        return self.mean == "weight_sum"

    @functools.cached_property
    def checks_values(self) -> bool:
        return bool(self.input_range or self.target_range or self.target_pm1)


def _elementwise(name, kernel, matches, **kw) -> LossRecord:
    return LossRecord(name, "elementwise", (kernel,), kw.pop("mean", "n"), matches, **kw)


_RECORDS = (
    # ---- elementwise: one value and derivative per element, then a reduction
    _elementwise("mse_loss", "mse", "torch.nn.functional.mse_loss", mean="weight_sum",
                 of_difference=True),
    _elementwise("l1_loss", "l1", "torch.nn.functional.l1_loss", mean="weight_sum",
                 of_difference=True),
    _elementwise("huber_loss", "huber", "torch.nn.functional.huber_loss", of_difference=True),
    _elementwise("smooth_l1_loss", "smooth_l1", "torch.nn.functional.smooth_l1_loss",
                 of_difference=True),
    _elementwise("log_cosh_loss", "log_cosh", "optax.log_cosh, Keras LogCosh",
                 of_difference=True),
    _elementwise("quantile_loss", "quantile", "Keras/TF-Addons pinball_loss",
                 of_difference=True),
    _elementwise("binary_cross_entropy", "bce", "torch.nn.functional.binary_cross_entropy",
                 input_range=(0.0, 1.0), target_range=(0.0, 1.0)),
    _elementwise("binary_cross_entropy_with_logits", "bce_logits",
                 "torch.nn.functional.binary_cross_entropy_with_logits"),
    _elementwise("sigmoid_focal_loss", "sigmoid_focal", "torchvision.ops.sigmoid_focal_loss"),
    _elementwise("hinge_loss", "hinge", "Keras Hinge, optax.hinge_loss", target_pm1=True),
    # ---- multiclass: one value per row of C class scores
    LossRecord("cross_entropy", "multiclass", ("cross_entropy", "cross_entropy_prob"),
               "weight", "torch.nn.functional.cross_entropy"),
    LossRecord("nll_loss", "multiclass", ("nll",), "weight", "torch.nn.functional.nll_loss"),
    LossRecord("softmax_focal_loss", "multiclass", ("softmax_focal",), "valid",
               "the softmax focal loss of Lin et al. (kornia focal_loss)"),
    LossRecord("multi_margin_loss", "multiclass", ("multi_margin",), "rows",
               "torch.nn.functional.multi_margin_loss"),
    LossRecord("multiclass_hinge_loss", "multiclass", ("crammer_singer",), "rows",
               "optax.multiclass_hinge_loss"),
    # ---- overlap: per-(sample, class) sums over a volume
    LossRecord("dice_loss", "overlap", ("overlap",), "ratios", "monai.losses.DiceLoss"),
    # (no benchmark case of its own: dice_loss's kernel and pass, with another finish)
    LossRecord("jaccard_loss", "overlap", ("overlap",), "ratios",
               "monai.losses.DiceLoss(jaccard=True)", bench=False),
    LossRecord("tversky_loss", "overlap", ("overlap",), "ratios", "monai.losses.TverskyLoss"),
    LossRecord("generalized_dice_loss", "overlap", ("overlap",), "ratios",
               "monai.losses.GeneralizedDiceLoss"),
    # ---- boxes: one value per pair of boxes
    LossRecord("generalized_box_iou_loss", "boxes", ("giou",), "n",
               "torchvision.ops.generalized_box_iou_loss", gradients=("boxes1",)),
    LossRecord("distance_box_iou_loss", "boxes", ("diou",), "n",
               "torchvision.ops.distance_box_iou_loss", gradients=("boxes1",)),
    LossRecord("complete_box_iou_loss", "boxes", ("ciou",), "n",
               "torchvision.ops.complete_box_iou_loss", gradients=("boxes1",)),
    # ---- pairwise: tiles of a distance or similarity matrix
    # (not a loss: the matrix itself, benchmarked through the losses' tiles)
    LossRecord("pairwise_distances", "pairwise", ("pair_matrix",), None,
               "torch.cdist / sklearn pairwise_distances", gradients=(), bench=False),
    LossRecord("contrastive_loss", "pairwise",
               ("pair_contrastive_stats", "pair_contrastive_grad"), "pairs",
               "pytorch_metric_learning.losses.ContrastiveLoss", gradients=("embeddings",)),
    LossRecord("triplet_margin_loss", "pairwise", ("triplet_rows",), "pairs",
               "torch.nn.functional.triplet_margin_loss",
               gradients=("anchor", "positive", "negative")),
    LossRecord("batch_hard_triplet_loss", "pairwise", ("pair_hardest",), "pairs",
               "pytorch_metric_learning TripletMarginLoss with BatchHardMiner",
               gradients=("embeddings",)),
    LossRecord("info_nce_loss", "pairwise",
               ("pair_lse", "pair_softmax_product", "info_nce_paired"), "pairs",
               "info_nce.info_nce", gradients=("query", "positive_key", "negative_keys")),
    LossRecord("nt_xent_loss", "pairwise", ("pair_lse", "pair_softmax_product"), "pairs",
               "pytorch_metric_learning.losses.NTXentLoss", gradients=("z1", "z2")),
)

#: public name -> its record, in catalogue order
REGISTRY: dict[str, LossRecord] = {r.name: r for r in _RECORDS}


def records(family: str) -> Iterator[LossRecord]:
    """The records of one family, in catalogue order."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    return (r for r in _RECORDS if r.family == family)
