"""Fused update kernels: Triton (through triton's CPU interpreter) against the PyTorch path.

Given the same `noise=`, both paths agree to 1e-6 rel (float32) / 1e-12 (float64); the in-kernel
Philox noise is checked by its moments, a KS test, independence across steps and determinism.
"""

import importlib
import subprocess
import sys

import pytest
import torch
from scipy import stats

import samplers
from samplers.kernels import (
    Steps,
    em_update,
    ggf_error,
    heun_correct,
    heun_predict,
    langevin_update,
    use_fused,
)
from scorekit.scores import GaussianScore
from scorekit.sde import VESDE, VPSDE

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _close(a, b, dtype):
    scale = b.abs().max().item()
    torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _pair(table, x, dtype, seed=0):
    """The same solve set up for both paths: (kernel Steps, PyTorch Steps)."""
    ts = torch.linspace(1.0, 0.1, table.shape[0] + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return (Steps(table, ts, x, g, use_triton=True), Steps(table, ts, x, g, use_triton=False))


def _data(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def test_import_and_cpu_sampling_do_not_load_triton():
    code = ("import sys, torch, samplers\n"
            "from scorekit.sde import VPSDE\n"
            "samplers.sample(lambda x, t: -x, VPSDE(), (4, 2), steps=3)\n"
            "samplers.sample(lambda x, t: -x, VPSDE(), (4, 2), method='heun', steps=3)\n"
            "assert 'triton' not in sys.modules, 'triton imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dispatch_picks_torch_on_cpu(monkeypatch):
    x = torch.zeros(3, 2)
    assert not use_fused(x) and not use_fused(x, use_triton=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if importlib.util.find_spec("triton") is not None:
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            use_fused(x, use_triton=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_em_kernel_matches_torch(interpreter, dtype):
    x, s, z = _data((37, 3, 5), dtype)  # 555 elements: a partial block
    table = torch.tensor([[0.9, 0.3, 0.2], [1.1, -0.7, 0.5]], dtype=torch.float64)
    fused, ref = _pair(table, x, dtype)
    xa, xb = x.clone(), x.clone()
    mean_a, mean_b = torch.empty_like(x), torch.empty_like(x)
    for i in range(2):
        em_update(xa, s, fused, i, noise=z, mean=mean_a)
        em_update(xb, s, ref, i, noise=z, mean=mean_b)
        _close(xa, xb, dtype)
        _close(mean_a, mean_b, dtype)
    # Per-row Philox streams: each draw takes ceil(D / 4) counter blocks of 4 normals.
    assert fused.cursor.tolist() == [2, 2 * -(-x[0].numel() // 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("snr_norm", ["per_sample", "batch_mean"])
def test_langevin_kernel_matches_torch(interpreter, dtype, snr_norm):
    x, s, z = _data((9, 1100), dtype, seed=1)  # rows longer than one block
    table = torch.tensor([[1.0, 0.0, 0.0, 0.8]], dtype=torch.float64)
    fused, ref = _pair(table, x, dtype)
    for max_step in (None, 1e-3):
        xa = langevin_update(x.clone(), s, fused, 0, 3, 0.16, snr_norm, max_step, noise=z)
        xb = langevin_update(x.clone(), s, ref, 0, 3, 0.16, snr_norm, max_step, noise=z)
        _close(xa, xb, dtype)
    assert fused.cursor.tolist() == [0, 2 * -(-x[0].numel() // 4)]  # noise moved, row kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_heun_kernels_match_torch(interpreter, dtype):
    xs, s1, s2 = _data((6, 2, 4, 4), dtype, seed=2)
    table = torch.tensor([[-0.9, -0.4, 0.8, -0.5, -0.2]], dtype=torch.float64)
    fused, ref = _pair(table, xs, dtype)
    out = []
    for steps in (fused, ref):
        x = xs.clone()
        d1, x_in = heun_predict(x, s1, steps, 0)
        d1, x_in = d1.clone(), x_in.clone()
        out.append((d1, x_in, heun_correct(x, d1, s2, steps, 0).clone(), x))
    for a, b in zip(*out, strict=True):
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_prev", [True, False])
def test_ggf_error_kernel_matches_torch(interpreter, dtype, use_prev):
    xh, xe, xp = _data((7, 1500), dtype, seed=3)
    xh = xe + 0.01 * xh
    a = ggf_error(xh, xe, xp, 2 / 256, 0.05, use_prev, use_triton=True)
    b = ggf_error(xh, xe, xp, 2 / 256, 0.05, use_prev, use_triton=False)
    _close(a, b, dtype)


def _philox_draws(seed: int, n: int, steps: int = 2) -> torch.Tensor:
    """Kernel-drawn z of `steps` consecutive EM steps with k = (0, 0, 1): (steps, n)."""
    x = torch.zeros(n)
    table = torch.tensor([[0.0, 0.0, 1.0]] * steps, dtype=torch.float64)
    st = Steps(table, torch.linspace(1, 0, steps + 1, dtype=torch.float64), x,
               torch.Generator().manual_seed(seed), use_triton=True)
    out = []
    for i in range(steps):
        out.append(em_update(x, x, st, i).clone())
    return torch.stack(out)


def test_philox_noise_is_standard_normal(interpreter):
    n = 1 << 16
    z = _philox_draws(0, n).double()
    se = 4 / n**0.5
    for row in z:
        assert abs(row.mean()) < se
        assert abs(row.var() - 1) < 4 * (2 / n) ** 0.5
        assert stats.kstest(row.numpy(), "norm").pvalue > 1e-3
    # Independent across steps (the cursor's offset moves on): correlation within 4 SE.
    assert abs(torch.corrcoef(z)[0, 1]) < se


def test_philox_noise_is_deterministic_per_seed(interpreter):
    a, b, c = _philox_draws(5, 3000), _philox_draws(5, 3000), _philox_draws(6, 3000)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["em", "pc", "heun"])
def test_fused_samplers_match_torch_law(interpreter, method):
    """Whole samplers on the kernel path: Heun (deterministic) matches the PyTorch path to
    float32 rounding; EM / PC (Philox noise) match in mean and variance within 5 SE."""
    sde = VPSDE() if method != "pc" else VESDE()
    gs = GaussianScore(torch.zeros(2), torch.diag(torch.tensor([0.5, 2.0])), sde)
    n = 4000 if method != "heun" else 50
    opts = {"steps": 8, "snr": 0.05} if method == "pc" else {"steps": 8}
    out = {}
    for use_triton in (True, False):
        g = torch.Generator().manual_seed(11)
        res = samplers.sample(gs, sde, (n, 2), method=method, generator=g,
                              use_triton=use_triton, **opts)
        out[use_triton] = res
        assert res.nfe == {"em": 9, "pc": 17, "heun": 15}[method]
    a, b = out[True].x.double(), out[False].x.double()
    if method == "heun":
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        return
    sd = b.std(0)
    assert ((a.mean(0) - b.mean(0)).abs() < 5 * sd * (2 / n) ** 0.5).all()
    assert ((a.var(0) / b.var(0) - 1).abs() < 5 * 2 * (1 / n) ** 0.5).all()
