"""Sample-quality metrics: sliced Wasserstein, Fréchet distance, MMD (all float64)."""

from __future__ import annotations

import torch
from torch import Tensor

from scorekit.evaluation.features import FeatureExtractor, FeatureStats

__all__ = ["sliced_wasserstein", "gaussian_frechet", "frechet_distance", "mmd", "mode_metrics",
           "FeatureExtractor", "FeatureStats"]


def _flat(x: Tensor, name: str) -> Tensor:
    if x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N >= 2, *D), got {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).double().cpu()


def _quantiles(x: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile functions of the columns of x (N, P) at `levels` (L,): (L, P)."""
    xs, _ = torch.sort(x, dim=0)
    n = xs.shape[0]
    pos = (levels * n - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo)[:, None]
    return xs[lo] * (1 - frac) + xs[hi] * frac


def sliced_wasserstein(a: Tensor, b: Tensor, n_proj: int = 256, p: int = 2,
                       generator: torch.Generator | None = None) -> Tensor:
    """Sliced W_p between samples a: (N, *D) and b: (M, *D); directions uniform on the sphere
    (a fixed seed unless `generator` is given, so the metric is deterministic). Scalar tensor."""
    a, b = _flat(a, "a"), _flat(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} features per sample but b has {b.shape[1]}")
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    dirs = torch.randn(a.shape[1], n_proj, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, pb = a @ dirs, b @ dirs
    if a.shape[0] == b.shape[0]:
        qa, qb = torch.sort(pa, 0)[0], torch.sort(pb, 0)[0]
    else:
        levels = (torch.arange(max(a.shape[0], b.shape[0]), dtype=torch.float64) + 0.5)
        levels = levels / levels.shape[0]
        qa, qb = _quantiles(pa, levels), _quantiles(pb, levels)
    return (qa - qb).abs().pow(p).mean().pow(1.0 / p)


def _sqrtm_psd(c: Tensor) -> Tensor:
    lam, u = torch.linalg.eigh(0.5 * (c + c.T))
    return (u * lam.clamp_min(0).sqrt()) @ u.T


def _trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    """tr (C1^1/2 C2 C1^1/2)^1/2 = sum of sqrt(eig(C1 C2)).

    With a Cholesky factor C1 = L L^T, L^T C2 L is symmetric with the eigenvalues of C1 C2, so
    one Cholesky and one eigenvalues-only `eigvalsh` suffice (3.4x faster than two full `eigh`
    at F = 2048). Singular covariances (fewer samples than features) fall back to the symmetric
    square root of C1."""
    for a, b in ((cov1, cov2), (cov2, cov1)):
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            lam = torch.linalg.eigvalsh(chol.T @ b @ chol)
            return lam.clamp_min(0).sqrt().sum()
    r1 = _sqrtm_psd(cov1)
    return _sqrtm_psd(r1 @ cov2 @ r1).trace()


def gaussian_frechet(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2) in float64."""
    mu1, mu2, cov1, cov2 = (v.double() for v in (mu1, mu2, cov1, cov2))
    cov1, cov2 = 0.5 * (cov1 + cov1.T), 0.5 * (cov2 + cov2.T)
    cross = _trace_sqrt_product(cov1, cov2)
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross)


def _moments(feats: Tensor | FeatureStats, name: str) -> tuple[Tensor, Tensor]:
    if isinstance(feats, FeatureStats):
        return feats.mean.cpu(), feats.cov.cpu()
    x = _flat(feats, name)
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], -1)


def frechet_distance(feats_a: Tensor | FeatureStats, feats_b: Tensor | FeatureStats) -> float:
    """Fréchet distance between Gaussians fitted to features (N, F) and (M, F) (FID's formula);
    either side may be a streaming `FeatureStats` instead."""
    (mu_a, cov_a), (mu_b, cov_b) = _moments(feats_a, "feats_a"), _moments(feats_b, "feats_b")
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dims differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return gaussian_frechet(mu_a, cov_a, mu_b, cov_b)


