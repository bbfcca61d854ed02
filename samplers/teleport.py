"""Gaussian ("analytical") teleportation: the early, high-noise part of sampling in closed form.

At high noise the marginal p_t of any data set is close to the marginal of the Gaussian
N(mu, Sigma) with the data's mean and covariance, and for Gaussian data every linear process has
closed-form marginals. With Sigma = U diag(lam) U^T, alpha_t / sigma_t from the process:

    m_t = alpha_t mu,   C_t = U diag(c(t)) U^T,   c_k(t) = alpha_t^2 lam_k + sigma_t^2.

PF-ODE map T' -> t (y_k = u_k^T (x - m_t) satisfies dy_k/dt = (f_t + g^2 / (2 c_k)) y_k while
dc_k/dt = 2 f_t c_k + g^2, so y_k / sqrt(c_k) is constant along the flow):

    x_t = m_t + U diag(sqrt(c(t) / c(T'))) U^T (x_T' - m_T').

Reverse SDE: the exact reverse process reproduces the forward law, so x_t ~ N(m_t, C_t)
("marginal"); given x_T' it is the Gaussian conditional ("conditional"): with
a = alpha_T' / alpha_t and b^2 = sigma_T'^2 - a^2 sigma_t^2,

    x_t | x_T' ~ N(m_t + U diag(a c(t) / c(T')) U^T (x_T' - m_T'),  U diag(b^2 c(t) / c(T')) U^T).

Low rank: Sigma = U_k diag(lam_k) U_k^T + lam_perp (I - U_k U_k^T) (isotropic remainder), which
commutes with the identity, so the same formulas hold with one extra factor on the complement
and cost O(d k) per sample. Wang & Vastola, "The unreasonable effectiveness of Gaussian score
approximation for diffusion models and its applications" (TMLR 2024).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import Tensor

from samplers.grids import time_grid
from scorekit import io, rng
from scorekit.processes import SDE, Score
from scorekit.scores.gaussian import LowRankGaussian, eigh_desc

MODES = ("ode", "marginal", "conditional")
# Methods that integrate the probability-flow ODE: they take the deterministic teleport map.
ODE_METHODS = ("ode", "heun", "dpm_solver", "unipc", "dpm_solver_diffusers", "unipc_diffusers",
               "euler_diffusers", "closed_form")


def _fingerprint(x: Tensor) -> str:
    """Content hash of a data tensor (shape, dtype and bytes), to key cached fits."""
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class GaussianTeleport(LowRankGaussian):
    """N(mean, cov) fitted to the data (`scorekit.scores.LowRankGaussian`: its closed forms),
    moved through the process `sde` in closed form.

    mean: (d,) or data-shaped (*D,); cov: (d, d) full covariance. `rank=k` keeps the top-k
    eigenpairs and replaces the rest by their average (the isotropic remainder). Use `fit` to
    estimate both from data.
    """

    fitted_on: dict | None = None  # what `fit` saw (data hash, rank, n), to validate caches

    # --- construction from data -----------------------------------------------------------
    @classmethod
    def fit(cls, data: Tensor, sde: SDE, rank: int | None = None, chunk: int = 4096,
            cache: str | Path | None = None, generator: torch.Generator | None = None
            ) -> GaussianTeleport:
        """Mean and covariance of `data` (n, *D) in model space, accumulated in float64 chunks.

        rank=k: top-k eigenpairs (`eigh` of the covariance when d <= 12 k, else randomised
        `torch.pca_lowrank` with q = k + 10, 4 power iterations) plus the isotropic remainder
        (tr Sigma - sum lam_k) / (d - k). `cache`: a safetensors file reused when it was fitted
        to the same data (content hash) and rank, else (re)written atomically.
        """
        if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < 2:
            raise ValueError(f"data must be a tensor (n >= 2, *D), got "
                             f"{tuple(data.shape) if isinstance(data, Tensor) else type(data)}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        bad = sum(int((~torch.isfinite(xb)).any(dim=tuple(range(1, xb.dim()))).sum())
                  for xb in data.split(chunk))
        if bad:  # checked before any cache is read or written
            raise ValueError(f"data has {bad} of {data.shape[0]} rows with NaN/inf; the "
                             f"Gaussian fit needs finite data")
        n, shape = data.shape[0], tuple(data.shape[1:])
        d = int(torch.tensor(shape).prod())
        rank = cls._check_rank(rank, d)
        key = {"fingerprint": _fingerprint(data), "rank": rank, "n": n}
        if cache is not None and Path(cache).is_file():
            try:
                tp = cls.load(cache, sde)
            except io.CheckpointError as err:
                warnings.warn(f"ignoring unreadable teleport cache ({err}); refitting",
                              stacklevel=2)
            else:
                if tp.fitted_on == key:
                    return tp
        x = data.reshape(n, d)
        mean = torch.zeros(d, dtype=torch.float64)
        for xb in x.split(chunk):
            mean += xb.double().sum(0).cpu()
        mean /= n
        total_var = 0.0
        cov = torch.zeros(d, d, dtype=torch.float64) if rank == d or d <= 12 * rank else None
        for xb in x.split(chunk):
            xc = xb.double().cpu() - mean
            total_var += float(xc.pow(2).sum())
            if cov is not None:
                cov += xc.T @ xc
        total_var /= n - 1
        if cov is not None:
            cov /= n - 1
            lam, u = eigh_desc(cov)
            lam, u = lam[:rank].clamp_min(0), u[:, :rank]
        else:  # randomised PCA on the centred data, never forming the d x d matrix
            q = min(rank + 10, n, d)
            with torch.random.fork_rng(devices=[]):
                if generator is not None:
                    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                _, s, v = torch.pca_lowrank(x.double().cpu(), q=q, center=True, niter=4)
            lam, u = (s[:rank] ** 2 / (n - 1)), v[:, :rank]
        lam_perp = max(total_var - float(lam.sum()), 0.0) / (d - rank) if rank < d else 0.0
        tp = cls._from_parts(mean, u, lam, lam_perp, sde, shape)
        tp.fitted_on = key
        if cache is not None:
            tp.save(cache)
        return tp

    def save(self, path: str | Path) -> None:
        """Write mean, eigenvectors and eigenvalues to a safetensors file (atomically)."""
        io.save(path, {"mean": self.mean, "u": self.u, "lam": self.lam},
                  {"kind": "gaussian_teleport", "lam_perp": self.lam_perp,
                   "sample_shape": list(self.sample_shape), "fitted_on": self.fitted_on})

    @classmethod
    def load(cls, path: str | Path, sde: SDE) -> GaussianTeleport:
        tensors, meta = io.load(path)
        if meta.get("kind") != "gaussian_teleport" or set(tensors) != {"mean", "u", "lam"}:
            raise io.CheckpointError(f"{path} is not a saved GaussianTeleport")
        tp = cls._from_parts(tensors["mean"].double(), tensors["u"].double(),
                             tensors["lam"].double(), float(meta["lam_perp"]), sde,
                             tuple(meta["sample_shape"]))
        tp.fitted_on = meta.get("fitted_on")
        return tp

    # --- teleport maps ------------------------------------------------------------------
    def ode_map(self, x: Tensor, t: float, t_from: float | None = None) -> Tensor:
        """Deterministic PF-ODE map of x from t_from (default T) to t; x: (B, *D)."""
        t_from = self.sde.T if t_from is None else t_from
        self._check_times(t, t_from)
        xf = self._flat(x)
        a0, _, c0, p0 = self._variances(t_from)
        a1, _, c1, p1 = self._variances(t)
        mean = self._parts(xf)[0]
        delta = xf - a0 * mean
        out = a1 * mean + self._apply(delta, (c1 / c0).sqrt(), (p1 / p0) ** 0.5)
        return out.reshape(x.shape)

    def conditional(self, x: Tensor, t: float, t_from: float | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """One draw of x_t | x_{t_from} (the exact reverse-SDE transition of the Gaussian)."""
        t_from = self.sde.T if t_from is None else t_from
        self._check_times(t, t_from)
        xf = self._flat(x)
        a0, s0, c0, p0 = self._variances(t_from)
        a1, s1, c1, p1 = self._variances(t)
        a = a0 / a1
        b2 = max(s0**2 - a**2 * s1**2, 0.0)
        mean = self._parts(xf)[0]
        delta = xf - a0 * mean
        z = rng.randn(xf.shape, generator, xf.dtype, xf.device)
        drift = self._apply(delta, a * c1 / c0, a * p1 / p0)
        noise = self._apply(z, (b2 * c1 / c0).sqrt(), (b2 * p1 / p0) ** 0.5)
        return (a1 * mean + drift + noise).reshape(x.shape)

    def teleport(self, x: Tensor, t: float, mode: str = "ode",
                 generator: torch.Generator | None = None) -> Tensor:
        """Move prior draws x (at T) to t: mode "ode" (PF-ODE map), "marginal" (fresh draws of
        N(m_t, C_t), x only gives the shape) or "conditional" (x_t | x_T)."""
        if mode not in MODES:
            raise ValueError(f"unknown teleport mode {mode!r}; valid: {list(MODES)}")
        if mode == "ode":
            return self.ode_map(x, t)
        if mode == "conditional":
            return self.conditional(x, t, generator=generator)
        self._flat(x)
        return self.sample_marginal(x.shape[0], t, generator, x.device, x.dtype).reshape(x.shape)

    # --- choosing t_start -----------------------------------------------------------------
    def explained_variance(self, score: Score, t: float, data: Tensor | None = None,
                           n: int = 512, generator: torch.Generator | None = None) -> float:
        """EV(t) = 1 - E|s - s_G|^2 / E|s|^2 at x_t: `data` noised to t, or, without data,
        draws of the Gaussian's own marginal (a proxy that is exact where p_t is Gaussian)."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        if data is not None:
            x0 = data[:n].double().cpu()
            alpha, sigma = (float(v) for v in self.sde.marginal(tt))
            xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator,
                                                  dtype=torch.float64)
        else:
            xt = self.sample_marginal(n, float(t), generator, dtype=torch.float64)
        xt = xt.reshape(xt.shape[0], *self.sample_shape)
        dev, dt = _score_device_dtype(score)
        tv = torch.full((xt.shape[0],), float(t), dtype=dt, device=dev)
        with torch.no_grad():
            s = score(xt.to(device=dev, dtype=dt), tv).double().cpu().flatten(1)
        if not bool(torch.isfinite(s).all()):
            raise FloatingPointError(f"the score returned NaN/inf at t={float(t):.6g} while "
                                     f"probing t_start (explained variance)")
        s_g = self.score(xt, tv.double().cpu()).flatten(1)
        return float(1 - (s - s_g).pow(2).sum() / s.pow(2).sum().clamp_min(1e-300))

    def suggest_t_start(self, score: Score, data: Tensor | None = None, thresh: float = 0.99,
                        n: int = 512, points: int = 32,
                        generator: torch.Generator | None = None) -> tuple[float, dict]:
        """Smallest t on a log-noise-level grid of `points` from T down to (not including) eps
        such that EV(t') >= thresh for every grid t' >= t (T if EV(T) < thresh: no teleport).

        Costs points x n score evaluations, once; returns (t, {"t": grid, "ev": values}).
        """
        if not 0 < thresh < 1:
            raise ValueError(f"thresh must be in (0, 1), got {thresh}")
        if points < 2 or n < 1:
            raise ValueError(f"points must be >= 2 and n >= 1, got points={points}, n={n}")
        grid = time_grid(self.sde, points, "logsnr").tolist()[:-1]  # eps itself excluded
        t_best, ts, evs = float(self.sde.T), [], []
        for t in grid:
            ev = self.explained_variance(score, t, data, n, generator)
            ts.append(t)
            evs.append(ev)
            if ev < thresh:
                break
            t_best = t
        return t_best, {"t": ts, "ev": evs, "thresh": thresh}

    def __repr__(self) -> str:
        return (f"GaussianTeleport(d={self.dim}, rank={self.rank}, lam=[{float(self.lam[0]):.3g}"
                f" .. {float(self.lam[-1]):.3g}], lam_perp={self.lam_perp:.3g}, sde={self.sde})")


def _score_device_dtype(score: Score) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype to call a score: a module's first parameter, else CPU float64."""
    params = getattr(score, "parameters", None)
    if callable(params):
        p = next(iter(params()), None)
        if p is not None:
            return p.device, p.dtype
    return torch.device("cpu"), torch.float64
