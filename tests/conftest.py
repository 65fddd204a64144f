"""Shared test set-up: the CUDA simulator, the backends to test, tolerances.

The CUDA kernels run under Numba's simulator unless a real GPU run is asked
for with ``NUMBA_ENABLE_CUDASIM=0`` (bench/gpu_check.sh does that).  The
variable must be set before numba is imported, hence here.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastloss as fl  # noqa: E402
from fastloss import reference  # noqa: E402

SIMULATED = os.environ["NUMBA_ENABLE_CUDASIM"] == "1"

# The CUDA compile check's signatures: every simulated kernel launch of the run,
# recorded (fastloss/_cuda_check.py; .ci/run sets the folder).
# On a real GPU (bench/gpu_check.sh) the kernels' compiled signatures are recorded.
_LAUNCH_FOLDER = os.environ.get("FASTLOSS_RECORD_CUDA_LAUNCHES")
if _LAUNCH_FOLDER:
    from fastloss import _cuda_check

    _cuda_check.record_launches(_LAUNCH_FOLDER)


def pytest_sessionfinish(session, exitstatus):
    if _LAUNCH_FOLDER:
        _cuda_check.write_launches()

#: one tolerance table for every comparison with the float64 reference
TOLERANCE = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-11, atol=1e-13),
}


def tol(dtype):
    return TOLERANCE[np.dtype(dtype)]


def available(name):
    return fl.backends()[name].available


def backend_param(name):
    """A pytest param for a backend, skipped with the reason when it can't run here."""
    info = fl.backends()[name]
    return pytest.param(name, id=name,
                        marks=pytest.mark.skipif(not info.available, reason=info.reason))


KERNEL_BACKENDS = [backend_param(b) for b in ("c", "numba", "cuda")]


def to_device(array):
    from numba import cuda
    return cuda.to_device(np.array(array, order="C"))   # keeps 0-d arrays 0-d


def to_host(value):
    return value.copy_to_host() if hasattr(value, "copy_to_host") else np.asarray(value)


def compare_with_reference(fn_name, backend, x, y, *, reduction, dtype=None, **kwargs):
    """The loss ``fn_name`` on ``backend`` (GPU arrays for "cuda") against the float64
    reference: the value with and without the gradient, and the gradient, in the
    input's dtype (``dtype``, default x's); inputs unchanged."""
    dtype = np.dtype(dtype or x.dtype)
    x_before, y_before = x.copy(), y.copy()
    fn, ref = getattr(fl, fn_name), getattr(reference, fn_name)
    on_gpu = backend == "cuda"
    args = [to_device(x), to_device(y)] if on_gpu else [x, y]
    kw = {k: (to_device(v) if on_gpu and isinstance(v, np.ndarray) else v)
          for k, v in kwargs.items()}
    value, grad = fn(*args, reduction=reduction, return_grad=True, backend=backend, **kw)
    value_only = fn(*args, reduction=reduction, backend=backend, **kw)
    ref_value, ref_grad = ref(x, y, reduction=reduction, return_grad=True, **kwargs)
    value, grad, value_only = to_host(value), to_host(grad), to_host(value_only)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert np.asarray(value).dtype == dtype
    assert np.shape(value) == np.shape(ref_value)
    np.testing.assert_allclose(value, ref_value, **tol(dtype))
    np.testing.assert_allclose(value_only, ref_value, **tol(dtype))
    np.testing.assert_allclose(grad, ref_grad, **tol(dtype))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``-n 2 --dist loadgroup``, the README's command) the
    tests of one loss run on one worker: each worker then compiles a loss's
    Numba kernels once, instead of every worker compiling every kernel (the
    compiles are most of the suite's time)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        loss = params.get("fn_name") or params.get("name")
        if isinstance(loss, str):
            item.add_marker(pytest.mark.xdist_group(loss))


@pytest.fixture(autouse=True)
def _restore_threads_and_isa():
    yield
    fl.set_num_threads(None)
    if fl.isa() is not None:
        fl.set_isa(None)
