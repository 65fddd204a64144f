"""Kernel backends.  Each module exposes ``unavailable_reason()`` (None when it
can run here) and one entry point per loop shape, e.g.
``elementwise(call) -> (value, out, grad)``.  Modules are imported lazily by
:mod:`fastloss._dispatch`."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable


class BuildOnce:
    """Kernels compiled lazily, once: ``get(key, build)`` runs ``build()`` the
    first time ``key`` is asked for (under a re-entrant lock, so a build may
    ask for another key); later lookups take no lock."""

    def __init__(self):
        self._items: dict = {}
        self._lock = threading.RLock()

    def get(self, key, build: Callable[[], Any]):
        item = self._items.get(key)
        if item is None:
            with self._lock:
                item = self._items.get(key)
                if item is None:
                    item = self._items[key] = build()
        return item


@dataclass(slots=True)
class ElementwiseCall:
    """One elementwise kernel call, already validated and laid out.

    ``input``, ``target`` (and ``weight`` / ``param`` when given) are flat,
    contiguous arrays of one float dtype on one device.  On the host every
    array has ``n`` elements; on the GPU ``weight`` and ``param`` may be
    shorter: element ``i`` reads index ``i % len`` (a trailing-axes
    broadcast).  ``param`` replaces the scalar ``p0`` element by element.
    """

    loss: str                 # kernel name, e.g. "log_cosh"
    input: Any
    target: Any
    weight: Any | None
    param: Any | None
    p0: float
    p1: float
    want_out: bool            # per-element weight * loss ("none")
    want_grad: bool           # grad_scale * weight * d loss / d input
    grad_scale: float
    total_scale: float        # value = total_scale * sum(weight * loss)
