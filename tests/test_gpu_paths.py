"""The GPU paths' known pitfalls, each checked on CPU (Triton's interpreter, a CPU stand-in or an
op counter) and, where it needs CUDA, by a `gpu` twin:

1. fused Heun on a non-contiguous start; 2. torch.compile's own CUDA graphs refused, the mode
chosen per path; 3. one host sync per GGF iteration, tolerances copied once; 4. Heun draws no
seed; 5. bounded caches that never keep a score alive, compile errors told from run errors,
dynamic shapes for shrinking batches; 6. half precision keeps every grid time distinct.
"""

import gc

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import samplers
from samplers.kernels import compile as compiled
from samplers.kernels import graph
from samplers.plans import ScoreLRU
from scorekit.nets.mlp import MLPScore
from scorekit.scores import GaussianScore
from scorekit.sde import VESDE, VPSDE

F64 = torch.float64


def _gauss(sde, d=2):
    return GaussianScore(torch.zeros(d), torch.diag(torch.linspace(0.5, 2.0, d)), sde)


# --- 1. non-contiguous starts on the kernel path ------------------------------------------------
@pytest.mark.parametrize("method", ["heun", "em"])
def test_kernels_take_a_non_contiguous_start(interpreter, method):
    """A transposed x_init: the kernels index flat memory, so the state must be made
    contiguous first (before the fix, fused Heun was off by 35)."""
    sde = VPSDE()
    x0 = torch.randn(2, 40, generator=torch.Generator().manual_seed(0)).T  # (40, 2), strided
    assert not x0.is_contiguous()
    out = [samplers.sample(_gauss(sde), sde, (40, 2), method=method, steps=6, x_init=x0,
                           use_triton=use, generator=torch.Generator().manual_seed(1)).x
           for use in (True, False)]
    if method == "heun":  # deterministic: the two paths agree to float32 rounding
        torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)
    else:  # Philox vs torch noise: only the noise-free part of the first step is comparable
        assert torch.isfinite(out[0]).all()


@pytest.mark.gpu
def test_kernels_take_a_non_contiguous_start_on_cuda():
    sde = VPSDE()
    x0 = torch.randn(2, 64, device="cuda").T
    out = [samplers.sample(_gauss(sde).cuda(), sde, (64, 2), method="heun", steps=6, x_init=x0,
                           use_triton=use, device="cuda").x for use in (True, False)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-5)


# --- 2. compile modes ----------------------------------------------------------------------------
def test_compile_mode_per_path_and_reduce_overhead_refused():
    assert compiled.compile_options(True, captured=False)["mode"] == "default"
    assert compiled.compile_options(True, captured=True)["mode"] == \
        "max-autotune-no-cudagraphs"
    assert compiled.compile_options({"backend": "eager"}, captured=False).get("mode") is None
    with pytest.raises(ValueError, match="reduce-overhead"):
        compiled.compile_options({"mode": "reduce-overhead"}, captured=False)
    sde = VPSDE()
    with pytest.raises(ValueError, match="reduce-overhead"):
        samplers.sample(_gauss(sde), sde, (4, 2), steps=2, compile={"mode": "reduce-overhead"})


@pytest.mark.gpu
def test_fkc_with_compiled_score_on_cuda():
    """FKC keeps the scores of both MALA states across calls: with compile=True on CUDA the
    result matches the eager score's (reduce-overhead would have overwritten them)."""
    torch.manual_seed(0)
    net = MLPScore(2, VPSDE(), hidden=32, depth=2).cuda().eval()
    runs = [samplers.sample(net, VPSDE(), (256, 2), method="fkc", steps=20, device="cuda",
                            generator=torch.Generator("cuda").manual_seed(0), compile=c).x
            for c in (False, True)]
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-3, atol=1e-3)
    samplers.clear_graphs()


# --- 3. GGF: one host sync per iteration, tolerances copied once ---------------------------------
class _SyncOps(TorchDispatchMode):
    """Counts the ops that read device values back to the host: nonzero, item-like scalar
    reads and boolean-mask indexing (which runs a nonzero inside)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("nonzero", "_local_scalar_dense", "masked_select", "is_nonzero"):
            self.syncs += 1
        elif name in ("index", "index_put", "index_put_"):
            idx = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx or ()):
                self.syncs += 1
        return func(*args, **(kwargs or {}))


def test_ggf_syncs_once_per_iteration():
    from samplers.ggf import gotta_go_fast

    sde = VPSDE()
    x = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0))
    score = lambda x, t: -x  # noqa: E731 - N(0, I) data under VP; no input checks of its own
    with torch.no_grad(), _SyncOps() as ops:
        _, info = gotta_go_fast(score, sde, x, abs_tol=0.01, rel_tol=0.05, denoise="none",
                                generator=torch.Generator().manual_seed(1))
    # One nonzero per iteration (it sizes the call and ends the loop), plus the final checks
    # and the info's scalar reads after the loop.
    assert ops.syncs <= info["batch_iters"] + 1 + 8, (ops.syncs, info["batch_iters"])


def test_ggf_tolerances_copied_once(interpreter):
    """The error kernel's tolerances reach the device once per setting, not once per step."""
    from samplers.kernels import ggf_error
    from samplers.kernels.triton_ops import tolerances

    tolerances.cache_clear()
    xh, xe, xp = (torch.randn(16, 4, generator=torch.Generator().manual_seed(i))
                  for i in range(3))
    for _ in range(5):
        ggf_error(xh, xe, xp, 0.01, 0.05, use_triton=True)
    info = tolerances.cache_info()
    assert info.misses == 1 and info.hits == 4


