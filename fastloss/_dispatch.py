"""Backend registry and per-call backend selection.

A call's backend comes from, in order: the ``backend=`` argument, the
innermost :func:`use_backend` context, the ``FASTLOSS_BACKEND`` environment
variable (read on every call), and otherwise the inputs: a GPU array
(``__cuda_array_interface__``) goes to ``"cuda"``, a host array to ``"c"``,
or ``"numba"`` where the native module is missing.

Backend modules are imported only when first used, so ``import fastloss``
imports neither numba nor the compiled module's dependents.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import threading
from typing import Any, Iterator, NamedTuple

from ._typing import Backend

__all__ = ["BackendInfo", "backends", "use_backend", "BACKEND_NAMES", "is_gpu_array"]

BACKEND_NAMES = ("c", "numba", "cuda", "numpy")
GPU_BACKENDS = frozenset({"cuda"})

_MODULES = {
    "c": "fastloss.kernels.native",
    "numba": "fastloss.kernels.numba_cpu",
    "cuda": "fastloss.kernels.numba_cuda",
    "numpy": "fastloss.kernels.reference",
}

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastloss_backend",
                                                                      default=None)
_lock = threading.Lock()
_loaded: dict[str, object] = {}
_why_not: dict[str, str] = {}


class BackendInfo(NamedTuple):
    name: str
    available: bool
    reason: str


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


#: per array type, where its arrays live: "host", "gpu", or "device" (a torch
#: tensor: its own ``device`` says).  Decided once per type, so that the per-call
#: probe raises nothing (a CPU tensor's ``__cuda_array_interface__`` raises).
_PLACE_OF_TYPE: dict[type, str] = {}


def _place_of_type(cls: type) -> str | None:
    """The place of ``cls``'s arrays, or None when it is the instance's to say
    (an object carrying its own ``__cuda_array_interface__``)."""
    module = cls.__module__
    if module.startswith("torch") and hasattr(cls, "is_cuda"):
        return "device"
    if module.startswith("numba.cuda.simulator"):   # simulated device arrays lack the interface
        return "gpu"
    if hasattr(cls, "__cuda_array_interface__"):     # CuPy, Numba device arrays
        return "gpu"
    if module.startswith("numpy") or module == "builtins":
        return "host"
    return None


def is_gpu_array(obj: object) -> bool:
    """True for arrays that live on a GPU: anything with ``__cuda_array_interface__``
    (a CUDA tensor too, even one that requires grad and so refuses to export it),
    and Numba's simulated device arrays (``NUMBA_ENABLE_CUDASIM=1``), which lack it."""
    cls = type(obj)
    place = _PLACE_OF_TYPE.get(cls)
    if place is None:
        place = _place_of_type(cls)
        if place is None:
            return hasattr(obj, "__cuda_array_interface__")
        _PLACE_OF_TYPE[cls] = place
    if place == "device":
        return bool(obj.is_cuda)  # type: ignore[attr-defined]
    return place == "gpu"


def _load(name: str):
    """The backend module, or None with the reason recorded.  Imported once."""
    module = _loaded.get(name)
    if module is not None:      # the per-call path: no lock
        return module
    with _lock:
        if name in _loaded:
            return _loaded[name]
        if name in _why_not:
            return None
        try:
            module = importlib.import_module(_MODULES[name])
            reason = module.unavailable_reason()
        except ImportError as exc:
            module, reason = None, f"import failed: {exc}"
        if reason:
            _why_not[name] = reason
            return None
        _loaded[name] = module
        return module


def backends() -> dict[str, BackendInfo]:
    """Every backend with whether it can run here and, if not, why."""
    out = {}
    for name in BACKEND_NAMES:
        module = _load(name)
        out[name] = BackendInfo(name, module is not None,
                                "available" if module is not None else _why_not[name])
    return out


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Use ``name`` for calls in this block that don't pass ``backend=``
    (``None`` restores automatic choice).  Context-local: threads and asyncio
    tasks each see their own."""
    if name is not None:
        _check_name(name, "use_backend(name)")
    token = _context.set(name)
    try:
        yield
    finally:
        _context.reset(token)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"{what}: unknown backend {name!r}; expected one of "
                         f"{', '.join(map(repr, BACKEND_NAMES))} or None")


# os.environ.get costs ~1 µs (it encodes the key, decodes the value); the dict
# behind os.environ, which os.environ keeps current, answers in ~50 ns.
_ENVIRON_BYTES = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("FASTLOSS_BACKEND") if _ENVIRON_BYTES is not None else None


def _environment_backend() -> str | None:
    if _ENVIRON_BYTES is None:
        return os.environ.get("FASTLOSS_BACKEND") or None
    value = _ENVIRON_BYTES.get(_ENV_KEY)
    return os.environ.decodevalue(value) or None if value is not None else None


#: the automatic choice for host (False) and GPU (True) arrays, once made: which
#: backends load does not change within a process
_automatic: dict[bool, tuple[str, Any]] = {}


def host_fast_path(backend: str | None) -> Any:
    """``fastloss._fastcall`` when a host call with this ``backend`` argument runs on
    the C backend (by ``backend``, ``use_backend``, ``FASTLOSS_BACKEND`` or the
    automatic choice), else None.  It raises nothing: a call it does not take
    goes on to :func:`select`, which reports what is wrong."""
    if backend is None:
        backend = _context.get() or _environment_backend()
        if backend is None:
            name, module = _automatic.get(False) or _choose_automatically(False)
            return module.fast if name == "c" else None
    if backend != "c":
        return None
    module = _loaded.get("c")
    return module.fast if module is not None else None  # type: ignore[attr-defined]


def _choose_automatically(on_gpu: bool) -> tuple[str, Any]:
    candidates = ("cuda",) if on_gpu else ("c", "numba", "numpy")
    for name in candidates:
        module = _load(name)
        if module is not None:
            _automatic[on_gpu] = name, module
            return name, module
    raise BackendUnavailable(
        f"no backend can run these {'GPU' if on_gpu else 'host'} arrays: "
        + "; ".join(f"{n}: {_why_not.get(n, '?')}" for n in candidates))


def select(backend: str | None, on_gpu: bool) -> tuple[str, Any]:
    """(name, module) of the backend for one call whose arrays are on the GPU or not."""
    source = "backend"
    if backend is None:
        backend, source = _context.get(), "use_backend()"
    if backend is None:
        backend, source = _environment_backend(), "FASTLOSS_BACKEND"
    if backend is None:
        return _automatic.get(on_gpu) or _choose_automatically(on_gpu)
    _check_name(backend, source)
    if on_gpu and backend not in GPU_BACKENDS:
        raise TypeError(f"the inputs are GPU arrays but {source}={backend!r} runs on the CPU "
                        f"only; use backend='cuda' (or copy the arrays to the host yourself)")
    if not on_gpu and backend in GPU_BACKENDS:
        raise TypeError(f"{source}={backend!r} needs GPU arrays (objects with "
                        f"__cuda_array_interface__) and got host arrays; fastloss never "
                        f"copies between devices silently")
    module = _load(backend)
    if module is None:
        raise BackendUnavailable(f"backend {backend!r} is not available: {_why_not[backend]}")
    return backend, module
