"""Quality vs true NFE with exact scores: the error of each sampler is measured against the
known data distribution, so no learned model blurs the comparison.

    python benchmarks/nfe_quality.py [--quick] [--sde vp|ve] [--seeds 3] [--dims 2,64,256]

Data: an 8-mode ring in 2-D and 4-mode anisotropic mixtures in 64-D / 256-D (closed-form GMM
scores). Error: sliced W2 (256 projections) to exact data draws, relative covariance error,
mean error and the total-variation error of the mode masses (nearest component, same rule for
both sets); the noise floor (the same metrics between two exact sample sets of equal size) is
printed with every table. Fixed-step samplers run on an NFE grid; the adaptive GGF runs on a
tolerance grid and is reported at its counted mean NFE per sample (min-max in the table).
Writes results/nfe_quality_<sde>[_quick].{json,md,png}.
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
GGF_RTOLS = [0.1, 0.05, 0.02, 0.01]  # samplers.md §9; abs_tol fixed at 2/256
QUICK_RTOLS = [0.1, 0.05, 0.02]
# Table label -> (samplers method, fixed options).
METHODS = {"em": ("em", {}), "ggf": ("ggf", {}), "ggf_bridge": ("ggf", {"brownian": "bridge"}),
           "pc": ("pc", {}), "heun": ("heun", {}), "dpm_solver": ("dpm_solver", {}),
           "unipc": ("unipc", {}), "ode": ("ode", {})}


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


def datasets(dims: list[int]) -> dict[str, tuple]:
    """2 -> the 8-mode ring; d > 2 -> `gmm64_params(d)` (4 anisotropic modes)."""
    return {f"gmm{d}d": gmm_params(layout="ring") if d == 2 else gmm64_params(d) for d in dims}


def configs(method: str, quick: bool) -> list[dict]:
    """Option sets to run for one method: an NFE grid, or a tolerance grid for adaptive ones."""
    if method == "ode":
        return [{"rtol": tol, "atol": tol} for tol in ODE_TOLS]
    if method == "ggf":
        return [{"abs_tol": 2 / 256, "rel_tol": r} for r in (QUICK_RTOLS if quick else GGF_RTOLS)]
    grid = QUICK_GRID if quick else NFE_GRID
    return [c for c in (settings(method, nfe) for nfe in grid) if c is not None]


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


def mode_masses(score: GMMScore, x: torch.Tensor) -> torch.Tensor:
    t = torch.full((x.shape[0],), score.sde.eps, dtype=torch.float64)
    lab = score.responsibilities(x.double(), t).argmax(1)
    return torch.bincount(lab, minlength=score.means.shape[0]).double() / x.shape[0]


def errors(x: torch.Tensor, ref: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
           score: GMMScore) -> dict:
    x = x.double()
    return {
        "sw2": float(sliced_wasserstein(x, ref, n_proj=256)),
        "cov_err": float(torch.linalg.matrix_norm(torch.cov(x.T) - cov)
                         / torch.linalg.matrix_norm(cov)),
        "mean_err": float((x.mean(0) - mean).norm() / cov.diagonal().sum().sqrt()),
        "mode_tv": float(0.5 * (mode_masses(score, x) - mode_masses(score, ref)).abs().sum()),
    }


def mixture_moments(w, mu, covs):
    mean = (w[:, None] * mu).sum(0)
    diff = mu - mean
    cov = (w[:, None, None] * (covs + diff[:, :, None] * diff[:, None, :])).sum(0)
    return mean, cov


def run(quick: bool, sde_name: str, seeds: int, n: int, dims: list[int]) -> dict:
    sde = VPSDE() if sde_name == "vp" else VESDE()
    pc_snr = 0.01 if sde_name == "vp" else 0.16
    rows = []
    for name, params in datasets(dims).items():
        score = GMMScore(*params, sde)
        mean, cov = mixture_moments(*params)
        d = score.dim
        for seed in range(seeds):
            g = torch.Generator().manual_seed(1000 + seed)
            ref = score.sample_data(n, generator=g)
            floor = errors(score.sample_data(n, generator=g), ref, mean, cov, score)
            rows.append({"data": name, "method": "noise floor", "seed": seed, "nfe": 0.0,
                         "nfe_min": 0, "nfe_max": 0, **floor, "time_s": 0.0})
            for label, (method, fixed) in METHODS.items():
                for opts in configs(method, quick):
                    if method == "pc":
                        opts = {**opts, "snr": pc_snr}
                    t0 = time.perf_counter()
                    res = samplers.sample(score, sde, (n, d), method=method, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(seed),
                                          **fixed, **opts)
                    rows.append({"data": name, "method": label, "seed": seed, "nfe": res.nfe,
                                 "nfe_min": int(res.nfe_per_sample.min()),
                                 "nfe_max": int(res.nfe_per_sample.max()),
                                 **errors(res.x, ref, mean, cov, score),
                                 "time_s": time.perf_counter() - t0,
                                 "setting": ", ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                      else f"{k}={v}" for k, v in opts.items())})
                    r = rows[-1]
                    print(f"{name:8s} {label:11s} nfe={res.nfe:7.1f} sw2={r['sw2']:.4f} "
                          f"cov_err={r['cov_err']:.4f} mode_tv={r['mode_tv']:.4f}", flush=True)
    return {"sde": sde_name, "n_samples": n, "seeds": seeds, "quick": quick, "dims": dims,
            "rows": rows, "env": environment()}


def summarise(payload: dict) -> list[dict]:
    """Mean over seeds per (data, method, setting)."""
    groups: dict[tuple, list[dict]] = {}
    for r in payload["rows"]:
        groups.setdefault((r["data"], r["method"], r.get("setting", "")), []).append(r)
    out = []
    for (data, method, setting), rs in groups.items():
        avg = {k: sum(r[k] for r in rs) / len(rs)
               for k in ("nfe", "sw2", "cov_err", "mean_err", "mode_tv")}
        lo, hi = min(r["nfe_min"] for r in rs), max(r["nfe_max"] for r in rs)
        out.append({"data": data, "method": method, "setting": setting, **avg,
                    "nfe_range": f"{lo}-{hi}", "nfe_lo": lo, "nfe_hi": hi})
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
                pts = sorted((r["nfe"], r[metric], r["nfe"] - r["nfe_lo"], r["nfe_hi"] - r["nfe"])
                             for r in rows if r["method"] == method)
                nfe, err, lo, hi = zip(*pts, strict=True)
                # Adaptive methods: horizontal bars span the per-sample NFE (min-max).
                ax.errorbar(nfe, err, xerr=[lo, hi], marker="o", capsize=2, label=method)
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
    ap.add_argument("--dims", default="2,64",
                    help="comma-separated data dimensions: 2 (ring) and/or any d > 2 (mixture)")
    args = ap.parse_args()
    n = args.n or (2000 if args.quick else 10000)
    dims = [int(v) for v in args.dims.split(",")]
    if any(d < 2 for d in dims):
        ap.error(f"--dims must be integers >= 2, got {args.dims!r}")
    payload = run(args.quick, args.sde, args.seeds, n, dims)
    summary = summarise(payload)
    payload["summary"] = summary
    name = f"nfe_quality_{args.sde}" + ("_quick" if args.quick else "")
    if dims != [2, 64]:
        name += "_d" + "-".join(map(str, dims))
    md = (f"# Quality vs counted NFE, exact GMM scores ({args.sde.upper()}, n={n}, "
          f"seeds={args.seeds})\n\nenv: {payload['env']}\n\n"
          + markdown_table(sorted(summary, key=lambda r: (r["data"], r["method"], r["nfe"])),
                           ["data", "method", "setting", "nfe", "nfe_range", "sw2", "cov_err",
                            "mean_err", "mode_tv"])
          + "\n")
    js, mdp = write(name, payload, md)
    png = js.with_suffix(".png")
    plot(summary, png)
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
