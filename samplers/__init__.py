"""scorekit samplers: every method sees only `score(x, t)` and a process object.

    res = samplers.sample(score, sde, shape=(n, d), method="em", steps=500)
    res.x, res.nfe, res.nfe_per_sample, res.info
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from samplers.base import CountingScore, SampleResult, Score, time_grid, tweedie
from samplers.diffusers_adapter import SCHEDULERS, diffusers_sampler
from samplers.ggf import gotta_go_fast
from samplers.likelihood import bits_per_dim, log_likelihood
from samplers.ode import heun, probability_flow
from samplers.sde_solvers import euler_maruyama, predictor_corrector
from scorekit._validate import accepted_kwargs, check_positive_int
from scorekit.sde import SDE

__all__ = ["sample", "available", "register", "SampleResult", "CountingScore", "time_grid",
           "tweedie", "log_likelihood", "bits_per_dim"]

_METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow,
    "heun": heun,
    "ggf": gotta_go_fast,
    **{name: diffusers_sampler(name) for name in SCHEDULERS},
}


def available() -> list[str]:
    """Names accepted by `sample(method=...)`."""
    return sorted(_METHODS)


def register(name: str, fn: Callable[..., tuple[torch.Tensor, dict]]) -> None:
    """Add a method `fn(score, sde, x, *, steps, generator, **options) -> (x, info)`."""
    _METHODS[name] = fn


def sample(score: Score, sde: SDE, shape: tuple[int, ...], method: str = "em",
           steps: int | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           x_init: torch.Tensor | None = None, **options: Any) -> SampleResult:
    """Draw `shape[0]` samples by integrating the reverse process from the prior at T to eps.

    `steps` defaults to the method's own default; `options` go to the method (e.g. `snr` for
    "pc", `denoise` for both). NFE is counted by wrapping `score`, never derived from `steps`.
    """
    if method not in _METHODS:
        raise ValueError(f"unknown sampler method {method!r}; valid: {available()}")
    if not sde.is_linear and method != "em":
        raise ValueError(f"method {method!r} needs a linear process with Gaussian transitions; "
                         f"{type(sde).__name__} has a non-linear drift: use method='em'")
    fn = _METHODS[method]
    valid = accepted_kwargs(fn)
    if valid is not None:
        for key in options:
            if key not in valid or key in ("score", "sde", "x", "steps", "generator"):
                opts = [v for v in valid if v not in ("score", "sde", "x", "steps", "generator")]
                raise ValueError(f"unknown option {key!r} for sampler {method!r}; valid: {opts}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (n, *D) with positive sizes, got {shape}")
    if steps is not None:
        options["steps"] = check_positive_int(steps, "steps")
    if generator is not None and device is None:
        device = generator.device
    if x_init is None:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
        x = x_init.to(dtype=dtype)
    counter = CountingScore(score, shape[0], device=x.device)
    start = time.perf_counter()
    with torch.no_grad():
        out, info = fn(counter, sde, x, generator=generator, **options)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    info = {"method": method, "wall_time": time.perf_counter() - start,
            "score_calls": counter.calls, **info}
    return SampleResult(out, counter.counts, info)
