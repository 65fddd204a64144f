"""Backend selection: argument, context manager, environment, automatic."""
import subprocess
import sys

import numpy as np
import pytest

import fastloss as fl
from fastloss import _dispatch

from conftest import available, to_device

X = np.linspace(-1, 1, 50)
Y = np.zeros(50)


def _spy(monkeypatch):
    """Record which backend each call picks."""
    picked = []
    real = _dispatch.select

    def select(backend, on_gpu):
        name, module = real(backend, on_gpu)
        picked.append(name)
        return name, module
    monkeypatch.setattr(_dispatch, "select", select)
    real_fast = _dispatch.host_fast_path

    class Recorded:   # the compiled entry point: a call it takes runs the C kernels
        def __init__(self, fast):
            self.fast = fast

        def __getattr__(self, name):
            def call(*args):
                result = getattr(self.fast, name)(*args)
                if result is not NotImplemented:
                    picked.append("c")
                return result
            return call

    def host_fast_path(backend):
        fast = real_fast(backend)
        return None if fast is None else Recorded(fast)
    monkeypatch.setattr(_dispatch, "host_fast_path", host_fast_path)
    return picked


def test_backends_lists_every_backend_with_a_reason():
    info = fl.backends()
    assert list(info) == ["c", "numba", "cuda", "numpy"]
    for name, entry in info.items():
        assert entry.name == name and isinstance(entry.available, bool)
        assert entry.reason and (entry.available == (entry.reason == "available"))
    assert info["numpy"].available


def test_automatic_choice_on_the_host(monkeypatch):
    picked = _spy(monkeypatch)
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    fl.mse_loss(X, Y)
    assert picked == ["c" if available("c") else "numba"]


def test_automatic_choice_for_gpu_arrays(monkeypatch):
    if not available("cuda"):
        pytest.skip(fl.backends()["cuda"].reason)
    picked = _spy(monkeypatch)
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    fl.mse_loss(to_device(X), to_device(Y))
    assert picked == ["cuda"]


def test_precedence_argument_context_environment(monkeypatch):
    picked = _spy(monkeypatch)
    monkeypatch.setenv("FASTLOSS_BACKEND", "numpy")
    fl.mse_loss(X, Y)                       # environment, read per call
    with fl.use_backend("numba"):
        fl.mse_loss(X, Y)                   # context beats environment
        fl.mse_loss(X, Y, backend="numpy")  # argument beats context
        with fl.use_backend(None):
            fl.mse_loss(X, Y)               # None: back to environment
    monkeypatch.setenv("FASTLOSS_BACKEND", "numba")
    fl.mse_loss(X, Y)
    assert picked == ["numpy", "numba", "numpy", "numpy", "numba"]


def test_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="use_backend\\(name\\): unknown backend 'fortran'"):
        with fl.use_backend("fortran"):
            pass
    monkeypatch.setenv("FASTLOSS_BACKEND", "tpu")
    with pytest.raises(ValueError, match="FASTLOSS_BACKEND: unknown backend 'tpu'"):
        fl.mse_loss(X, Y)


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setitem(_dispatch._why_not, "c", "not built for this test")
    monkeypatch.delitem(_dispatch._loaded, "c", raising=False)
    monkeypatch.setattr(_dispatch, "_automatic", {})     # the choice made before "c" went
    with pytest.raises(fl.BackendUnavailable, match="backend 'c' is not available: not built for this test"):
        fl.mse_loss(X, Y, backend="c")
    # automatic choice falls back to numba when the C module is missing
    picked = _spy(monkeypatch)
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)
    fl.mse_loss(X, Y)
    assert picked == ["numba"]


def test_import_is_lazy():
    """import fastloss loads neither numba nor torch nor a backend module."""
    code = ("import sys, fastloss; "
            "bad = [m for m in ('numba', 'torch', 'fastloss.kernels.numba_cpu', 'fastloss._native') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
