"""Step plans (time grid, coefficient table, host rows) built once per settings and reused.

A fixed-step solve spends ~0.1-0.2 ms on CPU building its float64 grid and coefficient table
from small tensors, as much as 10-30 steps of a small network's update. Repeated calls with the
same process and grid (the usual case: a sampler called batch after batch) reuse the plan.

Only processes whose attributes are all plain scalars are cached (VP, sub-VP, VE, EDM); their
attributes are read afresh on every call, so changing one (e.g. `sde.beta_max = 10`) makes a new
key rather than a stale hit. Processes holding tensors or tables are never cached. Cached
tensors are never written to: every solve copies x into its own state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

MAX_PLANS = 128
_SCALARS = (bool, int, float, str, type(None))
_CACHE: OrderedDict[Hashable, Any] = OrderedDict()
_LOCK = threading.Lock()
T = TypeVar("T")


def process_key(sde: Any) -> tuple | None:
    """Hashable identity (type, attributes) of a process with plain-scalar attributes only;
    None for any other (which is then never cached)."""
    fields = getattr(sde, "__dict__", None)
    if fields is None or any(type(v) not in _SCALARS for v in fields.values()):
        return None
    return (type(sde), tuple(sorted(fields.items())))


def plan_key(tag: str, sde: Any, *settings: Hashable) -> tuple | None:
    """Key of one solver's plan: its tag, the process and the settings that shape the grid and
    table (steps, grid kind, t_start, ...); None when the process is not cacheable."""
    key = process_key(sde)
    return None if key is None else (tag, key, *settings)


def memo(key: Hashable | None, build: Callable[[], T]) -> T:
    """`build()` once per key (least recently used of MAX_PLANS evicted); no caching for None."""
    if key is None:
        return build()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    value = build()
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > MAX_PLANS:
            _CACHE.popitem(last=False)
    return value


def clear_plans() -> None:
    """Forget every cached plan (they are small: the next solve rebuilds its own)."""
    with _LOCK:
        _CACHE.clear()


def cached_plans() -> int:
    """Number of plans held."""
    return len(_CACHE)
