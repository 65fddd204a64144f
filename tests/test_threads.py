"""Threads: bit-identical reductions for any thread count, safe concurrent calls,
and no hang in a child forked after the threads ran."""
import multiprocessing
import threading

import numpy as np
import pytest

import fastloss as fl
from fastloss.testing import CASES, make_inputs

from conftest import available

CPU_BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not available(b), reason=fl.backends()[b].reason))
                for b in ("c", "numba")]
N = 3_000_001


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["mse_loss", "log_cosh_loss", "sigmoid_focal_loss"])
def test_bit_identical_for_any_thread_count(backend, name):
    x, y = make_inputs(CASES[name], N, np.float32, seed=7)
    results = []
    for threads in (1, 2, 3, 7):
        fl.set_num_threads(threads)
        assert fl.get_num_threads() == threads
        value, grad = getattr(fl, name)(x, y, reduction="sum", return_grad=True, backend=backend)
        results.append((value, grad))
    for value, grad in results[1:]:
        assert value.tobytes() == results[0][0].tobytes()
        assert grad.tobytes() == results[0][1].tobytes()


def test_thread_count_default_and_bad_values(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert fl.set_num_threads(None) == 3
    with pytest.raises(ValueError, match="n: expected a thread count"):
        fl.set_num_threads(-2)


@pytest.mark.skipif(not available("c"), reason="needs the C backend")
def test_thread_count_is_checked_before_it_is_stored_and_reports_what_is_in_force():
    """2**40 once raised OverflowError after storing itself, and 1000 was reported
    while the C pool ran 256: now the count reported is the one the C pool has."""
    from fastloss.kernels import native
    fl.set_num_threads(2)
    for bad in (2.0, True, "3", -1):
        with pytest.raises(ValueError, match="n: expected a thread count"):
            fl.set_num_threads(bad)
        assert fl.get_num_threads() == native.lib.fl_get_num_threads() == 2
    for big in (1000, 2**40):
        assert fl.set_num_threads(big) == fl.get_num_threads() == 256
        assert native.lib.fl_get_num_threads() == 256
    assert fl.set_num_threads(np.int64(3)) == native.lib.fl_get_num_threads() == 3
    fl.set_num_threads(None)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_concurrent_calls_from_python_threads(backend):
    inputs = [make_inputs(CASES["log_cosh_loss"], 400_003, np.float32, seed=s) for s in range(4)]
    expected = [fl.log_cosh_loss(x, y, backend=backend) for x, y in inputs]
    got = [None] * 4
    errors = []

    def work(k):
        try:
            for _ in range(5):
                got[k] = fl.log_cosh_loss(*inputs[k], backend=backend)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert [g.tobytes() for g in got] == [e.tobytes() for e in expected]


def _child(queue, backend):
    x, y = make_inputs(CASES["log_cosh_loss"], 1_000_003, np.float32, seed=1)
    queue.put(float(fl.log_cosh_loss(x, y, backend=backend)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fork_after_threaded_use_does_not_hang(backend):
    x, y = make_inputs(CASES["log_cosh_loss"], 1_000_003, np.float32, seed=1)
    fl.set_num_threads(2)
    expected = float(fl.log_cosh_loss(x, y, backend=backend))    # threads now running
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, backend))
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung, "the forked child hung in its first threaded call"
    assert child.exitcode == 0
    assert queue.get(timeout=5) == expected

