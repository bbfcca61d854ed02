"""Boundary validation helpers shared by the config layer and the public constructors."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def accepted_kwargs(fn: Callable[..., Any]) -> list[str] | None:
    """Keyword names `fn` accepts, or None when it takes **kwargs (anything goes)."""
    sig = inspect.signature(fn)
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return [n for n in names if n != "self"]


def check_kwargs(fn: Callable[..., Any], params: dict[str, Any], where: str,
                 exclude: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming the first key of `params` that `fn` does not accept."""
    valid = accepted_kwargs(fn)
    if valid is None:
        return
    valid = [v for v in valid if v not in exclude]
    for key in params:
        if key not in valid:
            raise ValueError(f"unknown option {key!r} for {where}; valid options: {valid}")


def check_positive_int(value: Any, name: str) -> int:
    """Return value as int, raising ValueError naming it unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
