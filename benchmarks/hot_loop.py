"""Hot sampling loop: scorekit's fixed-step EM against peers at equal NFE, network and batch.

    python benchmarks/hot_loop.py [--quick] [--device cpu|cuda] [--reps 5]
    python scripts/benchmark.py suite=hot_loop [quick=true] [device=cuda]

Every contender integrates the same VP reverse process with N network calls per sample
(counted) through the same network object (weights, dtype, batch): a plain PyTorch EM loop
(fresh tensors each step, Python-float coefficients), torchsde `sdeint(method="euler")` on the
time-reversed SDE (u = T - t), a diffusers EulerAncestralDiscreteScheduler loop built on the
process's alpha_bar table, k-diffusion's `sample_euler_ancestral` when it imports, and scorekit
`samplers.sample(method="em", denoise="none")` eager, +fused (Triton, CUDA), +graph (CUDA
graphs, CUDA) and +compile (torch.compile of the network). Reported per contender: median
wall time over `reps` runs after one warm-up run (reported separately), samples/s, and the
sampler overhead (T - NFE t_net) / T, t_net the median isolated forward at that batch.
Contenders run interleaved (one rep of each in turn), so drifts in machine load hit all alike.
Networks: `exact` (the exact score -x of standard normal data, one elementwise op, so the
time is the loop's own), `mlp_tiny` (3 x 128 on 2-D), `mlp_small` (4 x 512 on 64-d) and `unet`
(diffusers UNet2DModel on 1 x 8 x 8). Writes results/hot_loop_<device>[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import samplers  # noqa: E402
from benchmarks._peers import Denoiser, k_diffusion  # noqa: E402
from benchmarks._peers import sigmas as kd_sigmas  # noqa: E402
from benchmarks._report import (  # noqa: E402
    RESULTS,
    RowProgress,
    environment,
    markdown_table,
    write,
)
from samplers.diffusers_adapter import _alpha_bar_table, trained_betas  # noqa: E402
from scorekit._validate import ConfigError  # noqa: E402
from scorekit.nets.mlp import MLPScore  # noqa: E402
from scorekit.nets.unet import UNetScore  # noqa: E402
from scorekit.sde import VPSDE  # noqa: E402

PEERS = ("plain", "torchsde", "diffusers", "k_diffusion")
OURS = ("scorekit", "scorekit+fused", "scorekit+graph", "scorekit+compile")
# (net, batch, NFE) grids. CPU: the full grid would take hours on one core, so the large
# batches run at NFE 10 only and the UNet at batch 256.
GRIDS = {
    "cpu": [("exact", 256, 100), ("exact", 4096, 100), ("exact", 65536, 10),
            ("mlp_tiny", 256, 10), ("mlp_tiny", 256, 100), ("mlp_tiny", 256, 1000),
            ("mlp_tiny", 4096, 10), ("mlp_tiny", 4096, 100), ("mlp_tiny", 65536, 10),
            ("mlp_small", 256, 10), ("mlp_small", 256, 100), ("mlp_small", 4096, 10),
            ("unet", 256, 10)],
    "cuda": [(net, b, n) for net in ("exact", "mlp_tiny", "mlp_small") for b in (256, 4096, 65536)
             for n in (10, 100, 1000)] + [("unet", b, n) for b in (256, 4096) for n in (10, 100)],
    "quick": [("mlp_tiny", 64, 5), ("unet", 8, 3)],
    # scripts/gpu_check.sh: the settings of the targets (MLP at batch >= 4096, the UNet), in
    # minutes; "dry" is its CPU rehearsal.
    "gpu_check": [("exact", 4096, 100), ("mlp_tiny", 4096, 100), ("mlp_tiny", 65536, 100),
                  ("mlp_small", 4096, 100), ("unet", 256, 100)],
    "dry": [("exact", 64, 5)],
}
COMPILE_MAX_BATCH = {"cpu": 4096, "cuda": 1 << 30}  # CPU inductor compiles per shape: ~20-40 s


class Counted:
    """The network, counting calls per sample (peers have no counter of their own)."""

    def __init__(self, net: Callable, batch: int):
        self.net, self.batch, self.rows = net, batch, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.net(x, t)

    def nfe(self) -> float:
        return self.rows / self.batch


class ExactScore(torch.nn.Module):
    """The exact score -x of standard normal data under VP (any t): one elementwise op, so a
    loop's own overhead is most of its time."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


