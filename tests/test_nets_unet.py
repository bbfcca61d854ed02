"""UNetScore (diffusers UNet2DModel backbone) and EDM preconditioning."""

import math

import pytest
import torch

from scorekit.nets import MODELS, EDMPrecond, UNetScore, make_model
from scorekit.sde import EDMSDE, VPSDE

TINY = dict(channels=(16, 32), layers_per_block=1, attention=(False, True), norm_groups=8)


@pytest.mark.parametrize("param", ["eps", "score", "x0", "edm"])
def test_unet_shapes_and_dtypes(param):
    torch.manual_seed(0)
    model = UNetScore(64, VPSDE(), sample_shape=(1, 8, 8), parameterization=param, **TINY)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.01, 0.5, 1.0])
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out64 = model.double()(x.double(), t.double())
    assert out64.dtype == torch.float64
    # float32 vs float64 forward: the network's float32 error is ~100 eps32 ~ 1e-5 of its output
    # scale, and the score conversion scales each sample (x0 at t = 0.01: alpha / sigma^2 ~ 500,
    # outputs ~ 450), so compare per sample relative to its largest entry, with 10x margin.
    scale = out64.flatten(1).abs().amax(1).clamp_min(1.0)[:, None, None, None]
    torch.testing.assert_close(out.double() / scale, out64 / scale, rtol=0, atol=1e-4)


def test_unet_rgb_non_square():
    model = UNetScore(3 * 8 * 16, VPSDE(), sample_shape=(3, 8, 16), **TINY)
    x = torch.randn(2, 3, 8, 16)
    assert model(x, torch.full((2,), 0.3)).shape == x.shape


def test_make_model_unet_needs_sample_shape():
    assert MODELS["unet"] is UNetScore
    with pytest.raises(ValueError, match="sample_shape"):
        make_model("unet", 64, VPSDE(), **TINY)
    model = make_model("unet", 64, VPSDE(), sample_shape=(1, 8, 8), **TINY)
    assert isinstance(model, UNetScore)
    # models without sample_shape (the MLP) ignore it
    make_model("mlp", 64, VPSDE(), sample_shape=(1, 8, 8), hidden=8, depth=1)


@pytest.mark.parametrize("bad, match", [
    (dict(sample_shape=(1, 2, 32), channels=(8, 16, 16), attention=(False,) * 3), "divisible"),
    (dict(sample_shape=(1, 8, 8), norm_groups=7), "norm_groups"),
    (dict(sample_shape=(1, 8, 8), attention=(True,)), "attention"),
    (dict(sample_shape=(2, 8, 8)), "dim=64"),
])
def test_unet_rejects_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetScore(64, VPSDE(), **{**TINY, **bad})


class _Probe(torch.nn.Module):
    """Backbone returning a fixed function of its inputs, recording what it was given."""

    def forward(self, x_in, c_noise):
        self.x_in, self.c_noise = x_in, c_noise
        return torch.sin(3 * x_in) + c_noise[:, None]


@pytest.mark.parametrize("sigma", [0.002, 0.1, 1.0, 80.0])
def test_edm_precond_matches_formulas(sigma):
    """D = c_skip x + c_out F(c_in x; c_noise), objectives.md 1.3, and score = (D - x)/sigma^2."""
    sd = 0.5
    model = EDMPrecond(_Probe(), EDMSDE(sigma_data=sd), sigma_data=sd).double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * sigma
    t = torch.full((4,), sigma, dtype=torch.float64)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    c_in = 1 / math.sqrt(sigma**2 + sd**2)
    c_noise = math.log(sigma) / 4
    d = model.denoise(x, t)
    torch.testing.assert_close(model.net.x_in, c_in * x, rtol=1e-12, atol=0)
    torch.testing.assert_close(model.net.c_noise, torch.full_like(t, c_noise), rtol=1e-12,
                               atol=1e-15)
    expected = c_skip * x + c_out * (torch.sin(3 * c_in * x) + c_noise)
    torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model(x, t), (expected - x) / sigma**2, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_tiny_unet_dsm_loss_decreases_on_digits():
    from scorekit.data import digits
    from scorekit.objectives import DSM

    torch.manual_seed(0)
    data = digits()[:512]
    sde = VPSDE()
    model = UNetScore(64, sde, sample_shape=(1, 8, 8), sigma_data=float(data.std()), **TINY)
    loss_fn = DSM(sde)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        batch = data[torch.randint(0, data.shape[0], (64,), generator=gen)]
        loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)
