"""pytest-benchmark suite of the elementwise losses; see conftest.py and README.md.

Each benchmark stores ``extra_info`` (loss, backend, n, mode, dtype,
bytes_read = input + target bytes, the loss value, others_cpu = the share of
the CPUs other processes used meanwhile) that ``bench/report.py``
turns into GB/s, % of the read bandwidth measured in the same run, and
speed-ups against PyTorch and NumPy.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest

import fastloss
from fastloss._bench import OthersCPU, bytes_read, make_call, read_bandwidth, wall_timer
from fastloss.testing import CASES, make_inputs

DTYPE = np.float32
ROUND_S = 5e-3         # each timed round lasts at least this long (calls are looped)
BUDGET_S = 0.25        # time spent on the timed rounds of one small benchmark
MIN_ROUNDS, MAX_ROUNDS = 5, 50


@functools.lru_cache(maxsize=None)
def inputs(name: str, n: int):
    """(x, y, reference mean loss) of one case and size, made once per session
    (every backend reads the same arrays; about 0.9 GB at the full sizes)."""
    case = CASES[name]
    x, y = make_inputs(case, n, DTYPE, seed=0)
    ref = float(getattr(fastloss, name)(x, y, backend="numpy", **case.params))
    return x, y, ref


def run_benchmark(benchmark, fn):
    """Time ``fn`` with a round count fitted to its speed, so that 1e7-element
    NumPy and PyTorch calls get 5 rounds and microsecond calls get many
    looped ones; returns fn's result.  Disabled: one plain call."""
    if benchmark.disabled:
        return benchmark(fn)
    fn()                                            # compile / first touch, untimed
    once = wall_timer(fn, 1)
    iterations = max(1, math.ceil(ROUND_S / max(once, 1e-9)))
    per_round = once * iterations
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, int(BUDGET_S / per_round)))
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)


def _torch_threads():
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def test_read_bandwidth(benchmark, smoke):
    """The machine's plain-read bandwidth in this run (see fastloss._bench.read_bandwidth):
    the benchmark times one threaded pass; the report uses the fastest.  Defined
    first so that it runs first, before any backend's threads exist."""
    from concurrent.futures import ThreadPoolExecutor

    n = 1_000_000 if smoke else 100_000_000
    a = np.ones(n, dtype=np.float32)
    threads = fastloss.get_num_threads()
    parts = np.array_split(a, threads)
    benchmark.group = "bandwidth"
    benchmark.extra_info.update(mode="bandwidth", n=n, threads=threads, bytes_read=a.nbytes,
                                method=f"np.max over float32 split across {threads} threads",
                                best_of_5_GBps=read_bandwidth(array=a, threads=threads),
                                fastloss_version=fastloss.__version__, isa=fastloss.isa(),
                                torch_threads=_torch_threads(),
                                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    with ThreadPoolExecutor(threads) as pool, OthersCPU() as others:
        run_benchmark(benchmark, lambda: list(pool.map(np.max, parts)))
    benchmark.extra_info["others_cpu"] = others.share


def _value(result, grad):
    loss = result[0] if grad else result
    if hasattr(loss, "detach"):                     # a torch tensor
        loss = loss.detach()
    return float(np.asarray(loss))


def test_elementwise(benchmark, elementwise_case):
    name, backend, n, grad = elementwise_case
    if backend == "torch":
        pytest.importorskip("torch")
    else:
        info = fastloss.backends()[backend]
        if not info.available:
            pytest.skip(f"backend {backend} unavailable: {info.reason}")
    x, y, ref = inputs(name, n)
    mode = "value+grad" if grad else "forward"
    benchmark.group = f"{name}-{mode}"
    benchmark.extra_info.update(loss=name, backend=backend, n=n, mode=mode,
                                dtype=np.dtype(DTYPE).name, bytes_read=bytes_read(x, y))
    with OthersCPU() as others:
        result = run_benchmark(benchmark, make_call(name, backend, x, y, grad=grad))
    value = _value(result, grad)
    benchmark.extra_info.update(value=value, others_cpu=others.share)
    # a cheap guard against benchmarking the wrong thing (parameters, inputs)
    assert math.isclose(value, ref, rel_tol=1e-3, abs_tol=1e-6), (value, ref)
