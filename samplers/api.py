"""`samplers.sample`: validate the request, pick the method, count every score evaluation.

The registry maps a method name to a function `fn(score, sde, x, *, steps, generator, loop,
**options) -> (samples, info)`; `sample` draws the prior (or takes `x_init`), optionally
teleports it to `t_start`, wraps the score in `CountingScore` (NFE per sample, NaN/inf guard),
and runs `fn` eagerly or as replayed CUDA graphs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from samplers.closed_form import closed_form
from samplers.diffusers_adapter import SCHEDULERS, diffusers_sampler
from samplers.dpm_solver import dpm_solver, dpm_solver_sde
from samplers.em import euler_maruyama
from samplers.fkc import fkc_anneal
from samplers.ggf import gotta_go_fast
from samplers.heun import heun
from samplers.inputs import (
    check_device_dtype,
    check_shape,
    check_x_init,
    per_sample_streams,
)
from samplers.jacobi import jacobi
from samplers.kernels.compile import compile_score
from samplers.kernels.graph import check_capture, sample_graphed
from samplers.loop import Callback, Loop, StopSampling
from samplers.ode import probability_flow
from samplers.pc import predictor_corrector
from samplers.reflected import (
    REFLECTED_METHODS,
    REFLECTED_ONLY,
    reflected_em,
    reflected_ode,
    reflected_pc,
)
from samplers.result import CountingScore, FiniteGuard, SampleResult
from samplers.teleport import MODES as TELEPORT_MODES
from samplers.teleport import ODE_METHODS, GaussianTeleport
from samplers.unipc import unipc
from scorekit._validate import accepted_kwargs, check_positive_int
from scorekit.processes import SDE, Score

__all__ = ["sample", "available", "register"]

_METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {
    "em": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow,
    "heun": heun,
    "ggf": gotta_go_fast,
    "closed_form": closed_form,
    "fkc": fkc_anneal,
    "reflected_em": reflected_em,
    "reflected_pc": reflected_pc,
    "reflected_ode": reflected_ode,
    "jacobi": jacobi,
    "dpm_solver": dpm_solver,
    "dpm_solver_sde": dpm_solver_sde,
    "unipc": unipc,
    **{name: diffusers_sampler(name) for name in SCHEDULERS},
}

_SIMPLEX_METHODS = ("jacobi",)  # samplers of processes on the simplex (stick coordinates)


def available() -> list[str]:
    """Names accepted by `sample(method=...)`."""
    return sorted(_METHODS)


def register(name: str, fn: Callable[..., tuple[torch.Tensor, dict]]) -> None:
    """Add a method `fn(score, sde, x, *, steps, generator, loop, **options) -> (x, info)`.

    `loop` (a `samplers.loop.Loop`) is optional: a method that takes it reports each step
    (`loop.report`) and so honours `callback` / `progress`; see README "Architecture"."""
    _METHODS[name] = fn


def sample(score: Score, sde: SDE, shape: tuple[int, ...], method: str = "em",
           steps: int | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           x_init: torch.Tensor | None = None, teleport: GaussianTeleport | None = None,
           t_start: float | str | None = None, teleport_mode: str | None = None,
           teleport_thresh: float = 0.99, check_finite: bool = True,
           capture: str | None = None, compile: bool | dict[str, Any] = False,
           callback: Callback | None = None, progress: bool = False,
           seed: int | None = None, seeds: torch.Tensor | None = None,
           **options: Any) -> SampleResult:
    """Draw `shape[0]` samples by integrating the reverse process from the prior at T to eps.

    `steps` defaults to the method's own default (or to the length of an explicit `grid` of
    times); `options` go to the method (e.g. `snr` for "pc", `denoise` for both). NFE is
    counted by wrapping `score`, never derived from `steps`.

    Randomness: `seed=s` gives sample i the noise stream of seed s + i (`seeds=`: a (B,) tensor
    of one seed per sample), a counter-based Philox stream (`scorekit.rng.SampleStreams`): row
    i is the same whatever the batch size, the split into batches or ranks, `capture` or
    `use_triton` (on CPU bit for bit, as long as the score treats rows independently; across
    devices and between the PyTorch and kernel paths up to float rounding). `generator=`
    (a torch.Generator) is faster on CPU but batch-dependent: one stream for the whole batch,
    so sample i changes with the batch size. Population methods ("fkc") resample across the
    batch, so their samples depend on the batch by construction. As in EDM, consecutive seeds
    overlap: `seed=0` and `seed=1` of n samples share n - 1 streams, so independent
    repetitions take disjoint ranges (e.g. `seed=r * n`, or `seeds=` of their own).

    Per step: `callback(i, t, x, x0_hat)` is called once per step of every method, with the
    state x (B, *D) at the time t (B,) where the step evaluated the score and the posterior
    mean x0_hat that evaluation gives (None for Dirichlet and non-linear processes); it gets
    copies. Returning True stops sampling: `res.x` is then that step's x0_hat and
    `res.info["stopped_at_step"]` its index. `progress=True` shows a tqdm bar.

    Teleportation: with `teleport=GaussianTeleport(...)` the prior draws (or `x_init`, taken to
    be at T) are moved in closed form to `t_start`, where `method` takes over with its usual
    number of steps on [eps, t_start]. `teleport_mode`: "ode" (the PF-ODE map; default for the
    ODE methods and for ggf with ode=True), "marginal" (fresh draws of the Gaussian's marginal;
    default for SDE methods) or "conditional". `t_start="auto"` (the default with a teleport)
    takes `teleport.suggest_t_start(score, thresh=teleport_thresh)`: the smallest t from which
    up the score is explained by the Gaussian's to that fraction, probed on the Gaussian's own
    marginal draws (up to 32 t x 512 evaluations: counted in the NFE, spread over the batch,
    `info["t_start_probe_nfe"]` per sample; pass a number, e.g. from
    `teleport.suggest_t_start(score)` once, to pay it once for many calls).
    Without a teleport, `t_start` needs `x_init`, taken to be a draw at t_start.

    check_finite: stop with `NonFiniteError` (naming the evaluation step, t and the fraction of
    bad entries) as soon as the score returns NaN/inf, and check the final samples; see
    `FiniteGuard` for its cost (one reduction per evaluation, no per-step sync on GPU).

    Speed (see `samplers.kernels`): the fixed-step methods fuse each update into one Triton
    kernel on CUDA (`use_triton=False` opts out). capture="graph" (CUDA, "em"/"pc"/"heun")
    replays the whole solve as cached CUDA graphs (`graph_mode` "auto"/"loop"/"step";
    `samplers.clear_graphs()` frees them); inside the graph only the final samples are checked
    for NaN/inf, and there are no per-step callbacks. compile=True (or a dict of torch.compile
    options, e.g. {"backend": "aot_eager"}) compiles the score. Neither changes the counted NFE.
    """
    method = _resolve_method(method, sde)
    fn = _METHODS[method]
    valid = accepted_kwargs(fn)
    if capture not in (None, "graph"):
        raise ValueError(f"capture must be None or 'graph', got {capture!r}")
    graph_mode = options.pop("graph_mode", "auto") if capture == "graph" else None
    internal = ("score", "sde", "x", "steps", "generator", "loop")
    if valid is not None:
        for key in options:
            if key not in valid or key in internal:
                opts = [v for v in valid if v not in internal]
                raise ValueError(f"unknown option {key!r} for sampler {method!r}; valid: {opts}")
    loop = _make_loop(method, valid, capture, callback, progress)
    if loop is not None:
        options["loop"] = loop
    shape = check_shape(shape)
    if steps is not None:
        options["steps"] = check_positive_int(steps, "steps")
    device = check_device_dtype(generator, device, dtype)
    generator = per_sample_streams(generator, seed, seeds, shape[0], device)
    if x_init is None:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)
    else:
        x = check_x_init(x_init, shape, device, dtype)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if teleport is not None or t_start is not None:
        with torch.no_grad():
            x, extra = _teleport(score, sde, x, method, fn, teleport, t_start, teleport_mode,
                                 teleport_thresh, generator, options, x_init is not None)
        options["t_start"] = extra["t_start"]
    if capture == "graph":
        check_capture(method, x, options)
    if compile:
        score = compile_score(score, compile, captured=capture == "graph",
                              varying_batch=method == "ggf")
    guard = FiniteGuard() if check_finite else None
    counter = CountingScore(score, shape[0], device=x.device, guard=guard)
    try:
        with torch.no_grad():
            if capture == "graph":
                out, info = sample_graphed(counter, sde, x, method, fn, options, generator,
                                           graph_mode)
            else:
                out, info = fn(counter, sde, x, generator=generator, **options)
    except StopSampling as stop:
        out, info = stop.x0, {"stopped_at_step": stop.step}
    if guard is not None:
        guard.final(out, counter.calls)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    info = {"method": method, "wall_time": time.perf_counter() - start,
            "score_calls": counter.calls, **extra, **info}
    counts = counter.counts
    if extra.get("t_start_probe_evals"):  # t_start="auto": its probe, shared by the batch
        info["t_start_probe_nfe"] = extra["t_start_probe_evals"] / shape[0]
        counts = counts.double() + info["t_start_probe_nfe"]
    return SampleResult(out, counts, info)


def reports_steps(method: str, sde: SDE, capture: str | None = None) -> bool:
    """Whether `sample(method=..., capture=...)` can drive a per-step callback / progress bar
    for `sde` (False for unknown methods: `sample` itself names the error)."""
    try:
        fn = _METHODS[_resolve_method(method, sde)]
    except ValueError:
        return False
    valid = accepted_kwargs(fn)
    return capture != "graph" and (valid is None or "loop" in valid)


def _make_loop(method: str, valid: list[str] | None, capture: str | None,
               callback: Callback | None, progress: bool) -> Loop | None:
    """The step driver for the method (None: the method's default, which reports nothing)."""
    if callback is None and not progress:
        return None
    if capture == "graph":
        raise ValueError("callback / progress need the eager loop; a captured CUDA graph runs "
                         "no Python between steps (sample without capture='graph')")
    if valid is not None and "loop" not in valid:
        raise ValueError(f"sampler {method!r} does not report its steps (its function takes "
                         f"no `loop`), so callback / progress are not available for it")
    return Loop(callback, progress, desc=method)


def _resolve_method(method: str, sde: SDE) -> str:
    """The registered method that samples `sde`: "em"/"pc" become their reflected versions for
    a reflected process, simplex processes take only the simplex samplers; raises for
    combinations that would sample the wrong process."""
    if method not in _METHODS:
        raise ValueError(f"unknown sampler method {method!r}; valid: {available()}")
    reflected = list(REFLECTED_ONLY)
    if getattr(sde, "on_simplex", False) != (method in _SIMPLEX_METHODS):
        raise ValueError(f"method {method!r} and process {type(sde).__name__} do not match: "
                         f"simplex processes (JacobiDiffusion) take {sorted(_SIMPLEX_METHODS)}, "
                         "the others take every other method")
    if getattr(sde, "on_simplex", False):
        return method
    if sde.is_reflected:
        method = REFLECTED_METHODS.get(method, method)
        if method not in reflected:
            raise ValueError(f"method {method!r} does not keep samples in the box of "
                             f"{type(sde).__name__}; valid: {sorted(REFLECTED_METHODS)} "
                             f"(mapped to the reflected steps) or {reflected}")
    elif method in reflected:
        raise ValueError(f"method {method!r} needs a scorekit.reflected.ReflectedSDE, got "
                         f"{type(sde).__name__}")
    elif not sde.is_linear and method != "em":
        raise ValueError(f"method {method!r} needs a linear process with Gaussian transitions; "
                         f"{type(sde).__name__} has a non-linear drift: use method='em'")
    return method


def _teleport(score: Score, sde: SDE, x: torch.Tensor, method: str, fn: Callable, teleport,
              t_start: float | str | None, mode: str | None, thresh: float,
              generator: torch.Generator | None, options: dict, have_x_init: bool
              ) -> tuple[torch.Tensor, dict]:
    """Validate the teleport options, pick t_start, and move x from T to it."""
    valid = accepted_kwargs(fn)
    if valid is not None and "t_start" not in valid:
        raise ValueError(f"sampler {method!r} does not take t_start, so it cannot start after "
                         f"T (teleport)")
    if teleport is not None and sde.is_reflected:
        raise ValueError(f"Gaussian teleportation ignores the box of {type(sde).__name__}; "
                         "sample without teleport")
    if teleport is not None and not isinstance(teleport, GaussianTeleport):
        raise TypeError(f"teleport must be a samplers.GaussianTeleport, got "
                        f"{type(teleport).__name__}")
    extra: dict[str, Any] = {}
    if teleport is None:
        if mode is not None:
            raise ValueError("teleport_mode needs teleport=GaussianTeleport(...)")
        if t_start == "auto" or not have_x_init:
            raise ValueError("t_start without a teleport needs x_init (a draw at t_start); "
                             "pass teleport=GaussianTeleport(...) to start from the prior")
    else:
        if teleport.dim != x[0].numel():
            raise ValueError(f"teleport was fitted in d={teleport.dim}, samples have "
                             f"{x[0].numel()} elements")
        if teleport.sde is not sde and repr(teleport.sde) != repr(sde):
            raise ValueError(f"teleport was built for {teleport.sde!r}, sampling uses {sde!r}")
        if t_start is None or t_start == "auto":
            # A fixed probe seed: t_start does not depend on (or consume) the caller's RNG.
            t_start, probe = teleport.suggest_t_start(score, thresh=thresh,
                                                      generator=torch.Generator().manual_seed(0))
            extra["t_start_probe"] = probe
            extra["t_start_probe_evals"] = len(probe["t"]) * 512
    if isinstance(t_start, str) or not isinstance(t_start, (int, float)):
        raise ValueError(f"t_start must be a number in (eps, T] or 'auto', got {t_start!r}")
    t_start = float(t_start)
    if not sde.eps < t_start <= sde.T:
        raise ValueError(f"t_start={t_start:g} must lie in (eps, T] = ({sde.eps:g}, {sde.T:g}]")
    if teleport is not None:
        ode = method in ODE_METHODS or (method == "ggf" and options.get("ode", False))
        mode = mode or ("ode" if ode else "marginal")
        if mode not in TELEPORT_MODES:
            raise ValueError(f"unknown teleport_mode {mode!r}; valid: {list(TELEPORT_MODES)}")
        x = teleport.teleport(x, t_start, mode, generator=generator)
        extra["teleport_mode"] = mode
    extra["t_start"] = t_start
    return x, extra
