"""Cached call plans: what a call signature decides, decided once.

A loss call's checks of shapes and dtypes, its layout decisions, its output
shapes and the backend's prepared launcher (for the C backend: a filled
argument struct) depend only on the signature: the loss, the arrays' shapes
and dtypes, the options and the backend.  A family builds its plan the first
time it meets a signature and looks it up afterwards, so that a repeated call
does little more than fill pointers and call the kernel.

A plan is built only after every check in it has passed, so a cached plan is
a validated signature; value checks (labels, probabilities) still run on
every call, in the kernels.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable


class PlanCache:
    """A bounded, thread-safe map from a call signature to its plan.

    Under the GIL a dict's ``get`` and item assignment are atomic: two threads
    that miss at once both build the plan (it is a pure function of the key)
    and one of them is kept.  When full, the cache is emptied: a training loop
    has few signatures, and a workload with many is no worse off than without
    a cache.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._plans: dict[Hashable, Any] = {}
        self._limit = limit
        #: the plan of ``key``, or None: the bound ``dict.get``, so a hit costs no
        #: Python frame (this is on every call's path)
        self.lookup: Callable[[Hashable], Any] = self._plans.get

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The plan of ``key``, built by ``build()`` on a miss."""
        plan = self._plans.get(key)
        if plan is None:
            plan = build()
            if len(self._plans) >= self._limit:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()
