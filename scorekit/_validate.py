"""Boundary validation helpers shared by the config layer and the public constructors."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

# Relative slack on the [eps, T] checks of t: grids built in float64 and cast to float32 land a
# few ulps outside the interval.
T_SLACK = 1e-5


class ConfigError(ValueError):
    """An invalid configuration value or an unknown configuration key."""


def split_named(section: Any, key: str = "name") -> tuple[str, dict[str, Any]]:
    """(name, remaining keyword params) of an open config section (a DictConfig or dict)."""
    from omegaconf import OmegaConf

    params = (OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section)
              else dict(section))
    return params.pop(key), params


def accepted_kwargs(fn: Callable[..., Any]) -> list[str] | None:
    """Keyword names `fn` accepts, or None when it takes **kwargs (anything goes)."""
    try:
        names = _accepted(fn)
    except TypeError:  # unhashable callable
        names = _accepted.__wrapped__(fn)
    return None if names is None else list(names)


@functools.lru_cache(maxsize=512)
def _accepted(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    # inspect.signature costs ~0.1 ms, paid on every samplers.sample call without the cache.
    sig = inspect.signature(fn)
    names = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return tuple(n for n in names if n != "self")


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


def check_positive_int(value: Any, name: str, error: type[ValueError] = ValueError) -> int:
    """Return value as int, raising `error` (ConfigError for a user's option) naming it unless
    it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_score_input(x: Any, t: Any, dim: int, sde: Any, device: Any,
                      t_min: float | None = None) -> None:
    """Boundary checks of a closed-form score's `(x, t)`: x (B, *D) floating with `dim`
    elements per sample on the score's `device`; t (B,) floating on the same device, in
    [t_min, T] (t_min defaults to sde.eps; 0 where the t = 0 law is regular). The range is
    checked for CPU tensors only: on an accelerator reading it back would cost a host sync per
    call (the samplers' NaN guard catches what an out-of-range t causes)."""
    import torch

    if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
        raise TypeError(f"score(x, t) takes tensors, got {type(x).__name__}, "
                        f"{type(t).__name__}")
    if x.dim() < 2 or x[0].numel() != dim:
        raise ValueError(f"x has {x[0].numel() if x.dim() else 0} elements per sample, score "
                         f"expects d={dim} (x shape {tuple(x.shape)})")
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B={x.shape[0]},), got {tuple(t.shape)}")
    if not x.dtype.is_floating_point or not t.dtype.is_floating_point:
        raise ValueError(f"x and t must be floating point, got {x.dtype} and {t.dtype}")
    if x.device != device or t.device != device:
        raise ValueError(f"x is on {x.device} and t on {t.device}, the score's tensors on "
                         f"{device}; move the score with .to(device) (no implicit copies)")
    if t.device.type != "cpu" or t.numel() == 0:
        return
    lo = sde.eps if t_min is None else t_min
    t_lo, t_hi = torch.aminmax(t)  # NaN fails both comparisons
    if not (lo * (1 - T_SLACK) <= float(t_lo) and float(t_hi) <= sde.T * (1 + T_SLACK)):
        bad = (t < lo * (1 - T_SLACK)) | (t > sde.T * (1 + T_SLACK)) | torch.isnan(t)
        raise ValueError(f"t={float(t[bad][0]):.6g} is outside [{lo:g}, T={sde.T:g}] for the "
                         f"score under {type(sde).__name__}")