def make_net(name: str, sde: VPSDE, device: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The benchmark network and its sample shape (fixed weights)."""
    torch.manual_seed(0)
    if name == "exact":
        net, shape = ExactScore(), (2,)
    elif name == "mlp_tiny":
        net, shape = MLPScore(2, sde, hidden=128, depth=3), (2,)
    elif name == "mlp_small":
        net, shape = MLPScore(64, sde, hidden=512, depth=4), (64,)
    else:  # digits-size UNet (diffusers UNet2DModel backbone)
        net = UNetScore(64, sde, sample_shape=(1, 8, 8), channels=(32, 64),
                        attention=(False, False), layers_per_block=1, norm_groups=8)
        shape = (1, 8, 8)
    return net.to(device).eval(), shape


def plain_em(score: Callable, sde: VPSDE, shape: tuple[int, ...], n: int,
             g: torch.Generator) -> torch.Tensor:
    """The textbook loop: x <- x + h (g^2 s - f) + g sqrt(h) z with Python-float coefficients."""
    x = torch.randn(shape, generator=g, device=g.device)
    ts = torch.linspace(sde.T, sde.eps, n + 1, dtype=torch.float64).tolist()
    for i in range(n):
        h = ts[i] - ts[i + 1]
        beta = sde.beta_min + ts[i] * (sde.beta_max - sde.beta_min)
        t = torch.full((shape[0],), ts[i], device=x.device)
        z = torch.randn(shape, generator=g, device=g.device)
        x = x + h * (beta * score(x, t) + 0.5 * beta * x) + math.sqrt(beta * h) * z
    return x


def torchsde_em(score: Callable, sde: VPSDE, shape: tuple[int, ...], n: int,
                g: torch.Generator) -> torch.Tensor:
    """torchsde's Euler on the reverse SDE in u = T - t (torchsde needs increasing times)."""
    import torchsde

    b, span = shape[0], sde.T - sde.eps

    class Reverse(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def beta(self, u: torch.Tensor) -> torch.Tensor:
            return sde.beta_min + (sde.T - u) * (sde.beta_max - sde.beta_min)

        def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = (sde.T - u).to(y.dtype).expand(b)
            beta = self.beta(u)
            return beta * score(y.view(shape), t).flatten(1) + 0.5 * beta * y

        def g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.beta(u).sqrt().expand_as(y)

    y0 = torch.randn(shape, generator=g, device=g.device).flatten(1)
    ts = torch.tensor([0.0, span], device=y0.device)
    # dt a hair over span / n: float32 time sums must not add an (n+1)-th sliver step.
    ys = torchsde.sdeint(Reverse(), y0, ts, method="euler",
                         dt=float(ts[-1]) / n * (1 + 1e-4))
    return ys[-1].view(shape)


def diffusers_ancestral(score: Callable, sde: VPSDE, shape: tuple[int, ...], n: int,
                        g: torch.Generator) -> torch.Tensor:
    """diffusers' Euler-ancestral scheduler loop; eps_hat = -sigma_t s(x_vp, t)."""
    from diffusers import EulerAncestralDiscreteScheduler

    sched = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, prediction_type="epsilon",
                                            trained_betas=trained_betas(sde))
    sched.set_timesteps(n, device=g.device)
    t_table, abar = _alpha_bar_table(sde, 1000)
    x = torch.randn(shape, generator=g, device=g.device) * sched.init_noise_sigma
    for step in sched.timesteps:
        k = int(round(float(step)))
        inp = sched.scale_model_input(x, step)  # VP coordinates: what the score expects
        t = torch.full((shape[0],), float(t_table[k]), device=x.device)
        eps = -math.sqrt(1 - float(abar[k])) * score(inp, t)
        x = sched.step(eps, step, x, generator=g).prev_sample
    return x


def kdiffusion_ancestral(score: Callable, sde: VPSDE, shape: tuple[int, ...], n: int,
                         g: torch.Generator) -> torch.Tensor:
    """k-diffusion's sample_euler_ancestral on Karras sigmas with the denoiser of the same score
    (benchmarks._peers.Denoiser: D(x~, s) in EDM's variables)."""
    kd = k_diffusion()
    sig = kd_sigmas("karras", n, sde, torch.float32).to(g.device)
    x = torch.randn(shape, generator=g, device=g.device) * sig[0]
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=g, device=g.device)))
    return kd.sample_euler_ancestral(Denoiser(score, sde), x, sig, disable=True)


