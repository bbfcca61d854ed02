"""Quality vs true NFE with exact scores: the error of each sampler is measured against the
known data distribution, so no learned model blurs the comparison.

    python benchmarks/nfe_quality.py [--quick] [--sde vp|ve] [--seeds 3] [--dims 2,64,256]

Data: an 8-mode ring in 2-D and 4-mode anisotropic mixtures in 64-D / 256-D (closed-form GMM
scores). Error: sliced W2 (256 projections) to exact data draws, relative covariance error,
mean error, the total-variation error of the mode masses (nearest component, same rule for
both sets) and the cross-entropy gap `nll_gap` = (E_samples[-log p_data] - H(p_data)) / d in
nats per dimension (H from 200k exact draws; +: samples too wide, -: too narrow). nll_gap's
sampling noise is ~1/sqrt(2 d n) (Gaussian case), far below sliced W2's, so it resolves
discretisation bias that the other metrics bury in noise; its standard error is reported. The
noise floor (the same metrics between two exact sample sets of equal size) is printed with
every table. Fixed-step samplers run on an NFE grid; the adaptive GGF runs on a
tolerance grid and is reported at its counted mean NFE per sample (min-max in the table).
Writes results/nfe_quality_<sde>[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samplers  # noqa: E402
from benchmarks._report import (  # noqa: E402
    RowProgress,
    environment,
    markdown_table,
    nfe_at,
    setting_label,
    write,
)
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
# "ggf" is the default (Brownian bridge); "ggf_bridge" names it explicitly (older tables use it);
# "ggf_fresh" is the fresh-increment variant that is biased in low dimension (samplers.md §9).
METHODS = {"em": ("em", {}), "ggf": ("ggf", {}), "ggf_bridge": ("ggf", {"brownian": "bridge"}),
           "ggf_fresh": ("ggf", {"brownian": "fresh"}),
           "pc": ("pc", {}), "heun": ("heun", {}), "heun_edm": ("heun", {"grid": "edm"}),
           "dpm_solver": ("dpm_solver", {}), "unipc": ("unipc", {}), "ode": ("ode", {})}
# "<label>+tp": the same sampler started at t* by Gaussian teleportation (samplers.md §4), with
# t* = GaussianTeleport.suggest_t_start(score, data, thresh=TP_THRESH) on exact data draws and
# the Gaussian of the mixture's exact mean and covariance.
for _label in ("em", "heun", "heun_edm", "dpm_solver", "unipc"):
    METHODS[f"{_label}+tp"] = (METHODS[_label][0], {**METHODS[_label][1], "teleport": True})
TP_THRESH = 0.99


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


def configs(method: str, quick: bool, max_nfe: int | None = None) -> list[dict]:
    """Option sets to run for one method: an NFE grid (up to max_nfe), or a tolerance grid for
    adaptive ones."""
    if method == "ode":
        return [{"rtol": tol, "atol": tol} for tol in ODE_TOLS]
    if method == "ggf":
        return [{"abs_tol": 2 / 256, "rel_tol": r} for r in (QUICK_RTOLS if quick else GGF_RTOLS)]
    grid = [n for n in (QUICK_GRID if quick else NFE_GRID) if max_nfe is None or n <= max_nfe]
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


def data_nll(score: GMMScore, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """-log p_data(x) / d per sample, in chunks (the per-component terms are (chunk, K, d))."""
    out = []
    for xb in x.double().split(chunk):
        t0 = torch.zeros(xb.shape[0], dtype=torch.float64)
        out.append(-score.marginal_logp(xb, t0) / score.dim)
    return torch.cat(out)


def errors(x: torch.Tensor, ref: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
           score: GMMScore, entropy: float) -> dict:
    x = x.double()
    nll = data_nll(score, x)
    return {
        "nll_gap": float(nll.mean()) - entropy,
        "nll_gap_se": float(nll.std() / len(nll) ** 0.5),
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


def run(quick: bool, sde_name: str, seeds: int, n: int, dims: list[int],
        methods: list[str], max_nfe: int | None = None) -> dict:
    sde = VPSDE() if sde_name == "vp" else VESDE()
    pc_snr = 0.01 if sde_name == "vp" else 0.16
    rows = []
    data = datasets(dims)
    plan = [(label, opts) for label in methods
            for opts in configs(METHODS[label][0], quick, max_nfe)]
    with RowProgress(len(data) * seeds * len(plan), f"nfe_quality {sde_name} rows") as bar:
        for name, params in data.items():
            score = GMMScore(*params, sde)
            mean, cov = mixture_moments(*params)
            d = score.dim
            big = score.sample_data(200_000, generator=torch.Generator().manual_seed(999))
            entropy = float(data_nll(score, big).mean())
            tp = samplers.GaussianTeleport(mean, cov, sde)
            t_star, _ = tp.suggest_t_start(score, data=big, thresh=TP_THRESH,
                                           generator=torch.Generator().manual_seed(0))
            bar.say(f"{name}: teleport t* = {t_star:.4f} (EV >= {TP_THRESH})")
            for seed in range(seeds):
                g = torch.Generator().manual_seed(1000 + seed)
                ref = score.sample_data(n, generator=g)
                floor = errors(score.sample_data(n, generator=g), ref, mean, cov, score, entropy)
                rows.append({"data": name, "method": "noise floor", "seed": seed, "nfe": 0.0,
                             "nfe_min": 0, "nfe_max": 0, **floor, "time_s": 0.0})
                for label, opts in plan:
                    method, fixed = METHODS[label]
                    if method == "pc":
                        opts = {**opts, "snr": pc_snr}
                    extra = {"teleport": tp, "t_start": t_star} if fixed.get("teleport") else {}
                    t0 = time.perf_counter()
                    res = samplers.sample(score, sde, (n, d), method=method, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(seed),
                                          **{**fixed, **extra}, **opts)
                    rows.append({"data": name, "method": label, "seed": seed, "nfe": res.nfe,
                                 "nfe_min": int(res.nfe_per_sample.min()),
                                 "nfe_max": int(res.nfe_per_sample.max()),
                                 **errors(res.x, ref, mean, cov, score, entropy),
                                 "time_s": time.perf_counter() - t0,
                                 "t_start": extra.get("t_start", float(sde.T)),
                                 "setting": setting_label(opts)})
                    r = rows[-1]
                    bar.row(f"{name:8s} {label:13s} nfe={res.nfe:7.1f} sw2={r['sw2']:.4f} "
                            f"cov_err={r['cov_err']:.4f} mode_tv={r['mode_tv']:.4f} "
                            f"nll_gap={r['nll_gap']:+.4f}")
    return {"sde": sde_name, "n_samples": n, "seeds": seeds, "quick": quick, "dims": dims,
            "methods": methods, "rows": rows, "env": environment()}


def summarise(payload: dict) -> list[dict]:
    """Mean over seeds per (data, method, setting)."""
    groups: dict[tuple, list[dict]] = {}
    for r in payload["rows"]:
        groups.setdefault((r["data"], r["method"], r.get("setting", "")), []).append(r)
    out = []
    for (data, method, setting), rs in groups.items():
        avg = {k: sum(r[k] for r in rs) / len(rs)
               for k in ("nfe", "sw2", "cov_err", "mean_err", "mode_tv", "nll_gap")}
        # Standard error of the seed mean (each seed's own SE, combined).
        avg["nll_gap_se"] = sum(r["nll_gap_se"] ** 2 for r in rs) ** 0.5 / len(rs)
        lo, hi = min(r["nfe_min"] for r in rs), max(r["nfe_max"] for r in rs)
        out.append({"data": data, "method": method, "setting": setting, **avg,
                    "nfe_range": f"{lo}-{hi}", "nfe_lo": lo, "nfe_hi": hi})
    return out


# (candidate, baseline) pairs compared at equal error.
PAIRS = [("ggf", "em"), ("ggf_bridge", "em"), ("ggf_fresh", "em"), ("em+tp", "em"),
         ("heun_edm+tp", "heun_edm"), ("dpm_solver+tp", "dpm_solver"), ("unipc+tp", "unipc")]


def versus(summary: list[dict], pairs: list[tuple[str, str]] = PAIRS) -> list[dict]:
    """Per candidate setting: its |nll_gap| (resolution: 2 SE), the NFE its baseline needs for
    the same error, their ratio, and whether it matches the baseline's best tested setting
    (|gap| within 2 combined SE of the baseline's at its largest NFE)."""
    out = []
    for data in sorted({r["data"] for r in summary}):
        for cand, ref in pairs:
            base = [r for r in summary if r["data"] == data and r["method"] == ref]
            rows = sorted((r for r in summary if r["data"] == data and r["method"] == cand),
                          key=lambda r: r["nfe"])
            if not base or not rows:
                continue
            best = max(base, key=lambda r: r["nfe"])
            for r in rows:
                err = abs(r["nll_gap"])
                n_base = nfe_at(base, max(err, 2 * r["nll_gap_se"]), "nll_gap")
                slack = 2 * math.hypot(r["nll_gap_se"], best["nll_gap_se"])
                out.append({
                    "data": data, "method": cand, "baseline": ref, "setting": r["setting"],
                    "nfe": r["nfe"], "nll_gap": r["nll_gap"], "nll_gap_se": r["nll_gap_se"],
                    "baseline_nfe_same_error": n_base if n_base is not None else float("nan"),
                    "nfe_ratio": n_base / r["nfe"] if n_base is not None else float("nan"),
                    "baseline_best_nfe": best["nfe"], "baseline_best_gap": best["nll_gap"],
                    "matches_baseline_best": err <= abs(best["nll_gap"]) + slack,
                    "ratio_vs_baseline_best": best["nfe"] / r["nfe"]})
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["data"] for r in summary})
    metrics = ("sw2", "cov_err", "nll_gap")
    fig, axes = plt.subplots(len(metrics), len(names), figsize=(6 * len(names), 4 * len(metrics)),
                             squeeze=False)
    for j, data in enumerate(names):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            rows = [r for r in summary if r["data"] == data]
            for method in sorted({r["method"] for r in rows} - {"noise floor"}):
                pts = sorted((r["nfe"], abs(r[metric]), r["nfe"] - r["nfe_lo"],
                              r["nfe_hi"] - r["nfe"]) for r in rows if r["method"] == method)
                nfe, err, lo, hi = zip(*pts, strict=True)
                # Adaptive methods: horizontal bars span the per-sample NFE (min-max).
                ax.errorbar(nfe, err, xerr=[lo, hi], marker="o", capsize=2, label=method)
            fl = [r for r in rows if r["method"] == "noise floor"][0]
            # |nll_gap| is compared with 0, so its floor is its resolution (2 SE).
            floor = 2 * fl["nll_gap_se"] if metric == "nll_gap" else fl[metric]
            ax.axhline(floor, color="k", ls="--", lw=1, label="noise floor")
            metric = "|nll_gap| (nats/dim)" if metric == "nll_gap" else metric
            ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=metric,
                   title=f"{data}: {metric} vs NFE")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict, name: str) -> None:
    """Summarise raw rows, compare at equal error, write results/<name>.{json,md,png}."""
    summary = summarise(payload)
    payload["summary"] = summary
    payload["versus"] = table = versus(summary)
    payload.pop("adaptive_vs_em", None)  # superseded by "versus"
    t_star = {r["data"]: r["t_start"] for r in payload["rows"]
              if "t_start" in r and "+tp" in r["method"]}
    md = (f"# Quality vs counted NFE, exact GMM scores ({payload['sde'].upper()}, "
          f"n={payload['n_samples']}, seeds={payload['seeds']})\n\nenv: {payload['env']}\n\n"
          + (f"Teleport start t* per data set (EV >= {TP_THRESH}): "
             + ", ".join(f"{k} {v:.4f}" for k, v in sorted(t_star.items())) + "\n\n"
             if t_star else "")
          + markdown_table(sorted(summary, key=lambda r: (r["data"], r["method"], r["nfe"])),
                           ["data", "method", "setting", "nfe", "nfe_range", "sw2", "cov_err",
                            "mean_err", "mode_tv", "nll_gap", "nll_gap_se"])
          + "\n")
    if table:
        md += ("\n## At equal error: candidate vs baseline\n\n"
               "Error = |nll_gap| (resolution 2 SE). `baseline_nfe_same_error`: the NFE the "
               "baseline needs for the same error, log-log interpolated on its grid (nan: no "
               "tested baseline setting gets there). `nfe_ratio` = that / the candidate's mean "
               "NFE; read it where the candidate's error is well above its resolution (near the "
               "noise, which setting gets there first is chance). `matches_baseline_best`: |gap| "
               "within 2 combined SE of the baseline's at its largest tested NFE; "
               "`ratio_vs_baseline_best` = that NFE / the candidate's.\n\n"
               + markdown_table(table, ["data", "method", "baseline", "setting", "nfe",
                                        "nll_gap", "nll_gap_se", "baseline_nfe_same_error",
                                        "nfe_ratio", "baseline_best_nfe", "baseline_best_gap",
                                        "matches_baseline_best", "ratio_vs_baseline_best"])
               + "\n")
    js, mdp = write(name, payload, md)
    png = js.with_suffix(".png")
    plot(summary, png)
    print(f"wrote {js}, {mdp}, {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small NFE grid and n (CI-sized)")
    ap.add_argument("--sde", default="vp", choices=["vp", "ve"])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--n", type=int, default=None, help="samples per run")
    ap.add_argument("--dims", default="2,64",
                    help="comma-separated data dimensions: 2 (ring) and/or any d > 2 (mixture)")
    ap.add_argument("--methods", default=",".join(m for m in METHODS if m != "ggf_bridge"),
                    help=f"comma-separated subset of {', '.join(METHODS)}")
    ap.add_argument("--name", default=None, help="output name (default from --sde/--dims)")
    ap.add_argument("--max-nfe", type=int, default=None,
                    help="cap the fixed-step NFE grid (adaptive methods unaffected)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="re-write the tables and plot of a saved results JSON; runs nothing")
    args = ap.parse_args()
    if args.render:
        path = Path(args.render)
        report(json.loads(path.read_text()), args.name or path.stem)
        return
    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(METHODS)):
        ap.error(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    n = args.n or (2000 if args.quick else 10000)
    dims = [int(v) for v in args.dims.split(",")]
    if any(d < 2 for d in dims):
        ap.error(f"--dims must be integers >= 2, got {args.dims!r}")
    payload = run(args.quick, args.sde, args.seeds, n, dims, methods, args.max_nfe)
    name = args.name or f"nfe_quality_{args.sde}" + ("_quick" if args.quick else "")
    if args.name is None and dims != [2, 64]:
        name += "_d" + "-".join(map(str, dims))
    report(payload, name)


if __name__ == "__main__":
    main()
