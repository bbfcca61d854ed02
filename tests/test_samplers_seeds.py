"""Per-sample seeds: sample i is drawn from the stream of seed s + i, whatever the batch.

References written here, not taken from the code under test: the Philox4x32-10 known-answer
vectors of Random123 (Salmon et al. 2011), triton's own `tl.randint4x` run in its interpreter,
and the normal law's moments with tolerances from their standard errors.
"""

import math

import pytest
import torch

import samplers
from scorekit.rng import SampleStreams, philox4x32
from scorekit.scores import GaussianScore
from scorekit.scores.gaussian import GMMScore
from scorekit.sde import VESDE, VPSDE, DoubleWellSDE

# Random123's kat_vectors for philox4x32 with 10 rounds: (counter c0..c3, key k0 k1, result).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_reference(c: tuple[int, ...], k: tuple[int, ...]) -> tuple[int, ...]:
    """Philox4x32-10 on Python integers, from the paper's round function."""
    m = 0xFFFFFFFF
    c0, c1, c2, c3 = c
    k0, k1 = k
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
        pa, pb = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (pb >> 32) ^ c1 ^ k0, pb & m, (pa >> 32) ^ c3 ^ k1, pa & m
    return c0, c1, c2, c3


def test_philox_known_answers():
    for c, k, want in KAT:
        assert _philox_reference(c, k) == want
    g = torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**62, (200,), generator=g) * 2 \
        + torch.randint(0, 2, (200,), generator=g)
    ctrs = torch.randint(0, 2**62, (200,), generator=g)
    ours = torch.stack(philox4x32(seeds, ctrs), 1).tolist()
    for s, c, w in zip(seeds.tolist(), ctrs.tolist(), ours, strict=True):
        ref = _philox_reference((c & 0xFFFFFFFF, c >> 32, 0, 0), (s & 0xFFFFFFFF, s >> 32))
        assert tuple(w) == ref


def test_philox_matches_triton_randint4x(interpreter):
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def kernel(seed_ptr, off_ptr, out_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        m = i < n
        a, b, c, d = tl.randint4x(tl.load(seed_ptr + i, mask=m), tl.load(off_ptr + i, mask=m))
        for k, w in enumerate((a, b, c, d)):
            tl.store(out_ptr + 4 * i + k, w.to(tl.int64) & 0xFFFFFFFF, mask=m)

    seeds = torch.tensor([0, 1, 7, 2**40 + 3, 2**62 + 12345, 99], dtype=torch.int64)
    offs = torch.tensor([0, 5, 2**31 + 1, 2**33 + 7, 17, 0], dtype=torch.int64)
    out = torch.zeros(len(seeds) * 4, dtype=torch.int64)
    kernel[(1,)](seeds, offs, out, len(seeds), BLOCK=8)
    ours = torch.stack(philox4x32(seeds, offs), 1).flatten()
    assert torch.equal(out, ours)


def test_streams_are_standard_normal_and_independent():
    n, d = 4000, 50  # 200k draws
    z = SampleStreams(123, n).randn((n, d), torch.float64)
    se = 1 / math.sqrt(z.numel())
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se  # var of s^2: 2 / N
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96) * se  # var of z^4: 105 - 9
    # P(|z| > 2) = 0.0455; binomial standard error
    p = math.erfc(2 / math.sqrt(2))
    assert abs(float((z.abs() > 2).double().mean()) - p) < 5 * math.sqrt(p * (1 - p)) * se
    # Neighbouring seeds, neighbouring columns and consecutive draws are uncorrelated.
    s = SampleStreams(0, 2)
    a, b = s.randn((2, 100_000), torch.float64), s.randn((2, 100_000), torch.float64)
    bound = 5 / math.sqrt(100_000)
    for u, v in ((a[0], a[1]), (a[0], b[0]), (a[0, :-1], a[0, 1:])):
        assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < bound
    u = SampleStreams(5, 1000).rand((1000, 100), torch.float64)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())


def test_row_streams_do_not_depend_on_the_batch():
    big = SampleStreams(10, 16)
    small = SampleStreams(torch.arange(14, 20))
    for shape in ((16, 3), (16, 7, 2), (16, 1)):
        a = big.randn(shape, torch.float32)
        b = small.randn((6, *shape[1:]), torch.float32)
        assert torch.equal(a[4:10], b)
    rows = torch.tensor([1, 5])
    c = big.randn((2, 9), torch.float64, rows=rows)  # advances rows 1 and 5 only
    d = SampleStreams(torch.tensor([11, 15]))
    for shape in ((2, 3), (2, 7, 2), (2, 1)):
        d.randn(shape, torch.float32)
    assert torch.equal(c, d.randn((2, 9), torch.float64))
    # ceil(m / 4) blocks per draw of m normals: 3 -> 1, 14 -> 4, 1 -> 1, then 9 -> 3.
    assert big.blocks[rows].tolist() == [1 + 4 + 1 + 3] * 2
    assert big.blocks[0].item() == 1 + 4 + 1


def _gmm(sde, d=2):
    w = torch.tensor([0.3, 0.7])
    m = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]])[:, :d]
    c = torch.stack([0.5 * torch.eye(3), torch.diag(torch.tensor([1.0, 0.4, 0.7]))])[:, :d, :d]
    return GMMScore(w, m, c, sde)


