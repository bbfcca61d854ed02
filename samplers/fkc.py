"""Feynman–Kac correctors: SMC sampling of annealed, product and CFG targets (Skreta et al. 2025).

Target path pi_t ∝ prod_j q_{j,t}^{a_j} of the models' marginals under one linear process. The
particles follow the reverse SDE dx = [-f + g^2 s_pi] dtau + g dW with s_pi = sum_j a_j s_j and
carry d log w = G dtau, G = (sum_j a_j - 1) div f + 1/2 g^2 (|s_pi|^2 - sum_j a_j |s_j|^2); the
drift coefficient g^2 (not g^2/2) removes every score-divergence term. Weights live in float64
log space and are resampled when ESS / N drops below `ess_threshold`.

The particles start from pi_T ∝ prod_j prior^{a_j}, i.e. the prior with its variance divided by
A = sum_j a_j (the normalised pi_T when q_T is the prior), not from the prior itself: the
weights only correct the path, so a wrong start would be a bias the weights never see. Langevin
moves targeting pi_t (its score is exactly s_pi) after each step (`n_corrector`) re-spread the
particles inside each mode; without them a particle's weight stays correlated along its slow
path and the mode masses of one population scatter by several percentage points. The moves
are Metropolis-adjusted (MALA) with the log-density ratio from the trapezoid rule of the score
along the move, exact for Gaussian pi_t: unadjusted Langevin biased the mode masses by ~1
percentage point at the default step size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from samplers.grids import time_grid
from samplers.inputs import check_device_dtype, check_shape, per_sample_streams
from samplers.loop import EAGER, Loop, StopSampling
from samplers.result import CountingScore, FiniteGuard, SampleResult
from samplers.steps import langevin_step_size, reverse_drift
from scorekit import rng
from scorekit._validate import check_positive_int
from scorekit.processes import SDE, Process, Score, compute_dtype, per_sample

MODES = ("anneal", "product", "cfg")
RESAMPLERS = ("systematic", "multinomial", "stratified")
_N_SCORES = {"anneal": 1, "product": 2, "cfg": 2}


@dataclass
class FKCResult(SampleResult):
    """`SampleResult` plus normalised float64 log-weights (n,) of the final particles
    (log-softmax within each group; all -log N after a final resample; None when a callback
    stopped sampling early)."""

    log_weights: Tensor | None = None


def ess(log_w: Tensor) -> Tensor:
    """Effective sample size exp(2 LSE(log w) - LSE(2 log w)) over the last dim; (..., N) -> (...).
    Log-space throughout, so weights of 1e300 or exactly zero (-inf) are fine."""
    log_w = log_w.double()
    return torch.exp(2 * torch.logsumexp(log_w, -1) - torch.logsumexp(2 * log_w, -1))


def resample_indices(weights: Tensor, scheme: str = "systematic",
                     generator: torch.Generator | None = None) -> Tensor:
    """Ancestor indices (G, N) drawn from normalised weights (G, N), each row on its own.

    All three schemes are unbiased: E[#offspring of i] = N W_i. Systematic uses one uniform per
    row, stratified one per stratum; both have lower variance than multinomial.
    """
    if scheme not in RESAMPLERS:
        raise ValueError(f"unknown resample scheme {scheme!r}; valid: {list(RESAMPLERS)}")
    g, n = weights.shape
    w = weights.double()
    if scheme == "multinomial":
        return torch.multinomial(w, n, replacement=True, generator=generator)
    k = torch.arange(n, dtype=torch.float64, device=w.device)
    shape = (g, 1) if scheme == "systematic" else (g, n)
    u = rng.rand(shape, generator, torch.float64, w.device)
    cdf = torch.cumsum(w, dim=1)
    cdf = cdf / cdf[:, -1:]
    # right=True: particle i is picked iff cdf[i-1] <= u < cdf[i], so zero weights never are;
    # the clamp only catches u landing past a cdf that round-off left just below 1.
    idx = torch.searchsorted(cdf, (k + u) / n, right=True)
    return idx.clamp_max(n - 1)


def _potential(mode: str, s: list[Tensor], g2: float, a: tuple[float, ...]) -> Tensor:
    """Per-particle G without the div f term, in float64: (B,). The closed forms of each mode
    avoid the cancellation of |s_pi|^2 - sum_j a_j |s_j|^2."""
    sq = [v.double().flatten(1) for v in s]
    if mode == "anneal":
        beta = a[0]
        return 0.5 * beta * (beta - 1) * g2 * sq[0].pow(2).sum(1)
    if mode == "product":
        return g2 * (sq[0] * sq[1]).sum(1)
    w = a[1]  # cfg: a = (1 - w, w)
    return -0.5 * w * (1 - w) * g2 * (sq[1] - sq[0]).pow(2).sum(1)


def _combined(s: Sequence[Tensor], a: tuple[float, ...]) -> Tensor:
    """s_pi = sum_j a_j s_j."""
    return s[0] * a[0] if len(s) == 1 else s[0] * a[0] + s[1] * a[1]


def mala_move(scores: Sequence[Score], a: tuple[float, ...], x: Tensor, s: list[Tensor],
              t: Tensor, snr: float, groups: int, generator: torch.Generator | None
              ) -> tuple[Tensor, list[Tensor], Tensor]:
    """One Metropolis-adjusted Langevin move on pi_t ∝ prod_j q_{j,t}^{a_j}; x: (B, *D), s: the
    scores s_j at x. log pi(x') - log pi(x) is the trapezoid rule of s_pi along x -> x' (exact
    for quadratic log pi, O(|x' - x|^3) otherwise). Returns (x, scores at x, accepted (B,))."""
    s_pi = _combined(s, a)
    z = rng.randn(x.shape, generator, x.dtype, x.device)
    step = langevin_step_size(s_pi, z, snr, "batch_mean", groups)
    x_new = x + per_sample(step, x) * s_pi + per_sample(torch.sqrt(2 * step), x) * z
    s_new = [score(x_new, t) for score in scores]
    s_pi_new = _combined(s_new, a)
    dx = (x_new - x).flatten(1).double()
    log_pi = 0.5 * ((s_pi + s_pi_new).flatten(1).double() * dx).sum(1)
    back = (-dx - step.double()[:, None] * s_pi_new.flatten(1).double()).pow(2).sum(1)
    log_q = -back / (4 * step.double()) + 0.5 * z.flatten(1).double().pow(2).sum(1)
    u = rng.rand(x.shape[0], generator, torch.float64, x.device)
    accept = torch.log(u) < log_pi + log_q
    keep = per_sample(accept, x)
    return torch.where(keep, x_new, x), [torch.where(keep, vn, v) for v, vn in
                                          zip(s, s_new, strict=True)], accept


def log_z_prior(sde: SDE, a: tuple[float, ...], d: int) -> float:
    """log ∫ prior^A dx in d dimensions (A = sum a_j): -(A-1) d/2 log(2 pi s^2) - d/2 log A,
    the normaliser of pi_T when q_T is the prior N(0, s^2 I)."""
    big_a = sum(a)
    return -(big_a - 1) * d / 2 * math.log(2 * math.pi * sde.prior_std ** 2) \
        - d / 2 * math.log(big_a)


def fkc_loop(scores: Sequence[Score], mode: str, a: tuple[float, ...], sde: SDE, x: Tensor,
             ts: Tensor, groups: int, resample: str, ess_threshold: float,
             final_resample: bool, max_log_increment: float | None, weight_until: float | None,
             generator: torch.Generator | None, n_corrector: int = 0, snr: float = 0.16,
             log_zt: float = 0.0, loop: Loop = EAGER) -> tuple[Tensor, Tensor, dict]:
    """Weighted-particle EM from x ~ pi at ts[0] to ts[-1]; x: (B, *D), B = groups * N; after
    each step (and any resampling) `n_corrector` MALA moves that leave pi_t invariant.

    Returns (x, normalised log-weights (B,) float64, info); `log_zt` is log Z at ts[0]. Inner
    code: inputs are valid.
    """
    b = x.shape[0]
    n = b // groups
    d = x[0].numel()
    process = Process(sde)
    h = (ts[:-1] - ts[1:]).tolist()
    g2 = (process.diffusion(ts[:-1]) ** 2).tolist()
    f_rate = process.drift_rate(ts[:-1]).tolist()
    t_vec = ts.to(device=x.device, dtype=compute_dtype(x.dtype))
    t64 = ts.to(device=x.device)  # the step's coefficients in float64, as the weights use
    dev = x.device
    logw = torch.zeros(groups, n, dtype=torch.float64, device=dev)
    log_z = torch.full((groups,), log_zt, dtype=torch.float64, device=dev)
    accepted = torch.zeros((), dtype=torch.float64, device=dev)
    s = None  # scores at (x, t_i) when the last move already computed them
    ancestors = torch.arange(b, device=dev)
    offset = (torch.arange(groups, device=dev) * n)[:, None]
    ess_trace, resampled = [], []
    population = rng.population_generator(generator)  # resampling acts on the whole batch
    lo_norm = math.log(n)
    steps = len(h)
    for i in loop.range(steps):
        t = t_vec[i].expand(b)
        if s is None:
            s = [score(x, t) for score in scores]
        s_pi = _combined(s, a)
        loop.report(i, t, x, s_pi, process)
        if weight_until is None or float(ts[i]) >= weight_until:
            inc = h[i] * _potential(mode, s, g2[i], a)
            if max_log_increment is not None:
                inc = inc.clamp(-max_log_increment, max_log_increment)
            logw = logw + inc.view(groups, n)
            # div f = f_t d is the same for every particle: it only moves the normaliser.
            log_z = log_z + h[i] * (sum(a) - 1) * f_rate[i] * d
        z = rng.randn(x.shape, generator, x.dtype, dev)
        x = x + h[i] * reverse_drift(process, x, t64[i].expand(b), s_pi) \
            + (g2[i] * h[i]) ** 0.5 * z
        s = None
        e = ess(logw)
        ess_trace.append(e)
        last = i == steps - 1
        if not last or final_resample:
            do = torch.ones_like(e, dtype=torch.bool) if last else e < ess_threshold * n
            resampled.append(do)
            lse = torch.logsumexp(logw, dim=1)
            idx = resample_indices(torch.softmax(logw, dim=1), resample, population)
            idx = torch.where(do[:, None], idx, torch.arange(n, device=dev)) + offset
            # torch.where instead of a Python branch: no host sync on the decision.
            x = x[idx.flatten()]
            ancestors = ancestors[idx.flatten()]
            log_z = torch.where(do, log_z + lse - lo_norm, log_z)
            logw = torch.where(do[:, None], torch.zeros_like(logw), logw)
        if n_corrector:
            # Weights stay as they are: the moves leave pi_{t_{i+1}} invariant. Their last
            # scores are the next step's, so a move costs one evaluation.
            t1 = t_vec[i + 1].expand(b)
            s = [score(x, t1) for score in scores]
            for _ in range(n_corrector):
                x, s, acc = mala_move(scores, a, x, s, t1, snr, groups, generator)
                accepted = accepted + acc.sum()
    lse = torch.logsumexp(logw, dim=1)
    log_z = log_z + lse - lo_norm
    logw = logw - lse[:, None]
    ess_t = torch.stack(ess_trace).cpu()
    res_t = (torch.stack(resampled).cpu() if resampled
             else torch.zeros(0, groups, dtype=torch.bool))
    resample_steps = res_t[: steps - 1].any(1).nonzero().flatten().tolist()
    info = {
        "ess": ess_t[:, 0] if groups == 1 else ess_t,
        "resample_steps": resample_steps,
        "n_resample": int(res_t[: steps - 1].sum()),
        "unique_ancestors": [int(ancestors[k * n:(k + 1) * n].unique().numel())
                             for k in range(groups)],
        "log_Z": log_z.cpu(),
        "biased": max_log_increment is not None or weight_until is not None,
        "accept_rate": float(accepted) / max(1, b * steps * n_corrector),
    }
    return x, logw.flatten(), info


def _check_args(scores: Sequence[Score], mode: str, beta: float, guidance: float | None,
                resample: str, ess_threshold: float, groups: int, n: int, n_corrector: int,
                snr: float) -> tuple[float, ...]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {list(MODES)}")
    if len(scores) != _N_SCORES[mode]:
        raise ValueError(f"mode {mode!r} needs {_N_SCORES[mode]} score(s), got {len(scores)}")
    if not all(callable(s) for s in scores):
        raise TypeError("scores must be callables score(x, t)")
    if resample not in RESAMPLERS:
        raise ValueError(f"unknown resample scheme {resample!r}; valid: {list(RESAMPLERS)}")
    if isinstance(ess_threshold, bool) or not 0 < float(ess_threshold) <= 1:
        raise ValueError(f"ess_threshold must lie in (0, 1], got {ess_threshold!r}")
    check_positive_int(groups, "groups")
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be an integer >= 0, got {n_corrector!r}")
    if isinstance(snr, bool) or not (isinstance(snr, (int, float)) and 0 < snr < math.inf):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    if n % groups:
        raise ValueError(f"groups={groups} does not divide the number of particles {n}")
    if mode == "anneal":
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        return (float(beta),)
    if mode == "cfg":
        if not (isinstance(guidance, (int, float)) and math.isfinite(guidance)):
            raise ValueError(f"mode 'cfg' needs a finite guidance weight w, got {guidance!r}")
        return (1.0 - float(guidance), float(guidance))
    return (1.0, 1.0)


def fkc_sample(scores: Score | Sequence[Score], sde: SDE, shape: tuple[int, ...],
               mode: str = "anneal", beta: float = 2.0, guidance: float | None = None,
               steps: int = 500, resample: str = "systematic", ess_threshold: float = 0.5,
               generator: torch.Generator | None = None, groups: int = 1,
               final_resample: bool = False, grid: str = "uniform", n_corrector: int = 1,
               snr: float = 0.16, max_log_increment: float | None = None,
               weight_until: float | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32, check_finite: bool = True,
               callback=None, progress: bool = False, seed: int | None = None) -> FKCResult:
    """SMC over `shape[0]` weighted particles (n, *D) targeting, at eps, `q^beta` ("anneal", one
    score), `q1 q2` ("product") or `q_u^(1-w) q_c^w` ("cfg", scores (s_u, s_c), w = guidance),
    each normalised, of the models' eps-marginals.

    `groups` splits the particles into that many contiguous, independent SMC populations (e.g.
    one per prompt). The particles start from the prior with its variance divided by
    A = sum_j a_j (pi_T); after each step `n_corrector` MALA moves on pi_t (step size from `snr`,
    per population) re-spread them. NFE per particle: steps (1 + n_corrector) times the number
    of scores (1 anneal, 2 product / cfg), plus one per score for the first step when moves are
    on. `info["log_Z"]` estimates log ∫ prod_j q_{j,eps}^{a_j}, with an O(h) time-discretisation
    bias (product of two 1-D Gaussians: +0.17 at 200 steps, +0.04 at 1000); `info["accept_rate"]`
    is the moves' acceptance. Stabilisers, off by default and flagged by `info["biased"]`:
    `max_log_increment` clamps each step's log-weight increment (biases toward the proposal);
    `weight_until=t_w` stops weighting below t_w (the target becomes the one at t_w pushed
    through the uncorrected dynamics). `check_finite`, `callback`, `progress` and `seed` as in
    `samplers.sample` (the callback's x0_hat is the posterior mean under the combined score;
    with `seed`, each particle's moves have its own stream, the resampling one of the
    population's).
    """
    scores = [scores] if callable(scores) else list(scores)
    shape = check_shape(shape)
    a = _check_args(scores, mode, beta, guidance, resample, ess_threshold, groups, shape[0],
                    n_corrector, snr)
    steps = check_positive_int(steps, "steps")
    if not sde.is_linear:
        raise ValueError(f"fkc_sample needs a linear process (div f independent of x); got "
                         f"{type(sde).__name__}")
    if max_log_increment is not None and not max_log_increment > 0:
        raise ValueError(f"max_log_increment must be > 0 or None, got {max_log_increment!r}")
    if weight_until is not None and not sde.eps <= weight_until <= sde.T:
        raise ValueError(f"weight_until must lie in [eps, T], got {weight_until!r}")
    device = check_device_dtype(generator, device, dtype)
    generator = per_sample_streams(generator, seed, None, shape[0], device)
    # pi_T ∝ prior^A is the prior with its variance divided by A.
    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype) / sum(a) ** 0.5
    guard = FiniteGuard() if check_finite else None
    counters = [CountingScore(s, shape[0], device=x.device, guard=guard) for s in scores]
    start = time.perf_counter()
    try:
        with torch.no_grad():
            x, logw, info = fkc_loop(counters, mode, a, sde, x, time_grid(sde, steps, grid),
                                     groups, resample, float(ess_threshold), final_resample,
                                     max_log_increment, weight_until, generator, n_corrector,
                                     float(snr), log_z_prior(sde, a, x[0].numel()),
                                     Loop(callback, progress, "fkc"))
    except StopSampling as stop:  # the callback asked to stop: that step's estimates, no weights
        x, logw, info = stop.x0, None, {"stopped_at_step": stop.step}
    if guard is not None:
        guard.final(x, max(c.calls for c in counters))
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    info = {"method": "fkc", "mode": mode, "wall_time": time.perf_counter() - start,
            "score_calls": sum(c.calls for c in counters), **info}
    return FKCResult(x, sum(c.counts for c in counters), info, log_weights=logw)


def fkc_anneal(score: Score, sde: SDE, x: Tensor, *, steps: int = 500, beta: float = 2.0,
               mode: str = "anneal", grid: str = "uniform", resample: str = "systematic",
               ess_threshold: float = 0.5, final_resample: bool = True, n_corrector: int = 1,
               snr: float = 0.16, generator: torch.Generator | None = None,
               loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """`samplers.sample(method="fkc")`: the anneal mode (p^beta) of one score, resampled to equal
    weights at the end. x: prior draws (n, *D), tempered here to pi_T. Product and CFG need
    several models: call `fkc_sample` directly."""
    if mode != "anneal":
        raise ValueError(f"method 'fkc' through samplers.sample supports mode='anneal' only, "
                         f"got {mode!r}; for 'product'/'cfg' call samplers.fkc_sample")
    a = _check_args([score], mode, beta, None, resample, ess_threshold, 1, x.shape[0],
                    n_corrector, snr)
    x, logw, info = fkc_loop([score], mode, a, sde, x / sum(a) ** 0.5,
                             time_grid(sde, steps, grid), 1, resample, float(ess_threshold),
                             final_resample, None, None, generator, n_corrector, float(snr),
                             log_z_prior(sde, a, x[0].numel()), loop)
    return x, {**info, "log_weights": logw, "beta": a[0], "grid": grid}

