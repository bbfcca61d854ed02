"""Dirichlet diffusion on the simplex (DDSM, Avdeyev et al. 2023): stick-breaking of K - 1
independent Jacobi processes, stick k (0-based) with a = 1, b = K - 1 - k, so the stationary law
of x is Dirichlet(1, ..., 1).

`JacobiDiffusion` tabulates each stick's exact transition (series in `scorekit.jacobi`) from
v0 = 0 and v0 = 1 on a time x logit(v) grid, caches the tables as safetensors keyed by the
parameters, and offers forward noising, transition scores and per-category likelihoods. Scores
are x-space gradients projected to the simplex tangent (zero mean over categories); `gx_to_gv`
and `gv_to_gx` convert to and from the sticks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from scorekit import io, rng
from scorekit.processes.jacobi import (
    JacobiTable,
    beta_logpdf,
    beta_score,
    series_order,
    speed_balanced,
)

__all__ = ["JacobiDiffusion", "stick_breaking", "stick_breaking_inverse", "stick_log",
           "stick_logdet", "gx_to_gv", "gv_to_gx"]

_TABLE_VERSION = 1
_LOGIT_MAX = 16.0  # table range: v in [1.1e-7, 1 - 1.1e-7]; beyond it the end values are used


# --- stick-breaking ------------------------------------------------------------------------
def stick_breaking(v: Tensor) -> Tensor:
    """x_k = v_k prod_{j<k} (1 - v_j), x_K = prod_{j<K} (1 - v_j); v: (..., K-1) -> (..., K)."""
    rest = torch.cumprod(1 - v, dim=-1)
    ones = torch.ones_like(v[..., :1])
    return torch.cat([v, ones], dim=-1) * torch.cat([ones, rest], dim=-1)


def _tails(x: Tensor) -> Tensor:
    """tail_k = x_k + ... + x_K by a reversed cumsum (no 1 - cumsum cancellation); (..., K)."""
    return torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])


def stick_breaking_inverse(x: Tensor) -> Tensor:
    """v_k = x_k / (x_k + ... + x_K); x: (..., K) -> (..., K-1)."""
    return x[..., :-1] / _tails(x)[..., :-1]


def stick_log(x: Tensor) -> tuple[Tensor, Tensor]:
    """(log v, log(1 - v)) of the sticks of x, accurate near both ends; (..., K) -> 2x (..., K-1).
    """
    log_tail = torch.log(_tails(x))
    return torch.log(x[..., :-1]) - log_tail[..., :-1], log_tail[..., 1:] - log_tail[..., :-1]


def stick_logdet(v: Tensor) -> Tensor:
    """log |det d(x_1..x_{K-1}) / d(v_1..v_{K-1})| = sum_k (K-2-k) log(1 - v_k), 0-based k."""
    k = v.shape[-1]
    powers = torch.arange(k - 1, -1, -1, dtype=v.dtype, device=v.device)
    return (powers * torch.log1p(-v)).sum(-1)


def gx_to_gv(gx: Tensor, x: Tensor) -> Tensor:
    """Score in x (any ambient representative, (..., K)) -> score of the sticks' density.

    grad_v log p_V = J^T grad_x log p_X + grad_v log|det J| with J = dx/dv, written with tail
    sums: r_j (g_j - mean_{i>j}^x g_i) - (K-2-j) / (1 - v_j), r_j = x_j + ... + x_K.
    """
    tail = _tails(x)
    wsum = _tails(gx * x)
    later_mean = wsum[..., 1:] / tail[..., 1:]
    k = x.shape[-1]
    powers = torch.arange(k - 2, -1, -1, dtype=x.dtype, device=x.device)
    return tail[..., :-1] * (gx[..., :-1] - later_mean) - powers * tail[..., :-1] / tail[..., 1:]


def gv_to_gx(gv: Tensor, x: Tensor) -> Tensor:
    """Inverse of `gx_to_gv`, returning the tangent representative (zero mean over K)."""
    tail = _tails(x)
    k = x.shape[-1]
    powers = torch.arange(k - 2, -1, -1, dtype=x.dtype, device=x.device)
    diff = (gv + powers * tail[..., :-1] / tail[..., 1:]) / tail[..., :-1]  # g_j - later mean
    cols = [torch.zeros_like(x[..., -1])]
    later = cols[0]
    for j in range(k - 2, -1, -1):  # g_j = diff_j + mean of later g's (x-weighted), back to front
        g = diff[..., j] + later
        later = (g * x[..., j] + later * tail[..., j + 1]) / tail[..., j]
        cols.append(g)
    g = torch.stack(cols[::-1], dim=-1)
    return g - g.mean(-1, keepdim=True)


# --- the process ---------------------------------------------------------------------------
def _default_cache() -> Path:
    return Path(os.environ.get("SCOREKIT_CACHE", Path.home() / ".cache" / "scorekit")) / "jacobi"


class JacobiDiffusion:
    """Dirichlet diffusion with `num_categories` K >= 2 on t in [eps, T], eps = T / n_time.

    Tables: `n_time` times T i / n_time (i = 1..n_time) x `n_grid` logit-uniform v values, per
    stick and start (0 or 1); series order `series_order(eps)` unless given. `speed="balanced"`
    gives stick k the speed 2 / (a_k + b_k) (mean relaxation e^-t for every stick); a number sets
    one speed for all. `cache_dir=None` uses $SCOREKIT_CACHE/jacobi (~/.cache/scorekit), False
    disables caching.
    """

    is_linear = False
    on_simplex = True

    def __init__(self, num_categories: int, T: float = 1.0, n_time: int = 400,
                 n_grid: int = 1024, speed: str | float = "balanced", order: int | None = None,
                 cache_dir: str | Path | bool | None = None):
        if isinstance(num_categories, bool) or not isinstance(num_categories, int) \
                or num_categories < 2:
            raise ValueError(f"num_categories must be an integer >= 2, got {num_categories!r}")
        if not T > 0:
            raise ValueError(f"T must be > 0, got {T!r}")
        for name, val, lo in (("n_time", n_time, 2), ("n_grid", n_grid, 16)):
            if isinstance(val, bool) or not isinstance(val, int) or val < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        if speed != "balanced" and not (isinstance(speed, (int, float)) and speed > 0):
            raise ValueError(f"speed must be 'balanced' or a number > 0, got {speed!r}")
        self.K, self.T, self.n_time, self.n_grid = num_categories, float(T), n_time, n_grid
        self.eps = self.T / n_time
        self.a = [1.0] * (self.K - 1)
        self.b = [float(self.K - 1 - k) for k in range(self.K - 1)]
        self.speeds = [speed_balanced(a, b) if speed == "balanced" else float(speed)
                       for a, b in zip(self.a, self.b, strict=True)]
        self.speed = speed
        self.order = order
        self.cache_dir = cache_dir
        self.times = self.T * torch.arange(1, n_time + 1, dtype=torch.float64) / n_time
        self._tables = self._load_or_build()
        self.loss_weight = self._loss_weight()
        table = self._tables["table"]
        # Lookup layouts: rows of (log p, score) and CDF rows, indexed by (stick, start, time).
        self._pairs = table[..., :2].contiguous().reshape(-1, 2)
        self._cdf = table[..., 2].contiguous().reshape(-1, n_grid)
        self._grid = self._tables["grid"]

    @property
    def device(self) -> torch.device:
        return self._pairs.device

    def to(self, device: torch.device | str) -> JacobiDiffusion:
        """Move the lookup tables to `device` (in place); inputs must live there too."""
        self._pairs, self._cdf = self._pairs.to(device), self._cdf.to(device)
        self._grid = self._grid.to(device)
        return self

    def _check_device(self, x: Tensor) -> None:
        if x.device != self.device:
            raise ValueError(f"inputs on {x.device} but the JacobiDiffusion tables on "
                             f"{self.device}; call jacobi.to({str(x.device)!r})")

    # --- tables ----------------------------------------------------------------------------
    def _key(self) -> dict:
        return {"K": self.K, "T": self.T, "n_time": self.n_time, "n_grid": self.n_grid,
                "speeds": self.speeds, "order": self.order, "logit_max": _LOGIT_MAX,
                "version": _TABLE_VERSION}

    def _load_or_build(self) -> dict[str, Tensor]:
        path = None
        if self.cache_dir is not False:
            root = _default_cache() if self.cache_dir in (None, True) else Path(self.cache_dir)
            digest = hashlib.sha256(json.dumps(self._key(), sort_keys=True).encode()).hexdigest()
            path = root / f"jacobi_K{self.K}_{digest[:16]}.safetensors"
            if path.is_file():
                try:
                    tensors, meta = io.load(path)
                    if meta.get("key") == self._key():
                        return tensors
                except io.CheckpointError:
                    pass  # unreadable cache: rebuild and overwrite
        tensors = self._build()
        if path is not None:
            io.save(path, tensors, {"key": self._key()})
        return tensors

    def _build(self) -> dict[str, Tensor]:
        """(K-1, 2, n_time, n_grid, 3) float32 [log p, score, CDF] plus the v grid (float64)."""
        rows = []
        for a, b, s in zip(self.a, self.b, self.speeds, strict=True):
            order = self.order or series_order(a, b, self.eps, s)
            per_start = []
            for v0 in (0.0, 1.0):
                tab = JacobiTable.build(v0, self.times, a, b, s, self.n_grid, _LOGIT_MAX, order)
                per_start.append(torch.stack([tab.logp, tab.score, tab.cdf], dim=-1))
            rows.append(torch.stack(per_start))
        return {"table": torch.stack(rows).float(), "grid": tab.grid}

    def _loss_weight(self) -> Tensor:
        """w(t): E[sum_k v_k (1 - v_k) s_k^2] of the noised target score for uniformly drawn
        categories, by quadrature on the tables, normalised to mean 1 over the time grid;
        (n_time,)."""
        grid = self._tables["grid"]
        tab = self._tables["table"].double()
        dens = torch.exp(tab[..., 0])
        mid = 0.5 * (grid[1:] + grid[:-1])
        dv = grid[1:] - grid[:-1]
        integrand = dens * grid * (1 - grid) * tab[..., 1] ** 2   # (K-1, 2, T, V)
        e_moment = (0.5 * (integrand[..., 1:] + integrand[..., :-1]) * dv).sum(-1)
        w = torch.zeros(self.n_time, dtype=torch.float64)
        for k in range(self.K - 1):
            beta_int = torch.exp(beta_logpdf(mid, self.a[k], self.b[k])) * mid * (1 - mid) \
                * beta_score(mid, self.a[k], self.b[k]) ** 2
            stationary = float((beta_int * dv).sum())
            # category c > k: stick from 0; c = k: from 1; c < k: stationary
            w += ((self.K - 1 - k) * e_moment[k, 0] + e_moment[k, 1] + k * stationary) / self.K
        return w / w.mean()

    # --- lookups ---------------------------------------------------------------------------
    def _time_position(self, t: Tensor) -> Tensor:
        """Fractional index of t on the time grid (float64), snapped to grid points within
        float32 rounding so that grid times cast to float32 still hit their table row."""
        pos = (t.double() / self.T * self.n_time - 1).clamp(0, self.n_time - 1)
        return torch.where((pos - pos.round()).abs() < 1e-4, pos.round(), pos)

    def vertex_sticks(self, x0: Tensor, dtype: torch.dtype, delta: float = 1e-6) -> Tensor:
        """Sticks of the one-hot x0 (B, *D, K) held delta inside [0, 1]: delta before the hot
        category, 1 - delta at it, 1/2 after it (those do not move x); -> (B, *D, K-1)."""
        cat = x0.argmax(-1, keepdim=True)
        j = torch.arange(self.K - 1, device=x0.device)
        v = torch.where(j == cat, 1.0 - delta, torch.where(j < cat, delta, 0.5))
        return v.to(dtype)

    def _positions(self, t: Tensor, log_v: Tensor, log_1mv: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fractional table indices: time (B, 1...) and logit-v (..., K-1), floor + weight."""
        tpos = self._time_position(t).clamp(max=self.n_time - 1 - 1e-9)
        zpos = ((log_v - log_1mv).double() + _LOGIT_MAX) / (2 * _LOGIT_MAX) * (self.n_grid - 1)
        zpos = zpos.clamp(0, self.n_grid - 1 - 1e-9)
        ti, zi = tpos.floor().long(), zpos.floor().long()
        return ti, (tpos - ti).to(log_v.dtype), zi, (zpos - zi).to(log_v.dtype)

    def _lookup(self, t: Tensor, log_v: Tensor, log_1mv: Tensor) -> Tensor:
        """Bilinear [log p, score] of every stick from both starts: (..., K-1, 2, 2) where the
        second-to-last axis is the start (0, 1); t: (B,), log_v: (B, *D, K-1)."""
        self._check_device(log_v)
        ti, tw, zi, zw = self._positions(t.to(log_v.device), log_v, log_1mv)
        shape = (-1,) + (1,) * (log_v.dim() - 1)
        ti, tw = ti.reshape(shape), tw.reshape(shape)
        stick = torch.arange(self.K - 1, device=log_v.device)
        flat = self._pairs
        out = 0
        for dt, wt in ((0, 1 - tw), (1, tw)):
            for dz, wz in ((0, 1 - zw), (1, zw)):
                zz = (zi + dz).clamp(max=self.n_grid - 1)
                tt = (ti + dt).clamp(max=self.n_time - 1)
                base = (stick * 2 * self.n_time + tt) * self.n_grid + zz      # start 0
                rows = torch.stack([base, base + self.n_time * self.n_grid], dim=-1)
                out = out + (wt * wz)[..., None, None] * flat[rows].to(log_v.dtype)
        return out

    def _stationary(self, log_v: Tensor, log_1mv: Tensor) -> tuple[Tensor, Tensor]:
        """Stationary Beta(1, b_k) log density and score of each stick; (..., K-1)."""
        b = torch.tensor(self.b, dtype=log_v.dtype, device=log_v.device)
        return torch.log(b) + (b - 1) * log_1mv, -(b - 1) / torch.exp(log_1mv)

    def category_terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Per-category log q(v | e_c) (..., K) and d/dv log q(v | e_c) (..., K, K-1).

        Given x0 = e_c, sticks j < c start at 0, stick c at 1, sticks j > c are stationary.
        """
        log_v, log_1mv = stick_log(x)
        terms = self._lookup(t, log_v, log_1mv)
        lp0, lp1 = terms[..., 0, 0], terms[..., 1, 0]
        sc0, sc1 = terms[..., 0, 1], terms[..., 1, 1]
        lps, scs = self._stationary(log_v, log_1mv)
        zero = torch.zeros_like(lp0[..., :1])
        before = torch.cat([zero, torch.cumsum(lp0, -1)], -1)          # sum_{j<c} lp0_j
        after = torch.cat([torch.flip(torch.cumsum(torch.flip(lps, [-1]), -1), [-1])[..., 1:],
                           zero, zero], -1)                             # sum_{j>c} lps_j
        own = torch.cat([lp1, zero], -1)
        loglik = before + own + after
        k = self.K - 1
        c = torch.arange(self.K, device=x.device)[:, None]
        j = torch.arange(k, device=x.device)[None]
        scores = torch.where(j < c, sc0[..., None, :],
                             torch.where(j == c, sc1[..., None, :], scs[..., None, :]))
        return loglik, scores

    # --- public API ------------------------------------------------------------------------
    def check_t(self, t: Tensor | float, like: Tensor | None = None) -> Tensor:
        """t as a (B,) tensor, raising ValueError if any entry lies outside [eps, T]."""
        if not isinstance(t, Tensor):
            n = like.shape[0] if like is not None else 1
            t = torch.full((n,), float(t), dtype=torch.float64)
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        bad = (t < self.eps * (1 - 1e-5)) | (t > self.T * (1 + 1e-5)) | torch.isnan(t)
        if bool(bad.any()):
            raise ValueError(f"t={t[bad][0].item():.6g} is outside [eps, T] = "
                             f"[{self.eps:g}, {self.T:g}] for JacobiDiffusion")
        return t

    def _check_onehot(self, x0: Tensor) -> Tensor:
        if x0.shape[-1] != self.K:
            raise ValueError(f"x0 must have {self.K} categories in its last axis, got shape "
                             f"{tuple(x0.shape)}")
        if not bool(((x0 == 0) | (x0 == 1)).all() and (x0.sum(-1) == 1).all()):
            raise ValueError("x0 must be one-hot (vertices of the simplex)")
        return x0.argmax(-1)

    def noise_v(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None
                ) -> Tensor:
        """Exact draw of the sticks v_t given one-hot x0; x0: (B, *D, K), t: (B,) -> (B, *D, K-1).

        Inverse-CDF sampling from the tables; between grid times t the draw comes from the
        neighbouring grid time picked with the linear-interpolation weight (a mixture).
        """
        cat = self._check_onehot(x0)
        t = self.check_t(t, like=x0)
        u = rng.rand(x0.shape[:-1] + (self.K - 1,), generator, torch.float64, x0.device)
        pick = rng.rand(t.shape, generator, torch.float64, x0.device)
        tpos = self._time_position(t)
        ti = (tpos.floor() + (pick < tpos - tpos.floor()).double()).long()
        ti = ti.clamp(max=self.n_time - 1).reshape((-1,) + (1,) * (x0.dim() - 1))
        j = torch.arange(self.K - 1, device=x0.device)
        start = (j == cat[..., None]).long()
        v = self._inverse_cdf(u, j, start, ti)
        b = torch.tensor(self.b, dtype=torch.float64, device=x0.device)
        v_stat = -torch.expm1(torch.log1p(-u) / b)   # Beta(1, b) inverse CDF
        return torch.where(j > cat[..., None], v_stat, v).to(x0.dtype)

    def _inverse_cdf(self, u: Tensor, stick: Tensor, start: Tensor, ti: Tensor) -> Tensor:
        """v with CDF(v) = u on the table rows (stick, start, ti), piecewise linear in v."""
        self._check_device(u)
        grid, cdf = self._grid, self._cdf
        row = ((stick * 2 + start) * self.n_time + ti).reshape(-1)
        uf = u.reshape(-1).float()   # the CDF is stored in float32 (resolution 6e-8)
        lo = torch.zeros_like(row)
        hi = torch.full_like(row, self.n_grid - 1)
        while bool((hi - lo > 1).any()):  # bisection: cdf[row, lo] <= u < cdf[row, hi]
            mid = (lo + hi) // 2
            go_right = cdf[row, mid] <= uf
            lo, hi = torch.where(go_right, mid, lo), torch.where(go_right, hi, mid)
        uf = uf.double()
        c_lo, c_hi = cdf[row, lo].double(), cdf[row, hi].double()
        frac = ((uf - c_lo) / (c_hi - c_lo).clamp_min(1e-300)).clamp(0, 1)
        v = grid[lo] + frac * (grid[hi] - grid[lo])
        first, last = cdf[row, 0].double(), cdf[row, -1].double()
        v = torch.where(uf < first, grid[0] * uf / first.clamp_min(1e-300), v)
        v = torch.where(uf >= last, grid[-1] + (uf - last) / (1 - last).clamp_min(1e-300)
                        * (1 - grid[-1]), v)
        return v.reshape(u.shape)

    def noise(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None
              ) -> Tensor:
        """x_t ~ q(x_t | x0) on the simplex; x0 one-hot (B, *D, K), t: (B,) -> (B, *D, K)."""
        return stick_breaking(self.noise_v(x0, t, generator))

    def transition_score(self, x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        """Tangent x-space score grad log q(x_t | x0) for one-hot x0; (B, *D, K)."""
        cat = self._check_onehot(x0)
        t = self.check_t(t, like=x_t)
        _, scores = self.category_terms(x_t, t)
        gv = torch.gather(scores, -2, cat[..., None, None].expand(*cat.shape, 1, self.K - 1))
        return gv_to_gx(gv[..., 0, :], x_t)

    def log_likelihood(self, x_t: Tensor, t: Tensor | float) -> Tensor:
        """log q(v(x_t) | e_c) for every category c (stick coordinates); (B, *D, K)."""
        return self.category_terms(x_t, self.check_t(t, like=x_t))[0]

    def posterior_score(self, probs: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Score of p_t given the posterior P(x0 = e_c | x_t) `probs` (B, *D, K):
        sum_c probs_c grad log q(x_t | e_c), exact for a cell-wise factorised noising."""
        gv = self.posterior_v_score(probs, x_t, t)
        return gv_to_gx(gv, x_t)

    def posterior_v_score(self, probs: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """As `posterior_score` in stick coordinates; (B, *D, K-1)."""
        _, scores = self.category_terms(x_t, t)
        return (probs[..., None] * scores).sum(-2)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None
                     ) -> Tensor:
        """Dirichlet(1, ..., 1) draws; shape (B, *D, K) with K = num_categories."""
        shape = tuple(shape)
        if shape[-1] != self.K:
            raise ValueError(f"shape must end in K={self.K}, got {shape}")
        u = rng.rand(shape[:-1] + (self.K - 1,), generator, torch.float64, device)
        b = torch.tensor(self.b, dtype=torch.float64, device=u.device)
        v = -torch.expm1(torch.log1p(-u) / b)
        return stick_breaking(v).to(dtype or torch.get_default_dtype())

    def __deepcopy__(self, memo: dict) -> JacobiDiffusion:
        return self  # immutable after construction: copies (e.g. of a model's EMA) share tables

    def __repr__(self) -> str:
        return (f"JacobiDiffusion(num_categories={self.K}, T={self.T}, n_time={self.n_time}, "
                f"n_grid={self.n_grid}, speed={self.speed!r})")
