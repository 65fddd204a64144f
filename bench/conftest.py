"""Shared set-up of the fastloss benchmarks.

Full run: every case of ``fastloss.testing.CASES`` x backend (c, numba, numpy,
torch) x n in {1e3, 1e5, 1e7} x mode (forward, value+grad), float32, mean.

Smoke run (CI): ``pytest bench --benchmark-disable`` or ``FASTLOSS_BENCH_SMOKE=1``
uses n in {1e3, 1e4} and a 1e6-element bandwidth array, and calls each
benchmark once, so the whole suite is a quick check that everything runs.
``FASTLOSS_BENCH_SIZES=1000,100000`` replaces the sizes of either run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

try:                 # an installed fastloss (pip install -e .) is what is measured;
    import fastloss  # noqa: F401  without one, the source tree beside this folder
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastloss._bench import quiet_openmp  # noqa: E402

quiet_openmp()       # before numba/torch load libgomp; OMP_WAIT_POLICY=ACTIVE overrides

FULL_SIZES = (1_000, 100_000, 10_000_000)
SMOKE_SIZES = (1_000, 10_000)
BACKENDS = ("c", "numba", "numpy", "torch")   # outermost in the run order


def is_smoke(config) -> bool:
    return bool(config.getoption("benchmark_disable", False)) or \
        os.environ.get("FASTLOSS_BENCH_SMOKE") == "1"


def sizes(config) -> tuple[int, ...]:
    env = os.environ.get("FASTLOSS_BENCH_SIZES")
    if env:
        return tuple(int(float(s)) for s in env.split(",") if s.strip())
    return SMOKE_SIZES if is_smoke(config) else FULL_SIZES


def size_label(n: int) -> str:
    """1000 -> '1e3'; sizes that are no power of ten stay as they are."""
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10 ** e else str(n)


def pytest_generate_tests(metafunc):
    """Parametrise ``elementwise_case`` as backend x loss x n x mode, with ids
    like ``mse_loss-c-1e7-forward``."""
    if "elementwise_case" not in metafunc.fixturenames:
        return
    from fastloss.testing import CASES

    params = [pytest.param((name, backend, n, grad),
                           id=f"{name}-{backend}-{size_label(n)}-{'grad' if grad else 'forward'}")
              for backend in BACKENDS for name in CASES for n in sizes(metafunc.config)
              for grad in (False, True)]
    metafunc.parametrize("elementwise_case", params)


@pytest.fixture(scope="session")
def smoke(request) -> bool:
    return is_smoke(request.config)