def scorekit_em(variant: str) -> Callable:
    """samplers.sample(method="em") as one contender; check_finite off, as the peers check
    nothing."""
    opts = {"eager": {"use_triton": False}, "fused": {"use_triton": True},
            "graph": {"capture": "graph"}, "compile": {"compile": True}}[variant]

    def run(score, sde, shape, n, g):
        return samplers.sample(score, sde, shape, method="em", steps=n, denoise="none",
                               generator=g, device=g.device, check_finite=False, **opts).nfe
    return run


def contenders(device: str) -> dict[str, Callable | str]:
    """Name -> runner, or a string saying why the contender does not run here."""
    out: dict[str, Callable | str] = {"plain": plain_em}
    for name, module, fn in (("torchsde", "torchsde", torchsde_em),
                             ("diffusers", "diffusers", diffusers_ancestral)):
        try:
            __import__(module)
            out[name] = fn
        except Exception as err:  # noqa: BLE001 - a peer that does not import is recorded
            out[name] = f"not importable ({type(err).__name__}: {str(err)[:80]})"
    kd = k_diffusion()  # loaded without its training stack (see benchmarks._peers)
    out["k_diffusion"] = kd if isinstance(kd, str) else kdiffusion_ancestral
    out["scorekit"] = scorekit_em("eager")
    cuda = device == "cuda"
    out["scorekit+fused"] = scorekit_em("fused") if cuda else "CUDA only (Triton kernels)"
    out["scorekit+graph"] = scorekit_em("graph") if cuda else "CUDA only (CUDA graphs)"
    out["scorekit+compile"] = scorekit_em("compile")
    return out


def _clock(device: str) -> Callable[[], float]:
    def now() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def forward_time(net: Callable, shape: tuple[int, ...], device: str, reps: int) -> float:
    """Median isolated forward time at this batch (t_net)."""
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 0.5, device=device)
    now, times = _clock(device), []
    with torch.no_grad():
        net(x, t)
        for _ in range(max(reps, 5)):
            start = now()
            net(x, t)
            times.append(now() - start)
    return statistics.median(times)


