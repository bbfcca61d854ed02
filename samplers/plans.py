"""Step plans (time grids, coefficient tables, their device copies) built once and reused.

A fixed-step solve spends ~0.1-0.2 ms on CPU building its float64 grid and coefficient table
from small tensors, as much as 10-30 steps of a small network's update. Repeated calls with the
same process and settings (the usual case: a sampler called batch after batch) reuse them:
the pure builders of `samplers.grids` and `samplers.steps` are decorated with `cached`, which
keys a call by its arguments.

Only processes whose attributes are all plain scalars are cached (VP, sub-VP, VE, EDM); their
attributes are read afresh on every call, so changing one (e.g. `sde.beta_max = 10`) makes a new
key rather than a stale hit. Processes holding tensors or tables are never cached. A tensor
argument is keyed by its identity, and the entry keeps a reference to it, so the identity cannot
be reused by another tensor while the entry lives. Cached tensors are never written to.
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

from scorekit.processes import Process

MAX_PLANS = 128
_SCALARS = (bool, int, float, str, type(None))
_CACHE: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()
_LOCK = threading.Lock()
T = TypeVar("T")


def process_key(sde: Any) -> tuple | None:
    """Hashable identity (type, attributes) of a process with plain-scalar attributes only;
    None for any other (which is then never cached)."""
    fields = getattr(sde, "__dict__", None)
    if fields is None or any(type(v) not in _SCALARS for v in fields.values()):
        return None
    return (type(sde), tuple(sorted(fields.items())))


class _Uncacheable(Exception):
    pass


def _arg_key(arg: Any, pins: list) -> Hashable:
    if isinstance(arg, Process):
        key = process_key(arg.sde)
        if key is None:
            raise _Uncacheable
        return key
    if isinstance(arg, torch.Tensor):
        pins.append(arg)
        return ("tensor", id(arg))
    if isinstance(arg, (tuple, list)):
        return tuple(_arg_key(a, pins) for a in arg)
    try:
        hash(arg)
    except TypeError:
        raise _Uncacheable from None
    return arg


def memo(key: Hashable | None, build: Callable[[], T], pins: Any = None) -> T:
    """`build()` once per key (least recently used of MAX_PLANS evicted); no caching for None.
    `pins`: objects the entry keeps alive (the tensors whose identities are in the key)."""
    if key is None:
        return build()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[1]
    value = build()
    with _LOCK:
        _CACHE[key] = (pins, value)
        while len(_CACHE) > MAX_PLANS:
            _CACHE.popitem(last=False)
    return value


def cached(fn: Callable[..., T]) -> Callable[..., T]:
    """Cache a pure plan builder `fn(process, *args)` by its arguments (see the module
    docstring); calls with an uncacheable process or argument just run `fn`."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> T:
        pins: list = []
        try:
            key = (fn.__qualname__, *(_arg_key(a, pins) for a in args))
        except _Uncacheable:
            return fn(*args)
        return memo(key, lambda: fn(*args), pins)

    return wrapper


def clear_plans() -> None:
    """Forget every cached plan (they are small: the next solve rebuilds its own)."""
    with _LOCK:
        _CACHE.clear()


def cached_plans() -> int:
    """Number of plans held."""
    return len(_CACHE)


class ScoreLRU:
    """A least-recently-used cache of at most `size` entries keyed by (score, settings), for
    what is built per score (compiled scores, CUDA graphs). The score is held weakly where it
    allows (functions, modules, bound methods): when it is garbage-collected its entries go
    too, so a cache never keeps a model alive. Values must not refer to the score strongly for
    that to happen; the size bounds the memory either way."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[Callable[[], Any], Any]] = OrderedDict()

    @staticmethod
    def _identity(score: Any) -> Hashable:
        # `obj.method` makes a new bound-method object at every access: key by what it binds.
        if inspect.ismethod(score):
            return id(score.__self__), id(score.__func__)
        return id(score)

    def get(self, score: Any, settings: Hashable) -> Any:
        key = (self._identity(score), settings)
        hit = self._entries.get(key)
        held = None if hit is None else hit[0]()
        if held is None or (held is not score and held != score):
            return None
        self._entries.move_to_end(key)
        return hit[1]

    def put(self, score: Any, settings: Hashable, value: Any) -> None:
        key = (self._identity(score), settings)
        drop = lambda _ref, key=key: self._entries.pop(key, None)  # noqa: E731
        try:
            ref = (weakref.WeakMethod(score, drop) if inspect.ismethod(score)
                   else weakref.ref(score, drop))
        except TypeError:  # not weak-referenceable: held, and bounded by the size
            ref = lambda: score  # noqa: E731
        self._entries[key] = (ref, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
