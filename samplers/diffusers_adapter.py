"""diffusers' schedulers (DPM-Solver++, UniPC, Euler) driven by a scorekit score: interop with
the library users know ("dpm_solver_diffusers", "unipc_diffusers", "euler_diffusers"); the
native continuous-time solvers are "dpm_solver" and "unipc" (`samplers.dpm_solver`, `.unipc`).

Any linear process is seen by the scheduler in variance-preserving form: with the noise level
s_t = sigma_t / alpha_t, x_vp = x / sqrt(alpha_t^2 + sigma_t^2) has alpha_bar = 1 / (1 + s_t^2)
and the same noise eps, so the epsilon "model output" is eps_hat = -sigma_t s(x, t) in every
coordinate system. The scheduler is built from a table of M times t_n through `trained_betas`,
so its `alphas_cumprod[n]` is the process's alpha_bar(t_n) (no re-discretised beta schedule),
and timestep n maps back to t_n. The table is uniform in log s (so diffusers' evenly spaced
timesteps are uniform in lambda: at 20 steps on a uniform-t table DPM-Solver++ was ~10x worse);
a process whose s(eps) is below 1e-3 (sub-VP) gets a table from where s = 1e-3 (diffusers keeps
alphas_cumprod in float32), so no entry repeats a floored value. The solvers are diffusers'.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch import Tensor

from samplers.grids import time_grid
from samplers.loop import EAGER, Loop
from scorekit.processes import SDE, Process, Score, compute_dtype
from scorekit.processes.predictions import eps_from_score

SCHEDULERS = {
    "dpm_solver_diffusers": ("DPMSolverMultistepScheduler",
                   {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True,
                    "final_sigmas_type": "zero"}),
    "unipc_diffusers": ("UniPCMultistepScheduler",
              {"solver_order": 2, "solver_type": "bh2", "predict_x0": True,
               "final_sigmas_type": "zero"}),
    # Euler: diffusers' recommended Karras sigmas (rho = 7), better for a first-order method
    # than uniform log steps.
    "euler_diffusers": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero",
                                                   "use_karras_sigmas": True}),
}
N_TRAIN = 1000
SIGMA_STATE = {"euler_diffusers"}  # schedulers whose sample is x0 + s eps (not VP form)


# diffusers keeps alphas_cumprod in float32, where 1 / (1 + s^2) rounds to 1 for s < ~3e-4.
MIN_LEVEL = 1e-3


def _alpha_bar_table(sde: SDE, n_train: int, table: str | None = None,
                     t_max: float | None = None) -> tuple[Tensor, Tensor]:
    """(t_n, alpha_bar_n), float64, n = 0..n_train-1, increasing in t.

    "logsnr" (default) spaces the noise level geometrically, "uniform" spaces t_n uniformly on
    [eps, t_max] (t_max defaults to T); both by `time_grid`.
    A process whose noise level at eps is below MIN_LEVEL (sub-VP) gets a table that starts
    where it reaches MIN_LEVEL, so the table stays exact where the scheduler reads it.
    """
    table = table or "logsnr"
    if table not in ("uniform", "logsnr"):
        raise ValueError(f"table must be 'uniform' or 'logsnr', got {table!r}")
    process = Process(sde)
    # Below MIN_LEVEL the table starts where s = MIN_LEVEL: floored entries would repeat one
    # time (zero steps between them) wherever the schedulers pick them.
    t_floor = float(process.t_of_noise_level(torch.tensor([MIN_LEVEL], dtype=torch.float64)))
    t_end = sde.eps if float(process.noise_level(torch.tensor([sde.eps], dtype=torch.float64))
                          ) >= MIN_LEVEL else t_floor
    t = time_grid(process, n_train - 1, table, t_start=t_max, t_end=t_end).flip(0)
    level = process.noise_level(t).clamp_min(MIN_LEVEL)
    return t, 1.0 / (1.0 + level**2)


def make_scheduler(kind: str, sde: SDE, n_train: int = N_TRAIN, table: str | None = None,
                   t_max: float | None = None, **overrides: Any):
    """A diffusers scheduler whose alphas_cumprod are the process's alpha_bar(t_n) exactly,
    with its training range [eps, t_max] (t_max < T: a teleported start)."""
    import diffusers

    if kind not in SCHEDULERS:
        raise ValueError(f"unknown diffusers scheduler {kind!r}; valid: {sorted(SCHEDULERS)}")
    cls_name, defaults = SCHEDULERS[kind]
    cls = getattr(diffusers, cls_name)
    params = {**defaults, **overrides}
    valid = set(inspect.signature(cls.__init__).parameters)
    for key in params:
        if key not in valid:
            raise ValueError(f"{cls_name} (diffusers {diffusers.__version__}) has no option "
                             f"{key!r}")
    return cls(num_train_timesteps=n_train, trained_betas=trained_betas(sde, n_train, table, t_max),
               prediction_type="epsilon", **params)


def trained_betas(sde: SDE, n_train: int = N_TRAIN, table: str | None = None,
                  t_max: float | None = None) -> list[float]:
    """The `trained_betas` that make a diffusers scheduler's alphas_cumprod[n] equal the
    process's alpha_bar(t_n) on the table of `_alpha_bar_table`."""
    _, abar = _alpha_bar_table(sde, n_train, table, t_max)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1 - abar / prev).clamp(0.0, 0.999999).tolist()