@pytest.mark.gpu
def test_ggf_syncs_once_per_iteration_on_cuda():
    sde = VPSDE()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with pytest.warns(UserWarning) as record:
            res = samplers.sample(_gauss(sde).cuda(), sde, (256, 2), method="ggf",
                                  abs_tol=0.01, rel_tol=0.05, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = sum("synchroniz" in str(w.message) for w in record)
    assert syncs <= res.info["batch_iters"] + 16, (syncs, res.info["batch_iters"])


# --- 4. Heun draws no seed -----------------------------------------------------------------------
def test_fused_heun_consumes_no_random_stream(interpreter):
    """Heun is deterministic: on the kernel path it draws no Philox seed, from the caller's
    generator or the global one (a graph replay draws none either)."""
    sde = VPSDE()
    x0 = torch.randn(8, 2)
    g = torch.Generator().manual_seed(3)
    state, g_state = torch.get_rng_state(), g.get_state()
    samplers.sample(_gauss(sde), sde, (8, 2), method="heun", steps=5, x_init=x0,
                    use_triton=True, generator=g)
    assert torch.equal(torch.get_rng_state(), state) and torch.equal(g.get_state(), g_state)


@pytest.mark.gpu
def test_eager_heun_leaves_the_cuda_rng_alone():
    sde = VPSDE()
    x0 = torch.randn(8, 2, device="cuda")
    state = torch.cuda.get_rng_state()
    samplers.sample(_gauss(sde).cuda(), sde, (8, 2), method="heun", steps=5, x_init=x0,
                    device="cuda")
    assert torch.equal(torch.cuda.get_rng_state(), state)


# --- 5. caches ------------------------------------------------------------------------------------
def test_score_cache_is_bounded_and_lets_scores_die():
    cache = ScoreLRU(3)
    scores = [MLPScore(2, VPSDE(), hidden=4, depth=1) for _ in range(5)]
    for i, s in enumerate(scores):
        cache.put(s, "k", i)
    assert len(cache) == 3 and cache.get(scores[0], "k") is None
    assert cache.get(scores[4], "k") == 4
    del scores[4], s
    gc.collect()
    assert len(cache) == 2  # the entry of a collected score goes with it
    method = _Holder().score
    cache.put(method, "m", 1)  # a bound method: held through a WeakMethod
    assert cache.get(method, "m") == 1


class _Holder:
    def score(self, x, t):
        return -x


def test_compile_cache_bounded_and_run_errors_propagate():
    compiled.clear_compiled()
    sde = VESDE()
    for _ in range(compiled.MAX_COMPILED + 3):
        samplers.sample(_Holder().score, sde, (4, 2), steps=2, compile={"backend": "eager"})
    assert len(compiled._COMPILED) <= compiled.MAX_COMPILED

    def fails_at_run_time(gm, example_inputs):
        def run(*args):
            raise RuntimeError("operation not permitted when stream is capturing")
        return run

    with pytest.raises(RuntimeError, match="stream is capturing"):
        samplers.sample(lambda x, t: -x / 4, sde, (4, 2), steps=2,
                        compile={"backend": fails_at_run_time})
    compiled.clear_compiled()


def test_shrinking_batches_compile_with_dynamic_shapes():
    assert compiled.compile_options(True, captured=False, varying_batch=True)["dynamic"] is None
    assert compiled.compile_options(True, captured=False)["dynamic"] is False


@pytest.mark.gpu
def test_graph_cache_lets_a_deleted_network_go():
    samplers.clear_graphs()
    net = MLPScore(2, VPSDE(), hidden=32, depth=2).cuda().eval()
    samplers.sample(net, VPSDE(), (64, 2), steps=5, device="cuda", capture="graph")
    assert len(graph._CACHE) == 1
    del net
    gc.collect()
    assert len(graph._CACHE) == 0


# --- 6. half precision ---------------------------------------------------------------------------
def test_bfloat16_keeps_every_grid_time_distinct():
    """In bf16 a 1001-point grid on [eps, 1] collapses to ~500 distinct values; times and
    coefficients stay in float32, so every step sees its own t, and the network its own noise
    label."""
    torch.manual_seed(0)
    net = MLPScore(2, VPSDE(), hidden=16, depth=1).to(torch.bfloat16).eval()
    labels, times = set(), []
    inner = net.net.forward

    def spy(x, c):
        labels.update(c.tolist())
        return inner(x, c)

    net.net.forward = spy
    res = samplers.sample(net, VPSDE(), (8, 2), method="em", steps=1000, dtype=torch.bfloat16,
                          callback=lambda i, t, x, x0: times.append(t[0].item()),
                          generator=torch.Generator().manual_seed(0))
    assert res.x.dtype == torch.bfloat16 and torch.isfinite(res.x).all()
    assert len(set(times)) == 1000 and len(labels) == 1001  # 1000 steps + Tweedie


@pytest.mark.gpu
def test_bfloat16_on_the_kernel_path():
    torch.manual_seed(0)
    net = MLPScore(2, VPSDE(), hidden=16, depth=1).to("cuda", torch.bfloat16).eval()
    times = []
    res = samplers.sample(net, VPSDE(), (64, 2), method="em", steps=1000, dtype=torch.bfloat16,
                          device="cuda", callback=lambda i, t, x, x0: times.append(t[0].item()))
    assert torch.isfinite(res.x).all() and len(set(times)) == 1000
