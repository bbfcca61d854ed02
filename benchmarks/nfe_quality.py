"""Quality vs true NFE with exact scores: the error of each sampler is measured against the
known data distribution, so no learned model blurs the comparison.

    python benchmarks/nfe_quality.py [--quick] [--sde vp|ve] [--seeds 3]

Data: an 8-mode ring in 2-D and a 4-mode anisotropic mixture in 64-D (closed-form GMM scores).
Error: sliced W2 (256 projections) to exact data draws, relative covariance error and mean
error; the noise floor (the same metrics between two exact sample sets of equal size) is
printed with every table. Writes results/nfe_quality.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samplers  # noqa: E402
from benchmarks._report import environment, markdown_table, write  # noqa: E402
from scorekit.data.synthetic import gmm_params  # noqa: E402
from scorekit.metrics import sliced_wasserstein  # noqa: E402
from scorekit.scores import GMMScore  # noqa: E402
from scorekit.sde import VESDE, VPSDE  # noqa: E402

NFE_GRID = [5, 10, 20, 35, 50, 100, 200, 500, 1000]
QUICK_GRID = [10, 20, 50, 100]
ODE_TOLS = [1e-2, 1e-3, 1e-4, 1e-5]


def gmm64_params(d: int = 64, k: int = 4, seed: int = 0):
    """4 modes in d dims: means at distance ~3 from each other, eigenvalues log-spaced 0.01..1."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64) / d**0.5 * 2
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.logspace(-2, 0, d, dtype=torch.float64)
        covs.append(q @ torch.diag(lam) @ q.T)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    return weights, means, torch.stack(covs)


def datasets() -> dict[str, tuple]:
    return {"gmm2d": gmm_params(layout="ring"), "gmm64d": gmm64_params()}


def settings(method: str, nfe: int) -> dict | None:
    """Sampler options whose counted NFE is (about) `nfe`, or None when it cannot match."""
    if method == "em":
        return {"steps": nfe - 1} if nfe >= 2 else None  # + Tweedie
    if method == "pc":
        return {"steps": (nfe - 1) // 2} if nfe >= 3 else None  # corrector + predictor, + Tweedie
    if method == "heun":
        return {"steps": (nfe + 1) // 2} if nfe >= 3 else None  # 2 steps - 1
    if method in ("dpm_solver", "unipc"):
        return {"steps": nfe} if nfe <= 200 else None  # multistep solvers saturate early
    return None


def errors(x: torch.Tensor, ref: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> dict:
    x = x.double()
    return {
        "sw2": float(sliced_wasserstein(x, ref, n_proj=256)),
        "cov_err": float(torch.linalg.matrix_norm(torch.cov(x.T) - cov)
                         / torch.linalg.matrix_norm(cov)),
        "mean_err": float((x.mean(0) - mean).norm() / cov.diagonal().sum().sqrt()),
    }


def mixture_moments(w, mu, covs):
    mean = (w[:, None] * mu).sum(0)
    diff = mu - mean
    cov = (w[:, None, None] * (covs + diff[:, :, None] * diff[:, None, :])).sum(0)
    return mean, cov


def run(quick: bool, sde_name: str, seeds: int, n: int) -> dict:
    sde = VPSDE() if sde_name == "vp" else VESDE()
    grid = QUICK_GRID if quick else NFE_GRID
    methods = ["em", "pc", "heun", "dpm_solver", "unipc", "ode"]
    pc_snr = 0.01 if sde_name == "vp" else 0.16
    rows = []
    for name, params in datasets().items():
        score = GMMScore(*params, sde)
        mean, cov = mixture_moments(*params)
        d = score.dim
        for seed in range(seeds):
            g = torch.Generator().manual_seed(1000 + seed)
            ref = score.sample_data(n, generator=g)
            floor = errors(score.sample_data(n, generator=g), ref, mean, cov)
            rows.append({"data": name, "method": "noise floor", "seed": seed, "nfe": 0.0,
                         **floor, "time_s": 0.0})
            for method in methods:
                configs = ([{"rtol": tol, "atol": tol} for tol in ODE_TOLS] if method == "ode"
                           else [settings(method, nfe) for nfe in grid])
                for opts in configs:
                    if opts is None:
                        continue
                    if method == "pc":
                        opts = {**opts, "snr": pc_snr}
                    t0 = time.perf_counter()
                    res = samplers.sample(score, sde, (n, d), method=method, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(seed), **opts)
                    rows.append({"data": name, "method": method, "seed": seed, "nfe": res.nfe,
                                 **errors(res.x, ref, mean, cov),
                                 "time_s": time.perf_counter() - t0,
                                 "setting": ", ".join(f"{k}={v}" for k, v in opts.items())})
                    print(f"{name:7s} {method:11s} nfe={res.nfe:7.1f} sw2={rows[-1]['sw2']:.4f} "
                          f"cov_err={rows[-1]['cov_err']:.4f}", flush=True)
    return {"sde": sde_name, "n_samples": n, "seeds": seeds, "quick": quick, "rows": rows,
            "env": environment()}


def summarise(payload: dict) -> list[dict]:
    """Mean over seeds per (data, method, setting)."""
    groups: dict[tuple, list[dict]] = {}
    for r in payload["rows"]:
        groups.setdefault((r["data"], r["method"], r.get("setting", "")), []).append(r)
    out = []
    for (data, method, setting), rs in groups.items():
        avg = {k: sum(r[k] for r in rs) / len(rs) for k in ("nfe", "sw2", "cov_err", "mean_err")}
        out.append({"data": data, "method": method, "setting": setting, **avg})
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["data"] for r in summary})
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for j, data in enumerate(names):
        for i, metric in enumerate(("sw2", "cov_err")):
            ax = axes[i][j]
            rows = [r for r in summary if r["data"] == data]
            for method in sorted({r["method"] for r in rows} - {"noise floor"}):
                pts = sorted((r["nfe"], r[metric]) for r in rows if r["method"] == method)
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
            floor = [r[metric] for r in rows if r["method"] == "noise floor"][0]
            ax.axhline(floor, color="k", ls="--", lw=1, label="noise floor")
            ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=metric,
                   title=f"{data}: {metric} vs NFE")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small NFE grid and n (CI-sized)")
    ap.add_argument("--sde", default="vp", choices=["vp", "ve"])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="samples per run")
    args = ap.parse_args()
    n = args.n or (2000 if args.quick else 10000)
    payload = run(args.quick, args.sde, args.seeds, n)
    summary = summarise(payload)
    payload["summary"] = summary
    name = f"nfe_quality_{args.sde}" + ("_quick" if args.quick else "")
    md = (f"# Quality vs counted NFE, exact GMM scores ({args.sde.upper()}, n={n}, "
          f"seeds={args.seeds})\n\nenv: {payload['env']}\n\n"
          + markdown_table(sorted(summary, key=lambda r: (r["data"], r["method"], r["nfe"])),
                           ["data", "method", "setting", "nfe", "sw2", "cov_err", "mean_err"])
          + "\n")
    js, mdp = write(name, payload, md)
    png = js.with_suffix(".png")
    plot(summary, png)
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