def run_config(net_name: str, batch: int, nfe: int, device: str, reps: int,
               which: dict[str, Callable | str]) -> list[dict]:
    """Time every contender on one (network, batch, NFE) setting."""
    sde = VPSDE()
    net, sample_shape = make_net(net_name, sde, device)
    shape = (batch, *sample_shape)
    t_net = forward_time(net, shape, device, reps)
    now = _clock(device)
    rows, active = [], {}
    for name, fn in which.items():
        if isinstance(fn, str):
            rows.append({"contender": name, "status": fn})
            continue
        if name == "scorekit+compile" and batch > COMPILE_MAX_BATCH[device]:
            rows.append({"contender": name, "status": "skipped (compile per shape too slow "
                                                      "on CPU at this batch)"})
            continue
        # scorekit counts its own NFE (a float it returns); the peers' calls are counted here.
        score = net if name.startswith("scorekit") else Counted(net, batch)
        g = torch.Generator(device=device).manual_seed(0)
        start = now()
        with torch.no_grad():
            out = fn(score, sde, shape, nfe, g)
        row = {"contender": name, "warmup_s": now() - start, "status": "ok", "times": [],
               "nfe": out if isinstance(out, float) else score.nfe()}
        rows.append(row)
        active[name] = (fn, row, score)
    runs = list(active.values())
    for rep in range(reps):  # interleaved, rotating order; each with the object it warmed up
        for fn, row, score in runs[rep % len(runs):] + runs[:rep % len(runs)]:
            g = torch.Generator(device=device).manual_seed(len(row["times"]) + 1)
            start = now()
            with torch.no_grad():
                fn(score, sde, shape, nfe, g)
            row["times"].append(now() - start)
    for row in rows:
        row.update(net=net_name, batch=batch, steps=nfe, t_net=t_net)
        if row["status"] == "ok":
            row["time_s"] = statistics.median(row["times"])
            row["time_min_s"] = min(row["times"])
            row["samples_per_s"] = batch / row["time_s"]
            row["overhead"] = (row["time_s"] - row["nfe"] * t_net) / row["time_s"]
            # Per counted NFE: torchsde calls the drift once more than it steps (shape check).
            row["per_nfe"] = [t / row["nfe"] for t in row.pop("times")]
    base = next((r for r in rows if r["contender"] == "scorekit" and r["status"] == "ok"), None)
    for row in rows:
        if base is not None and row["status"] == "ok":
            row["vs_scorekit"] = paired_ratio(row["per_nfe"], base["per_nfe"])
    samplers.clear_graphs()
    return rows


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over reps of a[r] / b[r]: reps r ran back to back, so a shared machine's load
    drifts cancel in each ratio."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def headline(rows: list[dict]) -> list[dict]:
    """Per peer and group of settings (the exact score, where the loop is the time; the
    networks): min / median / max over the settings of peer time / scorekit time per counted
    NFE, for scorekit eager and for scorekit's fastest variant."""
    out = []
    configs = sorted({(r["net"], r["batch"], r["steps"]) for r in rows})
    groups = (("exact score", [c for c in configs if c[0] == "exact"]),
              ("networks", [c for c in configs if c[0] != "exact"]))
    for peer in PEERS:
        for group, members in groups:
            eager, best = [], []
            for cfg in members:
                rs = {r["contender"]: r for r in rows
                      if (r["net"], r["batch"], r["steps"]) == cfg and r["status"] == "ok"}
                if peer not in rs or "scorekit" not in rs:
                    continue
                ours = [rs[k]["per_nfe"] for k in OURS if k in rs]
                fastest = [min(times) for times in zip(*ours, strict=True)]
                eager.append(rs[peer]["vs_scorekit"])
                best.append(paired_ratio(rs[peer]["per_nfe"], fastest))
            if eager:
                out.append({"peer": peer, "settings": group, "n": len(eager),
                            "eager_min": min(eager), "eager_median": statistics.median(eager),
                            "eager_max": max(eager), "best_min": min(best),
                            "best_median": statistics.median(best), "best_max": max(best)})
    return out


