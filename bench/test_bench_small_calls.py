"""pytest-benchmark suite of the small calls a training step makes (issue: the call
path): every entry of ``fastloss._bench.SMALL_CALLS`` (elementwise n = 100 to 1e4,
64 x 10 logits, 256 x 1000, (2, 2, 64, 64) volumes, N = 128 embeddings ...), on
fastloss's automatic backend and on its peer (torch; MONAI for the overlap
losses; torch's usual code for the pairwise losses), forward and value+grad.

A group holds one entry and mode, so ``--benchmark-group-by=group`` sets
fastloss and its peer side by side; ``bench/report.py`` is not needed for
these.  Each benchmark stores ``extra_info`` (family, case, shape, mode, side,
the OpenMP wait policy).

The suite's OMP_WAIT_POLICY=PASSIVE (conftest.py) makes torch's small calls
3-4x slower than users see them, so a timed run of this file needs the
policy left as it is:

    FASTLOSS_BENCH_OMP=default python -m pytest bench/test_bench_small_calls.py \
        --benchmark-columns=median,rounds
"""
from __future__ import annotations

import os

import pytest

from fastloss._bench import SMALL_CALLS, small_call
from test_bench_elementwise import run_benchmark

ENTRIES = [pytest.param(family, label, shape, id=f"{label}-{'x'.join(map(str, shape))}")
           for family, entries in SMALL_CALLS.items() for label, shape in entries]


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
@pytest.mark.parametrize("side", ["fastloss", "peer"])
@pytest.mark.parametrize("family, label, shape", ENTRIES)
def test_small_call(benchmark, family, label, shape, side, grad):
    if not benchmark.disabled and os.environ.get("FASTLOSS_BENCH_OMP") != "default":
        pytest.skip("timed small calls need FASTLOSS_BENCH_OMP=default (see the docstring)")
    pytest.importorskip("torch")
    if family == "overlap":
        pytest.importorskip("monai")
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"{label}-{'x'.join(map(str, shape))}-{mode}"
    benchmark.extra_info.update(family=family, case=label, shape=list(shape), mode=mode,
                                side=side, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    run_benchmark(benchmark, small_call(family, label, shape,
                                        None if side == "fastloss" else "torch", grad))