@contextlib.contextmanager
def _float32_default():
    """The schedulers mix their float32 tables with helper tensors made in the default dtype
    (UniPC solves for its weights with both): under a float64 default (a common way to ask for
    float64 samples) that solve raised "Expected A and B to have the same dtype"."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def diffusers_sampler(kind: str):
    """Build the sampler function for `samplers.sample(method=kind)`."""

    def run(score: Score, sde: SDE, x: Tensor, *, steps: int = 20,
            table: str | None = None, scheduler_kwargs: dict | None = None,
            t_start: float | None = None, generator: torch.Generator | None = None,
            loop: Loop = EAGER) -> tuple[Tensor, dict]:
        # A later start (teleport) rebuilds the table on [eps, t_start], so the scheduler's
        # first timestep is t_start and its steps cover only the remaining range.
        sched = make_scheduler(kind, sde, table=table, t_max=t_start, **(scheduler_kwargs or {}))
        sched.set_timesteps(steps)  # resets multistep history: a fresh solve every call
        t_table, _ = _alpha_bar_table(sde, sched.config.num_train_timesteps, table, t_start)
        alpha, sigma = Process(sde).marginal(t_table)
        norm = torch.sqrt(alpha**2 + sigma**2)  # x = norm * x_vp
        b = x.shape[0]
        # Scheduler state: VP form for DPM/UniPC, x / alpha (= x_vp sqrt(1 + s^2)) for the
        # sigma-parametrised Euler. Not x_vp * init_noise_sigma: with "linspace" spacing diffusers
        # sets that to s_max, not sqrt(1 + s_max^2) (equal only while s_max >> 1, i.e. from T).
        process = Process(sde)
        first = int(sched.timesteps[0])
        if kind in SIGMA_STATE:
            # Its Karras sigmas fall between table entries: evaluate the score at the time whose
            # noise level is the scheduler's sigma, not at the nearest table entry.
            levels = sched.sigmas[:-1].to(torch.float64)
            t_steps = process.t_of_noise_level(levels)
            alpha_s, sigma_s = process.marginal(t_steps)
            state = x / float(alpha_s[0])
        else:
            state = x / float(norm[first])
        timesteps = list(sched.timesteps)
        for k in loop.range(len(timesteps)):
            n = timesteps[k]
            if kind in SIGMA_STATE:  # x = alpha (x0 + s eps) = alpha * state
                t_k, a_k, sig_k = float(t_steps[k]), float(alpha_s[k]), float(sigma_s[k])
                sched.scale_model_input(state, n)  # only marks the step as scaled
                xs = state * a_k
            else:
                i = int(round(float(n)))
                t_k, sig_k = float(t_table[i]), float(sigma[i])
                xs = sched.scale_model_input(state, n) * float(norm[i])  # x_vp -> x
            t = torch.full((b,), t_k, dtype=compute_dtype(x.dtype), device=x.device)
            s = score(xs, t)
            loop.report(k, t, xs, s, process)
            with _float32_default():
                state = sched.step(eps_from_score(s, sig_k), n, state).prev_sample
        # With final sigma zero the last state is the x0 estimate (same in every coordinate).
        return state.to(x.dtype), {"scheduler": type(sched).__name__,
                                   "timesteps": [int(round(float(n))) for n in sched.timesteps]}

    run.__name__ = f"diffusers_{kind}"
    run.__doc__ = (f"diffusers {SCHEDULERS[kind][0]} driven by the score; x: (B, *D). "
                   f"NFE = steps; the output is the final x0 estimate.")
    return run