def op_profile(device: str, net_name: str = "mlp_tiny", batch: int = 256, nfe: int = 100,
               ) -> list[dict]:
    """torch.profiler of scorekit eager vs the plain loop (warm, same network): ATen op calls
    and their self time, to tell tensor work from Python overhead."""
    from torch.profiler import ProfilerActivity, profile

    sde = VPSDE()
    net, sample_shape = make_net(net_name, sde, device)
    shape, out = (batch, *sample_shape), []
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    fns = {"plain": plain_em, "scorekit": scorekit_em("eager")}
    with torch.no_grad():
        for name, fn in (*fns.items(), *fns.items()):  # second round: both warm
            g = torch.Generator(device=device).manual_seed(0)
            start = time.perf_counter()
            with profile(activities=acts) as prof:
                fn(net, sde, shape, nfe, g)
            wall = time.perf_counter() - start
            ev = prof.key_averages()
            out.append({"contender": name, "net": net_name, "batch": batch, "steps": nfe,
                        "aten_calls": sum(e.count for e in ev if e.key.startswith("aten::")),
                        "op_self_ms": sum(e.self_cpu_time_total for e in ev) / 1e3,
                        "profiled_wall_ms": wall * 1e3})
    return out[2:]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["net"], r["batch"], r["steps"]) for r in rows})
    names = [c for c in (*PEERS, *OURS) if any(r["contender"] == c and r["status"] == "ok"
                                               for r in rows)]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(configs)), 4.5))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        vals = []
        for cfg in configs:
            r = next((r for r in rows if (r["net"], r["batch"], r["steps"]) == cfg
                      and r["contender"] == name and r["status"] == "ok"), None)
            vals.append(r["vs_scorekit"] if r and "vs_scorekit" in r else float("nan"))
        ax.bar([i + k * width for i in range(len(configs))], vals, width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))],
                  [f"{n}\nB={b} N={s}" for n, b, s in configs], fontsize=7)
    ax.set(ylabel="time per NFE / scorekit eager's (lower is faster)", yscale="log",
           title="Hot loop: time relative to scorekit at equal NFE")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(device: str = "cpu", quick: bool = False, reps: int = 5, name: str | None = None,
        grid: str | None = None, out_dir: str | None = None) -> dict:
    """Run the grid (`GRIDS[grid]`; default the device's, or "quick"); write
    <out_dir>/<name>.{json,md,png} (default benchmarks/results/) and return the payload."""
    if grid is not None and grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}; valid: {sorted(GRIDS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' needs a CUDA device")
    if device == "cpu":
        torch.set_num_threads(1)  # one core: less noise from a shared machine
    which = contenders(device)
    grid = GRIDS[grid or ("quick" if quick else device)]
    rows: list[dict] = []
    with RowProgress(len(grid), "hot_loop settings", unit="setting") as bar:
        for net_name, batch, nfe in grid:
            rows += run_config(net_name, batch, nfe, device, 2 if quick else reps, which)
            bar.row(f"{net_name} B={batch} N={nfe}: " + ", ".join(
                f"{r['contender']} {r['time_s']:.3g}s" for r in rows[-len(which):]
                if r["status"] == "ok"))
    versions = {"device_name": (torch.cuda.get_device_name(0) if device == "cuda"
                                else environment()["device"]),
                "tf32": torch.backends.cuda.matmul.allow_tf32}
    for mod in ("triton", "torchsde", "diffusers", "k_diffusion"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    heads = headline(rows)
    profiled = op_profile(device, batch=64 if quick else 256, nfe=5 if quick else 100)
    name = name or f"hot_loop_{device}{'_quick' if quick else ''}"
    payload = {"env": environment(), "versions": versions, "device": device, "reps": reps,
               "headline": heads, "rows": rows, "op_profile": profiled,
               "notes": {k: v for k, v in which.items() if isinstance(v, str)}}
    cols = ["net", "batch", "steps", "contender", "nfe", "time_s", "time_min_s", "samples_per_s",
            "overhead", "vs_scorekit", "warmup_s", "status"]
    md = (f"# Hot loop ({device}; {versions['device_name']}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} thread(s); median of {reps} after 1 warm-up)\n\n"
          "`vs_scorekit` = wall time per counted NFE / scorekit eager's at the same setting, "
          "median over reps of the ratio within a rep (contenders run back to back in each "
          "rep) (> 1: slower than scorekit; torchsde makes one extra drift call, its shape "
          "check). `time_s`: median, `time_min_s`: fastest rep. "
          "`overhead` = (T - NFE t_net) / T. Ratios: peer / scorekit eager (`eager_*`) and "
          "peer / fastest scorekit variant (`best_*`) over the settings.\n\n"
          "## Peer / scorekit time ratios\n\n"
          + markdown_table(heads, list(heads[0]) if heads else ["peer"])
          + "\n\n## Where the time goes (torch.profiler, warm runs)\n\n"
          + markdown_table(profiled, list(profiled[0]))
          + "\n\n## All settings\n\n" + markdown_table(rows, cols) + "\n")
    out = Path(out_dir) if out_dir else RESULTS
    write(name, payload, md, out)
    plot(rows, out / f"{name}.png")
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--name", default=None)
    parser.add_argument("--grid", default=None, choices=sorted(GRIDS))
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results/")
    args = parser.parse_args()
    run(args.device, args.quick, args.reps, args.name, args.grid, args.out_dir)


if __name__ == "__main__":
    main()
