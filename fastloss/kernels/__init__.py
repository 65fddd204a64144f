"""Kernel backends.  Each module exposes ``unavailable_reason()`` (None when it
can run here) and one entry point per loop shape, e.g.
``elementwise(call) -> (value, out, grad)``.  Modules are imported lazily by
:mod:`fastloss._dispatch`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
