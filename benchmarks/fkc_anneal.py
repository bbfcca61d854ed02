"""Feynman–Kac annealing (p^beta) of 1-D two-mode mixtures: mode-mass error per population.

    python benchmarks/fkc_anneal.py [--populations 32] [--particles 4096] [--steps 500] [--quick]

Targets: p = 0.3 N(-2, v1) + 0.7 N(2, v2) under the VP process with its exact score, beta = 2.
The truth is the mass of x < 0 under p_eps^2 by quadrature on a 20k-point grid. Each method runs
`--populations` independent populations of `--particles` (one batched call, `groups=`), so the
table gives the error of one population's estimate: its mean over populations (bias, with SE),
spread (SD), worst case and the share of populations off by more than 3 percentage points.
Methods: plain EM with the scaled score beta * s and no weights ("naive"), FKC without moves
(`n_corrector=0`, the weighted SDE alone), and FKC with one MALA move per step (the default).
Writes results/fkc_anneal[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import samplers  # noqa: E402
from benchmarks import _report  # noqa: E402
from scorekit.scores import GMMScore  # noqa: E402
from scorekit.sde import VPSDE  # noqa: E402

TARGETS = {"equal variances 0.16 / 0.16": (0.16, 0.16),
           "unequal variances 0.09 / 0.36": (0.09, 0.36)}
BETA = 2.0


def reference_mass(p: GMMScore, sde: VPSDE) -> float:
    """Mass of x < 0 under p_eps^beta, normalised, by quadrature."""
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)[:, None]
    logp = BETA * p.marginal_logp(grid, torch.full((20001,), sde.eps, dtype=torch.float64))
    return (torch.softmax(logp, 0) * (grid[:, 0] < 0)).sum().item()


def run_method(method: str, p: GMMScore, sde: VPSDE, groups: int, n: int, steps: int,
               seed: int) -> tuple[torch.Tensor, float, float]:
    """Per-population mass of x < 0 (groups,), NFE per particle, wall seconds."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    if method == "naive":
        res = samplers.sample(lambda x, t: BETA * p(x, t), sde, (groups * n, 1), method="em",
                              steps=steps, denoise="none", dtype=torch.float64, generator=gen)
        mass = (res.x.view(groups, n) < 0).double().mean(1)
    else:
        n_corr = {"fkc (no moves)": 0, "fkc + MALA": 1}[method]
        res = samplers.fkc_sample(p, sde, (groups * n, 1), mode="anneal", beta=BETA,
                                  steps=steps, groups=groups, n_corrector=n_corr,
                                  dtype=torch.float64, generator=gen)
        w = res.log_weights.exp().view(groups, n)
        mass = (w * (res.x.view(groups, n) < 0)).sum(1)
    return mass, float(res.nfe), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", type=int, default=32)
    ap.add_argument("--particles", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="8 populations, 200 steps")
    args = ap.parse_args()
    if args.quick:
        args.populations, args.steps = 8, 200
    sde = VPSDE()
    rows, per_pop = [], {}
    methods = ("naive", "fkc (no moves)", "fkc + MALA")
    with _report.RowProgress(len(TARGETS) * len(methods), "fkc_anneal rows") as bar:
        for label, var in TARGETS.items():
            p = GMMScore(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [2.0]]),
                         torch.tensor(var)[:, None, None], sde)
            ref = reference_mass(p, sde)
            for method in methods:
                mass, nfe, wall = run_method(method, p, sde, args.populations, args.particles,
                                             args.steps, args.seed)
                err = 100 * (mass - ref)
                per_pop[f"{label} | {method}"] = err.tolist()
                rows.append({"target": label, "method": method, "true mass x<0": ref,
                             "NFE": nfe, "mean error (pp)": err.mean().item(),
                             "SE of mean (pp)": err.std().item() / math.sqrt(args.populations),
                             "SD per population (pp)": err.std().item(),
                             "max abs error (pp)": err.abs().max().item(),
                             "share > 3 pp": (err.abs() > 3).double().mean().item(),
                             "wall (s)": wall})
                bar.row(f"{label:32s} {method:16s} err {err.mean():+6.2f} pp  SD {err.std():5.2f}  "
                        f"max {err.abs().max():5.2f}  NFE {nfe:.0f}  {wall:.0f}s")
    cols = ["target", "method", "true mass x<0", "NFE", "mean error (pp)", "SE of mean (pp)",
            "SD per population (pp)", "max abs error (pp)", "share > 3 pp"]
    name = "fkc_anneal_quick" if args.quick else "fkc_anneal"
    md = (f"# FKC annealing, p^{BETA:g} of 0.3 N(-2, v1) + 0.7 N(2, v2) (VP, exact score)\n\n"
          f"{args.populations} populations of {args.particles} particles, {args.steps} steps; "
          "error = one population's estimate of the mass of x < 0 minus the quadrature truth, "
          "in percentage points.\n\n" + _report.markdown_table(rows, cols) + "\n")
    _report.write(name, {"args": vars(args), "env": _report.environment(), "rows": rows,
                         "errors_pp": per_pop}, md)
    fig = Figure(figsize=(11, 4))
    for k, label in enumerate(TARGETS):
        ax = fig.add_subplot(1, len(TARGETS), k + 1)
        for method in ("naive", "fkc (no moves)", "fkc + MALA"):
            ax.hist(per_pop[f"{label} | {method}"], bins=20, alpha=0.5, label=method)
        ax.axvspan(-3, 3, color="0.9", zorder=0)
        ax.set_title(label)
        ax.set_xlabel("mode-mass error per population (pp)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(_report.RESULTS / f"{name}.png", dpi=110)
    print(md)


if __name__ == "__main__":
    main()
