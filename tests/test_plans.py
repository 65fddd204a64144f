"""The cached call plans (fastloss._plans) and the lean call path: a cached
signature gives what an uncached one gives, the cache stays bounded, calls from
many threads at once (the C calls release the GIL; their scratch is per thread)
give each thread's own results, and bad values are still caught on every call."""
import threading

import numpy as np
import pytest

import fastloss as fl
from fastloss import reference
from fastloss._plans import PlanCache
from fastloss.losses import multiclass

from conftest import available, tol

pytestmark = pytest.mark.skipif(not available("c"), reason="C extension not built")


def test_plan_cache_builds_once_and_stays_bounded():
    cache = PlanCache(limit=3)
    built = []
    for key in ("a", "b", "a", "a", "b"):
        cache.get(key, lambda k=key: built.append(k) or k.upper())
    assert built == ["a", "b"] and cache.lookup("a") == "A" and cache.lookup("z") is None
    for key in range(10):
        cache.get(key, lambda k=key: k)
        assert len(cache) <= 3


def test_a_failed_check_caches_nothing():
    before = len(multiclass._PLANS)
    with pytest.raises(ValueError, match="target: class indices must have shape"):
        fl.cross_entropy(np.zeros((4, 3), np.float32), np.zeros(5, np.int64))
    assert len(multiclass._PLANS) == before


@pytest.mark.parametrize("n", [7, 1000])
def test_repeated_signatures_match_the_reference(n):
    """The second call of a signature (a cache hit) gives the first call's bits and
    the reference's values, also after other signatures came in between."""
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    logits, labels = rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 5, n)
    first = (fl.mse_loss(x, y, return_grad=True), fl.cross_entropy(logits, labels,
                                                                   return_grad=True))
    fl.mse_loss(x[:3], y[:3])
    fl.cross_entropy(logits[:2], labels[:2], reduction="sum")
    again = (fl.mse_loss(x, y, return_grad=True), fl.cross_entropy(logits, labels,
                                                                   return_grad=True))
    for (v1, g1), (v2, g2) in zip(first, again):
        assert v1.tobytes() == v2.tobytes() and g1.tobytes() == g2.tobytes()
    np.testing.assert_allclose(again[0][0], reference.mse_loss(x, y), **tol(np.float32))
    np.testing.assert_allclose(again[1][0], reference.cross_entropy(logits, labels),
                               **tol(np.float32))


def test_bad_labels_are_caught_on_every_call_of_a_cached_signature():
    x = np.zeros((4, 3), np.float32)
    fl.cross_entropy(x, np.array([0, 1, 2, 0]))
    for bad in (np.array([0, 3, 2, 0]), np.array([0, 1, -5, 0])):
        with pytest.raises(ValueError, match=r"target: class index -?\d+ at position \(\d,\) "
                                             r"is outside \[0, 3\)"):
            fl.cross_entropy(x, bad)
    with pytest.raises(ValueError, match="input: every element must lie in"):
        fl.binary_cross_entropy(np.array([0.5, 1.5]), np.array([0.0, 1.0]))


def test_non_contiguous_inputs_take_the_cached_path_correctly():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.normal(size=(8, 6)).astype(np.float32)
    fl.mse_loss(x[:, :3].copy(), y[:, :3].copy())         # the signature, contiguous
    np.testing.assert_allclose(fl.mse_loss(x[:, :3], y[:, :3]),
                               reference.mse_loss(x[:, :3], y[:, :3]), **tol(np.float32))
    logits = rng.normal(size=(6, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 12)
    np.testing.assert_allclose(fl.cross_entropy(logits[:, ::2], labels[::2]),
                               reference.cross_entropy(logits[:, ::2], labels[::2]),
                               **tol(np.float32))


def test_many_threads_at_once():
    """Eight threads, each with its own shapes (so also its own plans and scratch
    sizes), call at once; every result equals the same call made alone."""
    rng = np.random.default_rng(2)
    jobs = []
    for k in range(8):
        rows, classes = 50 + 37 * k, 3 + 11 * k
        logits = rng.normal(size=(rows, classes)).astype(np.float32)
        labels = rng.integers(0, classes, rows)
        labels[::5] = -100
        weight = rng.uniform(0.5, 2.0, classes)
        x = rng.normal(size=100 + k).astype(np.float32)
        jobs.append((logits, labels, weight, x))

    def run(job):
        logits, labels, weight, x = job
        return (fl.cross_entropy(logits, labels, weight=weight, return_grad=True),
                fl.nll_loss(logits, labels, reduction="none"),
                fl.log_cosh_loss(x, x[::-1].copy(), return_grad=True))

    alone = [run(job) for job in jobs]
    together = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def worker(i):
        barrier.wait()
        for _ in range(20):
            together[i] = run(jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, got in zip(alone, together):
        (v1, g1), n1, (v2, g2) = want
        (w1, h1), m1, (w2, h2) = got
        assert v1.tobytes() == w1.tobytes() and g1.tobytes() == h1.tobytes()
        assert n1.tobytes() == m1.tobytes()
        assert v2.tobytes() == w2.tobytes() and g2.tobytes() == h2.tobytes()


def test_hyper_parameters_are_part_of_the_signature():
    """A plan bakes the scalars into the kernel call: another delta (or smoothing)
    must be another plan, not the cached one's value."""
    a = np.ones(5, np.float32)
    for _ in range(2):
        assert fl.huber_loss(a, 2 * a, delta=0.5) == pytest.approx(0.375)   # linear part
        assert fl.huber_loss(a, 2 * a, delta=2.0) == pytest.approx(0.5)     # quadratic
    logits, labels = np.array([[2.0, 0.0, -1.0]]), np.array([0])
    for _ in range(2):
        for eps in (0.0, 0.3):
            np.testing.assert_allclose(
                fl.cross_entropy(logits, labels, label_smoothing=eps),
                reference.cross_entropy(logits, labels, label_smoothing=eps), rtol=1e-12)
