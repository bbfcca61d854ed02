"""EmpiricalScore (closed-form smoothed score as attention) and the closed-form sampler
(objectives §7.3): brute force softmax over cdist, GMMScore, the paper's velocity identities,
memorisation without smoothing, novel samples with it, the k-NN estimator, bounded memory."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.spatial import ConvexHull

import samplers
from scorekit.scores import EmpiricalScore, GMMScore
from scorekit.sde import SDE, VESDE, VPSDE

F64 = torch.float64


def _cloud(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _queries(data: torch.Tensor, lam: float, n: int = 40, seed: int = 1) -> torch.Tensor:
    """Data points noised at level lam, plus midpoints of nearest pairs (tied, mixed weights)."""
    gen = torch.Generator().manual_seed(seed)
    noisy = data[:n] + lam * torch.randn(n, data.shape[1], generator=gen, dtype=F64)
    nearest = torch.cdist(data[:n], data).fill_diagonal_(math.inf).argmin(1)
    return torch.cat([noisy, 0.5 * (data[:n] + data[nearest])])


def _brute_score(data, sde, x, t, bank=None, smoothing=0.0):
    """(alpha m - x)/sigma^2, m = mean over perturbed queries of softmax(-d^2/2sigma^2) @ data,
    with explicit differences d = |row - alpha x_i| (no dot-product expansion)."""
    alpha, sigma = sde.marginal(t)
    rows = x[:, None, :] if bank is None else x[:, None, :] + smoothing * bank
    d2 = ((rows[:, :, None, :] - alpha[:, None, None, None] * data).square()).sum(-1)
    w = torch.softmax(-d2 / (2 * sigma[:, None, None] ** 2), -1)
    m = (w @ data).mean(1)
    return (alpha[:, None] * m - x) / sigma[:, None] ** 2


def _grid_data(seed: int = 0) -> torch.Tensor:
    """50 jittered 2-D grid points (spacing 0.4, jitter 0.05): separated by >= 0.3 >> sigma_eps."""
    gx, gy = torch.meshgrid(torch.arange(10, dtype=F64) * 0.4 - 1.8,
                            torch.arange(5, dtype=F64) * 0.4 - 0.8, indexing="ij")
    jitter = 2 * torch.rand(50, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1
    return torch.stack([gx.flatten(), gy.flatten()], 1) + 0.05 * jitter


def _nn_dist(x: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, data).min(1).values


@pytest.mark.parametrize("kernel", ["sdpa", "direct"])
@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("lam", [1e-3, 0.1, 3.0])
@pytest.mark.parametrize("d", [2, 16])
def test_emp_vs_bruteforce(d, lam, chunk, kernel):
    """float64 against softmax over explicit differences. Rounding bound of the SDPA form (module
    docstring): logit error <= eps sqrt(D) K (U + K/2) / lam^2 ~ 1e-8 at lam = 1e-3 (K, U ~ 5),
    i.e. relative weight error 1e-8 and score error <= 1e-8 * K / lam / |score| ~ 1e-5 in the
    worst case; observed ~1e-12, so 1e-5 (the spec's bar) is the bound, not a loose guess."""
    sde = VESDE(sigma_min=1e-4, sigma_max=10.0)
    data = _cloud(500, d)
    x = _queries(data, lam)
    t = sde.t_of_noise_level(torch.full((x.shape[0],), lam, dtype=F64))
    ref = _brute_score(data, sde, x, t)
    got = EmpiricalScore(data, sde, chunk_size=chunk, kernel=kernel)(x, t)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("chunk", [None, 7])
def test_emp_smoothed_vs_bruteforce(chunk):
    """Smoothing = one query row per bank draw, softmax per row, averaged after: chunking over
    keys must not mix rows. Same bound as above at lam >= 0.05."""
    sde = VPSDE()
    data = _cloud(300, 3)
    score = EmpiricalScore(data, sde, smoothing=0.3, n_smooth=5, chunk_size=chunk)
    x = _queries(data, 0.1, n=20)
    t = torch.linspace(0.01, 0.9, x.shape[0], dtype=F64)
    ref = _brute_score(data, sde, x, t, bank=score.noise_bank, smoothing=0.3)
    assert (score(x, t) - ref).abs().max() <= 1e-10 * ref.abs().max()


@pytest.mark.parametrize("kernel", ["sdpa", "direct"])
def test_emp_chunk_invariance(kernel):
    """Chunk sizes {1, 7, 128, N}: the online log-sum-exp merge is exact, so results agree to
    float64 rounding (a few ulps per merge, N = 500 merges at most): 1e-12 relative."""
    sde = VPSDE()
    data = _cloud(500, 4)
    x = _queries(data, 0.05)
    t = torch.full((x.shape[0],), 0.05, dtype=F64)
    outs = [EmpiricalScore(data, sde, chunk_size=c, kernel=kernel)(x, t) for c in (1, 7, 128, 500)]
    for o in outs[1:]:
        assert (o - outs[0]).abs().max() <= 1e-12 * outs[0].abs().max()


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_emp_is_gmm(sde):
    """The empirical distribution is a GMM of N equal-weight zero-covariance components; both
    compute the same softmax in float64, logits ~ |x|^2/sigma^2 <= 1e4 here, so rounding gives
    ~1e-12 relative: 1e-10."""
    data = _cloud(50, 3)
    gmm = GMMScore(torch.ones(50), data, torch.zeros(50, 3, 3), sde, allow_singular=True)
    emp = EmpiricalScore(data, sde)
    ts = torch.tensor([0.02, 0.1, 0.3, 0.6, 1.0], dtype=F64).repeat_interleave(8)
    alpha, sigma = sde.marginal(ts)
    x = alpha[:, None] * data[:40] + sigma[:, None] * _cloud(40, 3, seed=3)
    ref = gmm(x, ts)
    assert (emp(x, ts) - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_emp_fp32_precision_rule():
    """fp32 at lam = 1e-2, unit data: the rule's bound for the SDPA form is ~0.05 nats (> 0.01),
    so "auto" takes direct distances. Posterior means vs float64 on the same fp32-rounded inputs,
    over noisy and tied (midpoint) rows, whose weights move by (logit error)/4: calibrated
    direct 6e-6 vs SDPA 3e-4 (data units); bars 3e-5 and 1e-4 separate them with margin."""
    data = _cloud(500, 2).float().double()
    x = _queries(data, 1e-2).float().double()
    lam = torch.full((x.shape[0],), 1e-2, dtype=F64)
    ref = EmpiricalScore(data, VPSDE(), kernel="direct").posterior_mean(x, lam)
    err = {k: (EmpiricalScore(data.float(), VPSDE(), kernel=k)
               .posterior_mean(x.float(), lam.float()).double() - ref).abs().max()
           for k in ("auto", "sdpa")}
    assert err["auto"] <= 3e-5
    assert err["sdpa"] > 1e-4  # the rule is needed, not decorative


def test_emp_velocity_form():
    """Paper's interpolant z = tau x1 + (1 - tau) x0 (alpha = tau, sigma = 1 - tau, here t = 1 - tau
    so data sit at t = 0): dz/dtau = (z + (1 - tau) s)/tau = (m - z)/(1 - tau), and for any
    linear process the velocity equals the PF-ODE drift f x - g^2 s / 2. Algebraic identities in
    float64 with |terms| ~ 1e2: 1e-12."""

    class Interpolant(SDE):
        T, eps = 0.99, 0.01

        def _marginal(self, t):
            return 1 - t, t

        def _drift_rate(self, t):
            return -1 / (1 - t)

        def _diffusion(self, t):
            return torch.sqrt(2 * t / (1 - t))

        prior_std = 1.0

    data = _cloud(40, 3)
    for sde in (Interpolant(), VPSDE()):
        emp = EmpiricalScore(data, sde, smoothing=0.2, n_smooth=4)
        t = torch.linspace(0.05, 0.9, 20, dtype=F64)
        alpha, sigma = sde.marginal(t)
        z = alpha[:, None] * data[:20] + sigma[:, None] * _cloud(20, 3, seed=5)
        s, m, v = emp(z, t), emp.denoise(z, t), emp.velocity(z, t)
        pf = sde._drift_rate(t)[:, None] * z - 0.5 * sde._diffusion(t)[:, None] ** 2 * s
        assert torch.allclose(v, pf, rtol=0, atol=1e-12 * pf.abs().max())
        if isinstance(sde, Interpolant):
            tau = (1 - t)[:, None]
            paper = (z + (1 - tau) * s) / tau
            assert torch.allclose(-v, paper, rtol=0, atol=1e-12 * paper.abs().max())
            assert torch.allclose(-v, (m - z) / (1 - tau), rtol=0, atol=1e-12 * paper.abs().max())


def test_closed_form_step_exact_for_one_point():
    """With one training point m = x_1 at every t, so the flow is x_t = alpha x_1 + sigma e with e
    fixed; the sampler's Euler step on the interpolant velocity is exact then (3 steps, 1e-12)."""
    sde = VPSDE()
    x1 = torch.tensor([[0.3, -1.2]], dtype=F64)
    x_t = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    res = samplers.sample(EmpiricalScore(x1, sde), sde, (6, 2), method="closed_form", steps=3,
                          x_init=x_t, denoise="none", dtype=F64)
    (a_t, s_t), (a_0, s_0) = (sde.marginal(torch.tensor([v], dtype=F64)) for v in (sde.T, sde.eps))
    expected = a_0 * x1 + s_0 * (x_t - a_t * x1) / s_t
    assert torch.allclose(res.x, expected, rtol=0, atol=1e-12)
    assert res.nfe == 3


@pytest.mark.parametrize("method,steps", [("closed_form", 100), ("em", 300)])
def test_emp_memorises(method, steps):
    """smoothing = 0: the flow ends on training points. Points are >= 0.3 apart, sigma_eps = 0.01,
    so at eps a state within a few sigma_eps of alpha x_i gives the others weight < e^-250: the
    denoised sample *is* x_i (1e-6 absolute allows rounding of (x + sigma^2 s)/alpha)."""
    sde, data = VPSDE(), _grid_data()
    res = samplers.sample(EmpiricalScore(data, sde), sde, (200, 2), method=method, steps=steps,
                          generator=torch.Generator().manual_seed(1), dtype=F64)
    assert _nn_dist(res.x, data).max() <= 1e-6


def test_emp_memorises_raw_state():
    """Deterministic flow, no denoising: the state at eps is alpha x_i + sigma_eps e with e
    ~ N(0, I_2) when the ODE is solved exactly; P(|e| > 6) = e^-18 per sample. (3 sigma_eps, as a
    hard rule, would fail ~1 % of exact samples in 2-D.)"""
    sde, data = VPSDE(), _grid_data()
    res = samplers.sample(EmpiricalScore(data, sde), sde, (200, 2), method="closed_form",
                          steps=100, denoise="none", generator=torch.Generator().manual_seed(1),
                          dtype=F64)
    alpha, sigma = sde.marginal(torch.tensor([sde.eps], dtype=F64))
    assert _nn_dist(res.x, alpha * data).max() <= 6 * sigma


@pytest.mark.parametrize("method,steps", [("closed_form", 100), ("em", 300)])
def test_emp_smoothing_generalises(method, steps):
    """smoothing = 0.5 median NN distance (0.18): denoised samples are averages of the nearest
    points of 16 perturbed queries, so most are new (> 3 sigma_eps from every training point;
    calibrated: 98-99 % of 200, vs 0 % without smoothing above; bar 50 %, binomially safe) and,
    being convex combinations, the raw states stay inside the data's hull (+ 2 sigma_s)."""
    sde, data = VPSDE(), _grid_data()
    med = torch.cdist(data, data).fill_diagonal_(math.inf).min(1).values.median().item()
    smoothing = 0.5 * med
    score = EmpiricalScore(data, sde, smoothing=smoothing)
    gen = torch.Generator().manual_seed(1)
    res = samplers.sample(score, sde, (200, 2), method=method, steps=steps, generator=gen,
                          dtype=F64, denoise="none")
    alpha, sigma = sde.marginal(torch.tensor([sde.eps], dtype=F64))
    x = res.x / alpha
    denoised = score.denoise(res.x, torch.full((200,), sde.eps, dtype=F64))
    assert (_nn_dist(denoised, data) > 3 * sigma).double().mean() >= 0.5
    hull = torch.as_tensor(ConvexHull(data.numpy()).equations)  # a.x + b <= 0 inside
    excess = (x @ hull[:, :2].T + hull[:, 2]).max(1).values
    assert excess.max() <= 2 * smoothing


def test_emp_knn_accuracy():
    """k-NN estimator (k=32, l=64) vs exact at a late time, lam = 0.1 median NN distance: the
    mass outside the 32 nearest is below e^-(r32^2 - r1^2)/(2 lam^2) ~ 0, so 1e-3 relative (spec)
    holds with margin; k=1 without draws must miss it on tied midpoints (sensitivity check)."""
    sde = VESDE(sigma_min=1e-4, sigma_max=10.0)
    data = _cloud(2000, 2)
    med = torch.cdist(data, data).fill_diagonal_(math.inf).min(1).values.median().item()
    lam = 0.1 * med
    x = _queries(data, lam)
    t = sde.t_of_noise_level(torch.full((x.shape[0],), lam, dtype=F64))
    exact = EmpiricalScore(data, sde)(x, t)
    approx = EmpiricalScore(data, sde, knn=32, knn_samples=64)(x, t)
    crude = EmpiricalScore(data, sde, knn=1, knn_samples=0)(x, t)
    scale = exact.abs().max()
    assert (approx - exact).abs().max() <= 1e-3 * scale
    assert (crude - exact).abs().max() > 1e-2 * scale


def test_emp_knn_draws_correct_early():
    """At an early time (lam = 3, weights nearly uniform) the 32 neighbours alone give the mean of
    32 points; the l uniform draws with weight (N - k)/l restore the global mean to sampling
    accuracy: error std ~ std(x)/sqrt(l) -> 4 standard errors, per coordinate."""
    sde = VESDE(sigma_min=1e-4, sigma_max=50.0)  # lam = 30 inside [eps, T]
    data = _cloud(2000, 2) + torch.tensor([3.0, -2.0], dtype=F64)
    x = data.mean(0, keepdim=True).repeat(8, 1) + _cloud(8, 2, seed=4)
    t = sde.t_of_noise_level(torch.full((8,), 30.0, dtype=F64))
    exact = EmpiricalScore(data, sde).denoise(x, t)
    err = [(EmpiricalScore(data, sde, knn=32, knn_samples=256, seed=s).denoise(x, t) - exact)
           for s in range(4)]
    no_draws = EmpiricalScore(data, sde, knn=32, knn_samples=0).denoise(x, t) - exact
    se = data.std(0) / math.sqrt(256)
    assert (torch.stack(err).abs() <= 4 * se).all()
    assert (no_draws.abs() > 4 * se).any()


_MEMORY_PROBE = """
import json, resource, torch
from scorekit.scores import EmpiricalScore
from scorekit.sde import VPSDE
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()
data = torch.randn(1_000_000, 2, generator=torch.Generator().manual_seed(0))
score = EmpiricalScore(data, VPSDE(), chunk_size=16384)
t = torch.full((256,), 0.3)
x = torch.randn(256, 2)
score(x[:1], t[:1])  # builds the (N, 8) key/value cache: O(N), not part of the per-call bound
before = rss()
try:  # clear_refs 5 resets this process's peak RSS (VmHWM), so the peak is the call's own
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
out = score(x, t)
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
print(json.dumps({"extra": peak - before, "finite": bool(torch.isfinite(out).all())}))
"""


@pytest.mark.slow
def test_emp_memory_bounded():
    """N = 1e6, d = 2, B = 256, chunk 16384, float32: the naive B x N logit block alone is 1 GB.
    Peak RSS during the call (VmHWM, reset just before it) minus RSS before it, in a fresh
    process, must stay < 100 MB: ~20 B x chunk floats of kernel blocks fit, a B x N block
    cannot."""
    env = {"OMP_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True,
                         env=env, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["finite"]
    assert probe["extra"] < 100e6


def test_trainer_closed_form(tmp_path):
    """Hydra model=closed_form: no training step (trainer.steps ignored), the checkpoint is the
    training data, sampling goes through sampler=closed_form, and a reload round-trips."""
    from test_train import _cfg

    from scorekit.train import Trainer

    cfg = _cfg(["model=closed_form", "sampler=closed_form", "sampler.steps=10",
                "model.smoothing=0.1", "model.n_smooth=4", "data.n_train=300", "data.n_test=100",
                "eval.n_samples=50", "eval.plot=false", "trainer.steps=999",
                "trainer.progress=false"])
    tr = Trainer(cfg, run_dir=tmp_path)
    assert isinstance(tr.model, EmpiricalScore) and tr.optimizer is None
    tr.fit()
    assert tr.step == 0 and tr.ckpt_path.is_file()
    metrics = tr.evaluate()
    assert metrics["nfe"] == 11 and metrics["nonfinite_samples"] == 0
    again = Trainer.from_run_dir(tmp_path)
    assert torch.equal(again.model.data, tr.data.train.flatten(1))
    assert torch.equal(again.model.noise_bank, tr.model.noise_bank)
