"""EM and PC with the exact GMM score recover an unequal-weight 3-mode mixture.

Reference: exact draws of p_eps (1e6, so their own error is negligible next to the sampler's),
assigned to modes by the same rule (argmax of the exact responsibilities at eps), so mode
overlap affects both sides equally. Tolerances: 4 SE of the sampler's n, plus for the
covariances the SE of a sample covariance entry, sqrt((C_ii C_jj + C_ij^2) / n_k).
"""

import pytest
import torch

import samplers
from scorekit.data.synthetic import gmm_params
from scorekit.scores import GMMScore
from scorekit.sde import VESDE, VPSDE

N = 20000


def _mode_stats(x, labels, k):
    xs = x[labels == k]
    return xs.shape[0], xs.mean(0), torch.cov(xs.T)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sde,method,opts",
    [(VPSDE(), "em", {}), (VPSDE(), "pc", {"snr": 0.01}), (VESDE(), "pc", {})],
    ids=["vp-em", "vp-pc", "ve-pc"],
)
def test_gmm3_weights_means_covs(sde, method, opts):
    gmm = GMMScore(*gmm_params(layout="three"), sde)
    steps = 1000 if method == "em" else 500
    res = samplers.sample(gmm, sde, (N, 2), method=method, steps=steps, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0), denoise="none", **opts)
    ref = gmm.sample_marginal(1_000_000, sde.eps, generator=torch.Generator().manual_seed(1))
    t = torch.full((N,), sde.eps, dtype=torch.float64)
    lab = gmm.responsibilities(res.x, t).argmax(1)
    lab_ref = gmm.responsibilities(ref, torch.full((len(ref),), sde.eps,
                                                   dtype=torch.float64)).argmax(1)
    for k in range(3):
        n_k, mean, cov = _mode_stats(res.x, lab, k)
        _, mean_ref, cov_ref = _mode_stats(ref, lab_ref, k)
        p = (lab_ref == k).double().mean().item()
        assert abs(n_k / N - p) <= 4 * (p * (1 - p) / N) ** 0.5, (k, n_k / N, p)
        se_mean = (cov_ref.diagonal() / n_k).sqrt()
        assert ((mean - mean_ref).abs() <= 4 * se_mean).all(), (k, mean, mean_ref)
        d = cov_ref.diagonal()
        se_cov = ((d[:, None] * d[None, :] + cov_ref**2) / n_k).sqrt()
        assert ((cov - cov_ref).abs() <= 4 * se_cov).all(), (k, cov, cov_ref)