def mmd(a: Tensor, b: Tensor, bandwidth: float | None = None, chunk: int = 2048) -> float:
    """Unbiased squared MMD with an RBF kernel; median-heuristic bandwidth when None."""
    a, b = _flat(a, "a"), _flat(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} features per sample but b has {b.shape[1]}")
    if bandwidth is None:
        pool = torch.cat([a[:1000], b[:1000]])
        i, j = torch.triu_indices(pool.shape[0], pool.shape[0], 1)
        # Each pair once and no diagonal: matmul-based cdist leaves ~1e-8 there, not 0.
        d = torch.cdist(pool, pool)[i, j]
        d = d[d > 0]
        if d.numel() == 0:  # the median heuristic would be NaN and so would the result
            raise ValueError("median-heuristic bandwidth is undefined: the pooled points "
                             "(first 1000 of a and b) all coincide; pass bandwidth=")
        bandwidth = float(d.median())
    if not bandwidth > 0:  # also rejects NaN
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")

    def ksum(x: Tensor, y: Tensor, same: bool) -> float:
        total = 0.0
        for i in range(0, x.shape[0], chunk):
            k = torch.exp(-torch.cdist(x[i:i + chunk], y).pow(2) / (2 * bandwidth**2))
            total += float(k.sum())
        if same:
            total -= x.shape[0]  # drop the diagonal k(x_i, x_i) = 1
        return total

    n, m = a.shape[0], b.shape[0]
    return (ksum(a, a, True) / (n * (n - 1)) + ksum(b, b, True) / (m * (m - 1))
            - 2 * ksum(a, b, False) / (n * m))


def mode_metrics(x: Tensor, gmm) -> dict[str, float | list[float]]:
    """How well samples x: (N, d) reproduce a known Gaussian mixture (a `GMMScore`).

    Each sample goes to its most responsible component of the clean mixture. Reported:
    - `mode_weight_tv`: total-variation distance between sample and true mode weights
      (0.5 sum |w_hat - w|); a dropped mode of weight w adds w.
    - `mode_std_ratio`: per mode, sqrt(tr cov_hat / tr cov) (1 = right width; > 1 = blurred),
      and `mode_std_ratio_mean` over modes with >= 2 samples.
    - `mode_mean_error`: per mode, ||mean_hat - mean|| / sqrt(tr cov / d) (in mode stds).
    - `off_mode_fraction`: fraction of samples outside every component's 99.9% ellipsoid
      (Mahalanobis^2 > chi^2_d(0.999)); 0.001 for exact samples.
    The distance sliced-W misses these: at a few thousand points it barely separates a ring of
    8 modes of std 0.1 from one of std 0.15, while mode_std_ratio reads 1.5.
    """
    from scipy.stats import chi2

    x = _flat(x, "x")
    w = gmm.weights.double().cpu()
    means, c = gmm.means.double().cpu(), gmm.eigvals.double().cpu()  # (K, d), (K, d)
    # Eigen-coordinates of x in each clean component: y (N, K, d); log densities up to a const.
    y = torch.einsum("nkd,kde->nke", x[:, None, :] - means, gmm.eigvecs.double().cpu())
    maha = (y * y / c).sum(-1)  # (N, K) squared Mahalanobis distances to each component
    labels = (w.log() - 0.5 * (maha + c.log().sum(-1))).argmax(1)
    k, d = w.shape[0], x.shape[1]
    counts = torch.bincount(labels, minlength=k).double()
    w_hat = counts / counts.sum()
    ratios, errors = [], []
    for j in range(k):
        xj = x[labels == j]
        tr = float(gmm.covs[j].double().trace())
        if xj.shape[0] < 2:
            ratios.append(float("nan"))
            errors.append(float("nan"))
            continue
        cov_hat = torch.cov(xj.T).reshape(d, d)
        ratios.append(float((cov_hat.trace() / tr).sqrt()))
        errors.append(float((xj.mean(0) - means[j]).norm() / (tr / d) ** 0.5))
    valid = [r for r in ratios if r == r]
    return {
        "mode_weight_tv": float(0.5 * (w_hat - w).abs().sum()),
        "mode_weights": w_hat.tolist(),
        "mode_std_ratio": ratios,
        "mode_std_ratio_mean": sum(valid) / len(valid) if valid else float("nan"),
        "mode_mean_error": errors,
        "off_mode_fraction": float((maha.min(1).values > chi2.ppf(0.999, d)).double().mean()),
    }
