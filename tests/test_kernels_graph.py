"""CUDA-graph capture and torch.compile options of `samplers.sample`.

On CPU: capture="graph" refuses with a clear error, compile=... runs (cheap backends) with
the same samples and NFE. On CUDA (marked gpu): graph replay equals the eager kernel path with
the same seed, draws new noise per replay, and the Triton kernels match the PyTorch path.
"""

import pytest
import torch

import samplers
from samplers.kernels import (
    Steps,
    em_update,
    ggf_error,
    heun_correct,
    heun_predict,
    langevin_update,
)
from scorekit.nets.mlp import MLPScore
from scorekit.scores import GaussianScore
from scorekit.sde import VESDE, VPSDE

OPTS = {"em": {"steps": 12}, "pc": {"steps": 6, "snr": 0.05}, "heun": {"steps": 7}}
NFE = {"em": 13, "pc": 13, "heun": 13}


def _gauss(sde, d=3):
    return GaussianScore(torch.zeros(d), torch.diag(torch.linspace(0.5, 2.0, d)), sde)


def _run(score, sde, method, device="cpu", seed=0, n=64, **kw):
    g = torch.Generator(device=device).manual_seed(seed)
    return samplers.sample(score, sde, (n, 3), method=method, generator=g, device=device,
                           **OPTS[method], **kw)


def test_capture_graph_needs_cuda():
    with pytest.raises(ValueError, match="needs CUDA"):
        _run(_gauss(VPSDE()), VPSDE(), "em", capture="graph")


def test_capture_option_validated():
    with pytest.raises(ValueError, match="capture must be"):
        _run(_gauss(VPSDE()), VPSDE(), "em", capture="cuda")
    with pytest.raises(ValueError, match="graph_mode"):
        _run(_gauss(VPSDE()), VPSDE(), "em", graph_mode="loop")  # only with capture


@pytest.mark.parametrize("method", ["em", "heun"])
def test_compile_keeps_samples_and_nfe(method):
    torch.manual_seed(0)
    net = MLPScore(3, VPSDE(), hidden=16, depth=2).eval()
    ref = _run(net, VPSDE(), method)
    res = _run(net, VPSDE(), method, compile={"backend": "eager"})
    assert torch.equal(res.x, ref.x)
    assert res.nfe == ref.nfe == NFE[method]
    samplers.clear_graphs()


def test_compile_failure_falls_back_to_eager():
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    gs = _gauss(VESDE())
    ref = _run(gs, VESDE(), "em")
    with pytest.warns(RuntimeWarning, match="torch.compile of the score failed"):
        res = _run(gs, VESDE(), "em", compile={"backend": broken})
    assert torch.equal(res.x, ref.x) and res.nfe == ref.nfe
    samplers.clear_graphs()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["em", "pc", "heun"])
@pytest.mark.parametrize("graph_mode", ["loop", "step"])
def test_graph_replay_matches_eager_kernels(method, graph_mode):
    sde = VESDE() if method == "pc" else VPSDE()
    torch.manual_seed(0)
    net = MLPScore(3, sde, hidden=32, depth=2).cuda().eval()  # a network: capturable
    eager = _run(net, sde, method, "cuda", seed=3)
    graph = _run(net, sde, method, "cuda", seed=3, capture="graph", graph_mode=graph_mode)
    again = _run(net, sde, method, "cuda", seed=4, capture="graph", graph_mode=graph_mode)
    torch.testing.assert_close(graph.x, eager.x, rtol=1e-6, atol=1e-6)
    assert graph.nfe == again.nfe == eager.nfe == NFE[method]
    if method != "heun":  # fresh Philox noise per replay
        assert not torch.allclose(again.x, graph.x)
    samplers.clear_graphs()


@pytest.mark.gpu
def test_graph_with_compiled_network():
    torch.manual_seed(0)
    net = MLPScore(3, VPSDE(), hidden=32, depth=2).cuda().eval()
    eager = _run(net, VPSDE(), "em", "cuda", seed=1)
    graph = _run(net, VPSDE(), "em", "cuda", seed=1, capture="graph", compile=True)
    torch.testing.assert_close(graph.x, eager.x, rtol=1e-4, atol=1e-4)
    assert graph.nfe == eager.nfe
    samplers.clear_graphs()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_torch_on_cuda(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x, s, z, s2 = (torch.randn(257, 67, generator=g, device="cuda", dtype=dtype)
                   for _ in range(4))
    ts = torch.linspace(1, 0.1, 2, dtype=torch.float64)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    table = torch.tensor([[0.9, 0.3, 0.2, 0.7]], dtype=torch.float64)
    heun = torch.tensor([[-0.9, -0.4, 0.8, -0.5, -0.2]], dtype=torch.float64)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max())
    out = []
    for use_triton in (True, False):
        st = Steps(table, ts, x, g, use_triton=use_triton)
        sh = Steps(heun, ts, x, g, use_triton=use_triton)
        xs = x.clone()
        d1, x_in = heun_predict(xs, s, sh, 0)
        out.append([em_update(x.clone(), s, st, 0, noise=z),
                    langevin_update(x.clone(), s, st, 0, 3, 0.16, "per_sample", noise=z),
                    d1.clone(), x_in.clone(), heun_correct(xs, d1.clone(), s2, sh, 0).clone(),
                    ggf_error(x, s, z, 2 / 256, 0.05, use_triton=use_triton)])
    for a, b in zip(*out, strict=True):
        close(a, b)


@pytest.mark.gpu
def test_philox_noise_stats_on_cuda():
    x = torch.zeros(1 << 20, device="cuda")
    table = torch.tensor([[0.0, 0.0, 1.0]] * 2, dtype=torch.float64)
    st = Steps(table, torch.linspace(1, 0, 3, dtype=torch.float64), x,
               torch.Generator(device="cuda").manual_seed(0))
    assert st.fused
    z1 = em_update(x, x, st, 0).clone()
    z2 = em_update(x, x, st, 1).clone()
    n = x.numel()
    for z in (z1, z2):
        assert abs(z.double().mean()) < 4 / n**0.5
        assert abs(z.double().var() - 1) < 4 * (2 / n) ** 0.5
    assert abs(torch.corrcoef(torch.stack([z1, z2]))[0, 1]) < 4 / n**0.5
