"""The loss registry is complete: every public loss has a record, and every record
has every part on every backend (kernels in the C tables, the Numba CPU and CUDA
kernel tables, the reference), its public function and adapter, and its test and
benchmark cases.  Nothing falls back silently, and no table drifts from it."""
import importlib
import inspect

import pytest

import fastloss as fl
from fastloss import reference
from fastloss._registry import FAMILIES, MEAN_DIVISORS, REGISTRY, records

from conftest import available

#: public functions of the core API that are not losses (and so have no record)
NOT_LOSSES = {"dice_stats", "dice_from_stats", "dice_grad", "backends", "use_backend",
              "BackendInfo", "BackendUnavailable", "set_num_threads", "get_num_threads", "isa",
              "set_isa", "reference", "__version__"}


def test_every_public_loss_has_one_record():
    assert set(fl.__all__) - NOT_LOSSES == set(REGISTRY)
    assert list(REGISTRY) == [n for f in FAMILIES for n in (r.name for r in records(f))]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_record_is_consistent(name):
    record = REGISTRY[name]
    assert record.family in FAMILIES
    assert record.mean in MEAN_DIVISORS[record.family], record.mean
    assert record.kernels and all(isinstance(k, str) for k in record.kernels)
    assert callable(getattr(fl, name)) and callable(getattr(reference, name))
    parameters = inspect.signature(getattr(fl, name)).parameters
    assert set(record.gradients) <= set(parameters), (record.gradients, list(parameters))
    assert "reduction" in parameters or record.mean is None
    # a loss of input - target and the value checks are elementwise notions
    if record.family != "elementwise":
        assert not (record.of_difference or record.checks_values)


def _kernel_tables():
    """family -> {backend: the kernel names that backend has}."""
    from fastloss.kernels import _boxmath, _math
    tables = {   # (the Numba row kernels have no table: test_numba_row_kernels_exist)
        "elementwise": {"numba": set(_math.LOSSES), "cuda": set(_math.LOSSES)},
        "multiclass": {},
        "boxes": {"numba": set(_boxmath.LOSSES), "cuda": set(_boxmath.LOSSES)},
    }
    if available("c"):
        from fastloss.kernels import native
        tables["elementwise"]["c"] = set(native._LOSS_IDS)
        tables["multiclass"]["c"] = set(native._ROW_IDS)
        tables["boxes"]["c"] = set(native._BOX_IDS)
    return tables


@pytest.mark.parametrize("family", ["elementwise", "multiclass", "boxes"])
def test_kernel_tables_equal_the_registry(family):
    """The C X-macro tables and the Numba math tables list exactly the registry's
    kernels of the family: a kernel missing on a backend, or one no loss uses, fails."""
    want = {k for r in records(family) for k in r.kernels}
    for backend, have in _kernel_tables()[family].items():
        assert have == want, (family, backend)


@pytest.mark.parametrize("kernel", [k for r in records("multiclass") for k in r.kernels])
def test_numba_row_kernels_exist(kernel):
    """The Numba CPU and CUDA row-wise kernels are chosen by name in their builders
    (which raise for a name they lack); building is lazy, nothing compiles here."""
    from fastloss.kernels import numba_cpu, numba_cuda
    numba_cpu._build_rowwise_unit(kernel, False)
    if kernel not in ("multi_margin", "crammer_singer"):     # (N, C) input only
        numba_cpu._build_rowwise_unit(kernel, True)
    for per_block in (False, True):
        numba_cuda._row_function(kernel, per_block)
    with pytest.raises(ValueError, match="unknown row-wise kernel"):
        numba_cuda._row_function("no_such_kernel", False)


@pytest.mark.parametrize("module", ["native", "numba_cpu", "numba_cuda"])
def test_every_backend_has_every_loop_shape(module):
    kernels = importlib.import_module(f"fastloss.kernels.{module}")
    entry = {"elementwise": "elementwise", "multiclass": "rowwise", "overlap": "overlap",
             "boxes": "boxes"}
    for family, name in entry.items():
        assert callable(getattr(kernels, name)), (module, name)
    for record in records("pairwise"):
        for kernel in record.kernels:
            assert callable(getattr(kernels, kernel, None)), (module, kernel)
    from fastloss.kernels import PAIR_KERNELS, PAIR_ROW_GLUE
    assert all(callable(getattr(kernels, n, None)) for n in PAIR_KERNELS), module
    if module == "numba_cuda":
        assert all(callable(getattr(kernels, n, None)) for n in PAIR_ROW_GLUE)


def test_host_row_glue():
    from fastloss.kernels import PAIR_ROW_GLUE
    from fastloss.losses import pairwise
    assert all(callable(getattr(pairwise._HOST_ROWS, n)) for n in PAIR_ROW_GLUE)


def test_tables_derived_from_the_registry():
    """The family tables other modules (fastloss.dask, fastloss.torch, the tests) read."""
    from fastloss.losses import boxes, elementwise, multiclass, overlap, pairwise
    from fastloss.torch import functional
    from fastloss import testing
    assert elementwise.ELEMENTWISE_LOSSES == {r.name: r.kernel for r in records("elementwise")}
    assert elementwise.MEAN_BY_WEIGHT_SUM == {"mse_loss", "l1_loss"}
    assert multiclass.MULTICLASS_LOSSES == {r.name: r.kernels for r in records("multiclass")}
    assert multiclass.MEAN_DIVIDES_BY == {"cross_entropy": "weight", "nll_loss": "weight",
                                          "softmax_focal_loss": "valid",
                                          "multi_margin_loss": "rows",
                                          "multiclass_hinge_loss": "rows"}
    assert boxes.BOX_LOSSES == {r.name: r.kernel for r in records("boxes")}
    assert overlap.OVERLAP_LOSSES == tuple(r.name for r in records("overlap"))
    assert pairwise.PAIRWISE_LOSSES == tuple(r.name for r in records("pairwise"))
    assert testing.BOX_LOSS_NAMES == tuple(boxes.BOX_LOSSES)
    assert functional._OF_DIFFERENCE == {"mse_loss", "l1_loss", "huber_loss",
                                         "smooth_l1_loss", "log_cosh_loss", "quantile_loss"}


def test_every_loss_has_test_and_benchmark_cases():
    """Parity variants for every elementwise loss, a comparison/benchmark case for
    every record that says it has one (the records without one say why)."""
    from fastloss import testing
    from fastloss._bench import PAIRWISE_CASES
    import test_elementwise_parity
    assert set(test_elementwise_parity.VARIANTS) == set(testing.CASES) == {
        r.name for r in records("elementwise")}
    cases = {"elementwise": set(testing.CASES),
             "multiclass": {c.name for c in testing.MULTICLASS_CASES.values()},
             "overlap": {c.name for c in testing.OVERLAP_CASES.values()},
             "boxes": set(testing.BOX_LOSS_NAMES),
             "pairwise": {c.name for c in PAIRWISE_CASES.values()}}
    for record in REGISTRY.values():
        assert (record.name in cases[record.family]) == record.bench, record.name


def test_every_loss_has_an_adapter():
    """fastloss.torch has every loss under the same name (the core's names are torch's
    where torch has the loss); pairwise_distances has no gradient and no adapter."""
    pytest.importorskip("torch")
    from fastloss.torch import functional
    for name in REGISTRY:
        if name == "pairwise_distances":
            assert not hasattr(functional, name)
            continue
        assert callable(getattr(functional, name, None)), name
