"""Closed-form scores of Gaussian and Gaussian-mixture data under any linear process.

For data `sum_k w_k N(mu_k, Sigma_k)` the noised marginal is `sum_k w_k N(alpha mu_k, C_k)` with
`C_k = alpha^2 Sigma_k + sigma^2 I`. Each `Sigma_k = U_k diag(lam_k) U_k^T` is diagonalised once
(float64), so `C_k` shares its eigenvectors and every per-sample solve is two matmuls with no
per-t factorisation. `LowRankGaussian` keeps only the top-k eigenpairs of one Gaussian and an
isotropic remainder (what Gaussian teleportation fits to data), at O(d k) per sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scorekit import rng
from scorekit._validate import check_score_input
from scorekit.processes.base import SDE, Process

__all__ = ["GMMScore", "GaussianScore", "LowRankGaussian", "eigh_desc"]


def _validate_cov(cov: Tensor, name: str, allow_singular: bool, psd_tol: float = 1e-12
                  ) -> tuple[Tensor, Tensor]:
    """Symmetry and positive-definiteness check (semi-definiteness with `allow_singular`, down to
    -psd_tol max|C|); returns (eigenvalues ascending, eigenvectors as columns) in float64."""
    c = cov.to(torch.float64)
    asym = (c - c.transpose(-1, -2)).abs().max().item()
    scale = max(c.abs().max().item(), 1e-300)
    if asym > 1e-8 * scale:
        raise ValueError(f"{name} is not symmetric (max |C - C^T| = {asym:.3g})")
    lam, u = torch.linalg.eigh(0.5 * (c + c.transpose(-1, -2)))
    lam_min = lam.min().item()
    tol = -psd_tol * scale if allow_singular else 0.0
    if not math.isfinite(lam_min) or lam_min <= tol:
        kind = "positive semi-definite" if allow_singular else "positive definite"
        raise ValueError(f"{name} is not {kind}: smallest eigenvalue {lam_min:.6g}")
    return lam.clamp_min(0.0), u


class GMMScore(nn.Module):
    """Exact score of `sum_k w_k N(mu_k, Sigma_k)` noised by `sde`; weights (K,), means (K, d),
    covs (K, d, d). Call as `score(x, t)` with x: (B, *D), prod(D) = d, t: (B,).
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, sde: SDE,
                 allow_singular: bool = False):
        super().__init__()
        weights, means, covs = (torch.as_tensor(a, dtype=torch.float64)
                                for a in (weights, means, covs))
        if weights.dim() != 1 or weights.numel() < 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(weights.shape)}")
        k = weights.shape[0]
        if means.dim() != 2 or means.shape[0] != k:
            raise ValueError(f"means must have shape (K={k}, d), got {tuple(means.shape)}")
        d = means.shape[1]
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape (K={k}, d={d}, d={d}), got {tuple(covs.shape)}")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
        if not torch.isfinite(means).all():
            raise ValueError("means contain non-finite values")
        lams, us = [], []
        for i in range(k):
            lam, u = _validate_cov(covs[i], f"covs[{i}]", allow_singular)
            lams.append(lam)
            us.append(u)
        self.sde = sde
        self.dim = d
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("eigvals", torch.stack(lams))  # (K, d)
        self.register_buffer("eigvecs", torch.stack(us))  # (K, d, d), columns are eigenvectors

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def _terms(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log densities (B, K), eigen-coordinates y (B, K, d) and variances c."""
        # t = 0 is the data law itself: regular for these closed forms
        check_score_input(x, t, self.dim, self.sde, self.means.device, t_min=0.0)
        dt = x.dtype
        xf = x.reshape(x.shape[0], 1, self.dim)
        alpha, sigma = Process(self.sde).marginal(t.to(dt))
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        u = self.eigvecs.to(dt)
        y = torch.einsum("bkd,kde->bke", xf - alpha * self.means.to(dt), u)
        c = alpha**2 * self.eigvals.to(dt) + sigma**2
        logn = -0.5 * ((y * y / c).sum(-1) + torch.log(c).sum(-1)
                       + self.dim * math.log(2 * math.pi))
        return logn + self.log_weights.to(dt), y, c

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Score grad_x log p_t(x); x: (B, *D), t: (B,) -> (B, *D)."""
        logp, y, c = self._terms(x, t)
        r = torch.softmax(logp, dim=1)  # responsibilities (B, K)
        grad_y = -(r[..., None] * y / c)  # (B, K, d)
        s = torch.einsum("bke,kde->bd", grad_y, self.eigvecs.to(x.dtype))
        return s.reshape(x.shape)

    def marginal_logp(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact log p_t(x); x: (B, *D), t: (B,) -> (B,)."""
        return torch.logsumexp(self._terms(x, t)[0], dim=1)

    def responsibilities(self, x: Tensor, t: Tensor) -> Tensor:
        """Posterior component probabilities p(k | x_t); -> (B, K)."""
        return torch.softmax(self._terms(x, t)[0], dim=1)

    def marginal_params(self, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, means, covs) of the noised mixture p_t at scalar t, float64."""
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = (v.item() for v in Process(self.sde).marginal(tt))
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.means.device)
        return self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye

    def sample_data(self, n: int, generator: torch.Generator | None = None,
                    return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Draw n clean data points (n, d) in float64 (and their component labels if asked)."""
        dev = self.means.device
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        root = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # (K, d, d): U diag(sqrt(lam))
        x = self.means[labels].clone()
        for k in range(root.shape[0]):  # per component: O(n d + K d^2) memory, not O(n d^2)
            rows = (labels == k).nonzero().squeeze(1)
            x[rows] += z[rows] @ root[k].T
        return (x, labels) if return_labels else x

    def sample_marginal(self, n: int, t: float, generator: torch.Generator | None = None,
                        return_labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Exact draws of x_t ~ p_t at scalar t: (n, d) float64."""
        x0, labels = self.sample_data(n, generator, return_labels=True)
        tt = torch.tensor([float(t)], dtype=torch.float64)
        alpha, sigma = (v.item() for v in Process(self.sde).marginal(tt))
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        xt = alpha * x0 + sigma * noise
        return (xt, labels) if return_labels else xt


class GaussianScore(GMMScore):
    """Exact score of `N(mean, cov)` noised by `sde`; mean (d,), cov (d, d)."""

    def __init__(self, mean: Tensor, cov: Tensor, sde: SDE, allow_singular: bool = False):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if mean.dim() != 1:
            raise ValueError(f"mean must have shape (d,), got {tuple(mean.shape)}")
        d = mean.shape[0]
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape (d={d}, d={d}), got {tuple(cov.shape)}")
        super().__init__(torch.ones(1, dtype=torch.float64), mean[None], cov[None], sde,
                         allow_singular=allow_singular)

    @property
    def mean(self) -> Tensor:
        return self.means[0]

    @property
    def cov(self) -> Tensor:
        return self.covs[0]


def eigh_desc(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix (its
    symmetric part), float64."""
    lam, u = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
    return lam.flip(-1), u.flip(-1)


class LowRankGaussian:
    """N(mean, U diag(lam) U^T + lam_perp (I - U U^T)) noised by the linear process `sde`.

    With alpha_t, sigma_t of the process the marginal is N(m_t, C_t), m_t = alpha_t mean and
    C_t = U diag(c(t)) U^T + c_perp(t) (I - U U^T), c(t) = alpha_t^2 lam + sigma_t^2 (the
    remainder commutes with U U^T, so every formula splits into span(U) and its complement).
    mean: (d,) or data-shaped (*D,); cov: (d, d); `rank=k` keeps the top-k eigenpairs and
    replaces the rest by their average. Call it as a score: `g(x, t)`.
    """

    def __init__(self, mean: Tensor, cov: Tensor, sde: SDE, rank: int | None = None):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = mean.numel()
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape (d, d) = ({d}, {d}) for a mean with {d} "
                             f"elements, got {tuple(cov.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
            raise ValueError("mean and cov must be finite")
        lam, u = _validate_cov(cov, "cov", allow_singular=True, psd_tol=1e-8)
        lam, u = lam.flip(0).clamp_min(0), u.flip(1)  # descending
        rank = self._check_rank(rank, d)
        lam_perp = float(lam[rank:].mean()) if rank < d else 0.0
        self._set(mean.reshape(-1), u[:, :rank], lam[:rank], lam_perp, sde,
                  tuple(mean.shape) if mean.dim() > 1 else (d,))

    @staticmethod
    def _check_rank(rank: int | None, d: int) -> int:
        if rank is None:
            return d
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= d:
            raise ValueError(f"rank must be an integer in [1, d={d}] or None, got {rank!r}")
        return rank

    def _set(self, mean: Tensor, u: Tensor, lam: Tensor, lam_perp: float, sde: SDE,
             sample_shape: tuple[int, ...]) -> None:
        self.sde = sde
        self.mean = mean  # (d,) float64
        self.u = u.contiguous()  # (d, k) orthonormal columns, float64
        self.lam = lam  # (k,) descending
        self.lam_perp = lam_perp  # variance on the complement of span(u) (0 when k = d)
        self.sample_shape = sample_shape
        self._cache: dict[tuple, tuple[Tensor, ...]] = {}

    @classmethod
    def _from_parts(cls, mean: Tensor, u: Tensor, lam: Tensor, lam_perp: float, sde: SDE,
                    sample_shape: tuple[int, ...]):
        g = cls.__new__(cls)
        g._set(mean, u, lam, lam_perp, sde, sample_shape)
        return g

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        return self.u.shape[1]

    def _variances(self, t: float) -> tuple[float, float, Tensor, float]:
        """(alpha_t, sigma_t, c(t) on span(u) (k,), c_perp(t)) in float64."""
        alpha, sigma = (float(v) for v in self.sde.marginal(
            torch.tensor([float(t)], dtype=torch.float64)))
        return alpha, sigma, alpha**2 * self.lam + sigma**2, alpha**2 * self.lam_perp + sigma**2

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, u, lam) in x's dtype/device (cached)."""
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = tuple(v.to(device=x.device, dtype=x.dtype)
                                     for v in (self.mean, self.u, self.lam))
        return self._cache[key]

    def _apply(self, delta: Tensor, r: Tensor, r_perp: float) -> Tensor:
        """U diag(r) U^T delta + r_perp (delta - U U^T delta); delta: (B, d), r: (k,) f64."""
        _, u, _ = self._parts(delta)
        y = delta @ u
        out = (y * r.to(delta)) @ u.T
        if self.rank < self.dim:
            out = out + r_perp * (delta - y @ u.T)
        return out

    def _flat(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"x must be (B, *D) with {self.dim} elements per sample, got "
                             f"{tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _check_times(self, t: float, t_from: float) -> None:
        t, t_from = float(t), float(t_from)
        if not self.sde.eps <= t <= t_from <= self.sde.T * (1 + 1e-9):
            raise ValueError(f"teleport needs eps <= t <= t_from <= T = {self.sde.T:g}, got "
                             f"t={t:g}, t_from={t_from:g} (eps={self.sde.eps:g})")

    def marginal_moments(self, t: float) -> tuple[Tensor, Tensor]:
        """(m_t (d,), C_t (d, d)) of the Gaussian's marginal at t, float64."""
        alpha, _, c, c_perp = self._variances(t)
        eye = torch.eye(self.dim, dtype=torch.float64)
        proj = self.u @ self.u.T
        cov = self.u @ torch.diag(c) @ self.u.T + (c_perp * (eye - proj) if self.rank < self.dim
                                                   else 0.0)
        return alpha * self.mean, cov

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Gaussian score -C_t^{-1} (x - m_t); x: (B, *D), t: (B,) (may differ per sample)."""
        xf = self._flat(x)
        mean, u, lam = self._parts(xf)
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        alpha, sigma = alpha.to(xf)[:, None], sigma.to(xf)[:, None]
        delta = xf - alpha * mean
        y = delta @ u
        c = alpha**2 * lam + sigma**2
        out = -(y / c) @ u.T
        if self.rank < self.dim:
            c_perp = alpha**2 * self.lam_perp + sigma**2
            out = out - (delta - y @ u.T) / c_perp
        return out.reshape(x.shape)

    __call__ = score

    def sample_marginal(self, n: int, t: float, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws of x_t ~ N(m_t, C_t), shaped (n, *D)."""
        self._check_times(t, self.sde.T)
        alpha, _, c, c_perp = self._variances(t)
        z = rng.randn((n, self.dim), generator, dtype, device)  # also per-sample streams
        mean = self._parts(z)[0]
        x = alpha * mean + self._apply(z, c.sqrt(), c_perp**0.5)
        return x.reshape(n, *self.sample_shape)