# Methods whose samples are functions of their own noise stream only. Not here: "ode"
# (torchdiffeq's adaptive step is shared by the batch), "fkc" (a particle population),
# "pc" with its default snr_norm="batch_mean" (one step size per batch, as score_sde).
INDEPENDENT = [("em", {}), ("pc", {"snr_norm": "per_sample"}), ("heun", {}),
               ("dpm_solver", {}), ("dpm_solver_sde", {}), ("unipc", {}), ("ggf", {}),
               ("dpm_solver_diffusers", {}), ("euler_diffusers", {})]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("method,opts", INDEPENDENT, ids=[m for m, _ in INDEPENDENT])
def test_samples_identical_across_batch_sizes_and_splits(sde, method, opts):
    score = _gmm(sde)
    kw = {"method": method, **opts}
    if method != "ggf":
        kw["steps"] = 12
    full = samplers.sample(score, sde, (16, 2), seed=3, **kw).x
    half = samplers.sample(score, sde, (8, 2), seed=3, **kw).x
    assert torch.equal(full[:8], half)
    parts = [samplers.sample(score, sde, (7, 2), seeds=torch.arange(3, 10), **kw).x,
             samplers.sample(score, sde, (1, 2), seed=10, **kw).x,
             samplers.sample(score, sde, (8, 2), seed=11, **kw).x]
    assert torch.equal(torch.cat(parts), full)
    # Different seeds give different samples; the batch-wide generator does depend on n.
    assert not torch.equal(samplers.sample(score, sde, (8, 2), seed=4, **kw).x, half)


def test_generator_path_is_batch_dependent():
    """The contrast that motivates seeds: one torch.Generator stream for the whole batch."""
    sde = VPSDE()
    a = samplers.sample(_gmm(sde), sde, (16, 2), steps=8,
                        generator=torch.Generator().manual_seed(0)).x
    b = samplers.sample(_gmm(sde), sde, (8, 2), steps=8,
                        generator=torch.Generator().manual_seed(0)).x
    assert not torch.equal(a[:8], b)


def test_teleport_and_prior_kinds_use_the_streams():
    sde = VPSDE()
    gs = GaussianScore(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.5], [0.5, 2.0]]), sde)
    data = gs.sample_data(2000, torch.Generator().manual_seed(0)).float()
    tp = samplers.GaussianTeleport.fit(data, sde)
    for mode in ("marginal", "conditional", "ode"):
        kw = {"teleport": tp, "t_start": 0.5, "teleport_mode": mode, "steps": 6}
        method = "heun" if mode == "ode" else "em"
        a = samplers.sample(gs, sde, (12, 2), method=method, seed=0, **kw).x
        b = samplers.sample(gs, sde, (5, 2), method=method, seed=7, **kw).x
        assert torch.equal(a[7:], b), mode
    well = DoubleWellSDE()
    score = lambda x, t: well.stationary_score(x)  # noqa: E731
    a = samplers.sample(score, well, (10, 3), method="em", steps=5, seed=1,
                        denoise="mean").x
    b = samplers.sample(score, well, (4, 3), method="em", steps=5, seed=7, denoise="mean").x
    assert torch.equal(a[6:], b)


def test_sample_to_disk_does_not_depend_on_batch_size(tmp_path):
    sde = VPSDE()
    score = _gmm(sde)
    out = {}
    for batch in (1, 7, 64):
        res = samplers.sample_to_disk(score, sde, tmp_path / f"b{batch}", 20, 2,
                                      batch_size=batch, seed=5, method="em", steps=6)
        out[batch] = samplers.load_samples(res.out_dir)
    assert torch.equal(out[1], out[7]) and torch.equal(out[7], out[64])
    direct = samplers.sample(score, sde, (20, 2), method="em", steps=6, seed=5).x
    assert torch.equal(out[64], direct)


def test_kernel_path_matches_the_pytorch_path(interpreter):
    """The fused kernels compute the same Philox words per (row seed, block) and the same
    Box–Muller map in float32: agreement to float32 rounding through the solve."""
    sde = VPSDE()
    score = _gmm(sde, d=3)
    for method, opts in (("em", {}), ("pc", {"snr_norm": "per_sample"})):
        fused = samplers.sample(score, sde, (6, 3), method=method, steps=10, seed=2,
                                use_triton=True, **opts).x
        eager = samplers.sample(score, sde, (6, 3), method=method, steps=10, seed=2,
                                use_triton=False, **opts).x
        # 10 steps of float32 updates of O(1) values: a few ulps each.
        assert torch.allclose(fused, eager, rtol=0, atol=1e-5), method
        half = samplers.sample(score, sde, (3, 3), method=method, steps=10, seed=5,
                               use_triton=True, **opts).x
        assert torch.equal(fused[3:], half)


@pytest.mark.parametrize("bad", ["abc", 1.5, -1, True, 2**63])
def test_bad_seeds_are_refused(bad):
    sde = VPSDE()
    with pytest.raises(ValueError, match="seed"):
        samplers.sample(_gmm(sde), sde, (4, 2), steps=2, seed=bad)


def test_seed_and_generator_are_exclusive():
    sde = VPSDE()
    with pytest.raises(ValueError, match="one of generator / seed / seeds"):
        samplers.sample(_gmm(sde), sde, (4, 2), steps=2, seed=0,
                        generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\(4,\) integer tensor"):
        samplers.sample(_gmm(sde), sde, (4, 2), steps=2, seeds=torch.arange(3))
