"""Tables and plot of `benchmarks/sampler_frontier.py`: per-setting means and standard errors
over seeds, the frontier (best of ours vs best peer per NFE budget), tuned grids against fixed
ones, adaptive solvers against EM at equal error, the Markdown report and the Pareto plot."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks._report import markdown_table, nfe_at


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard error over seeds per (target, sde, method, setting)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" in r:
            groups.setdefault((r["target"], r["sde"], r["method"], r.get("setting", ""),
                               r["family"]), []).append(r)
    out = []
    for (target, sde, method, setting, family), rs in groups.items():
        errs = [r["error"] for r in rs]
        mean = sum(errs) / len(errs)
        se = (sum((e - mean) ** 2 for e in errs) / max(len(errs) - 1, 1) / len(errs)) ** 0.5
        out.append({"target": target, "sde": sde, "method": method, "setting": setting,
                    "family": family, "nfe": sum(r["nfe"] for r in rs) / len(rs),
                    "error": mean, "se": se})
    return out


def frontier(summary: list[dict], nfe_grid: list[int]) -> list[dict]:
    """Per (target, sde, NFE budget): the best of ours and the best peer among settings that
    spend at most that NFE (adaptive ones at their counted mean), and their ratio; the same
    for our best without teleportation ("+tp", which is exact on the Gaussian targets)."""
    out = []
    for target, sde in sorted({(r["target"], r["sde"]) for r in summary}):
        rs = [r for r in summary if (r["target"], r["sde"]) == (target, sde)]
        floor = next((r for r in rs if r["family"] == "floor"), None)
        for nfe in nfe_grid:
            def best(keep, rs=rs, nfe=nfe):
                cands = [r for r in rs if keep(r) and r["nfe"] <= nfe * 1.05]
                return min(cands, key=lambda r: r["error"]) if cands else None

            o = best(lambda r: r["family"] == "ours")
            p = best(lambda r: r["family"] == "peer")
            n = best(lambda r: r["family"] == "ours" and not r["method"].endswith("+tp"))
            if o is None or p is None or n is None:
                continue
            row = {"target": target, "sde": sde, "nfe": nfe}
            for key, r in (("ours", o), ("no_tp", n), ("peer", p)):
                row.update({key: r["method"], f"{key}_error": r["error"], f"{key}_se": r["se"]})
            for key, r in (("", o), ("_no_tp", n)):
                slack = 2 * math.hypot(r["se"], p["se"])
                row[f"ratio{key}"] = r["error"] / max(p["error"], 1e-300)
                # 1e-6: the same solver in another library, equal to rounding
                row[f"at_or_below{key}"] = r["error"] <= p["error"] * (1 + 1e-6) + slack
            row["floor"] = floor["error"] if floor else None
            out.append(row)
    return out


def grid_gain(summary: list[dict], fixed_grids: dict[str, tuple[str, ...]]) -> list[dict]:
    """Per (target, sde, method, NFE) with a tuned grid: its error against the best fixed grid
    of the same method at the same NFE (`fixed_grids`: method -> labels), and their ratio."""
    out = []
    for r in (r for r in summary if r["method"].endswith("+opt")):
        base = r["method"][:-len("+opt")]
        fixed = [f for f in summary if f["method"] in fixed_grids[base]
                 and (f["target"], f["sde"]) == (r["target"], r["sde"])
                 and abs(f["nfe"] - r["nfe"]) < 0.5]
        if fixed:
            best = min(fixed, key=lambda f: f["error"])
            out.append({"target": r["target"], "sde": r["sde"], "method": base,
                        "nfe": r["nfe"], "tuned_error": r["error"], "tuned_se": r["se"],
                        "best_fixed": best["method"], "fixed_error": best["error"],
                        "gain": best["error"] / max(r["error"], 1e-300)})
    return sorted(out, key=lambda g: (g["target"], g["sde"], g["method"], g["nfe"]))


def adaptive_vs_em(summary: list[dict]) -> list[dict]:
    """Per (target, sde) and adaptive setting (ggf, ode, kd_dpm_adaptive): the NFE EM needs for
    the same error, log-log interpolated along its NFE grid (None: no tested EM setting gets
    there), and the ratio of that to the setting's counted mean NFE."""
    out = []
    for target, sde in sorted({(r["target"], r["sde"]) for r in summary}):
        rs = [r for r in summary if (r["target"], r["sde"]) == (target, sde)]
        em = [r for r in rs if r["method"] == "em"]
        for r in (r for r in rs if r["method"] in ("ggf", "ode", "kd_dpm_adaptive")):
            em_nfe = nfe_at(em, r["error"], "error") if em else None
            out.append({"target": target, "sde": sde, "method": r["method"],
                        "setting": r["setting"], "nfe": r["nfe"], "error": r["error"],
                        "em_nfe_same_error": em_nfe,
                        "nfe_ratio": em_nfe / r["nfe"] if em_nfe else None})
    return out


def report(payload: dict, max_seeds: dict[str, int]) -> str:
    env = payload["env"]
    md = [f"# Sampler frontier{' (quick)' if payload['quick'] else ''}", "",
          f"commit {env['commit']}{' (dirty)' if env.get('dirty') else ''}"
          + (f" (blocks measured at {', '.join(payload['block_commits'])}; same code, "
             f"fingerprint {payload['code_fingerprint']})"
             if payload.get("block_commits", [env["commit"]]) != [env["commit"]] else "")
          + "; command "
          f"`{env.get('command', '')}`; torch {env['torch']}; k-diffusion "
          f"{payload['k_diffusion']}; {payload['seeds']} seed(s)"
          + "".join(f", {t}: {k}" for t, k in max_seeds.items() if k < payload["seeds"])
          + "; float64, exact scores.", "",
          "Error: Gaussians, mean |var/lam - 1| over eigendirections + the mean's error; "
          "mixtures, |cross-entropy - entropy| per dimension. `at_or_below`: ours <= peer + 2 "
          "combined standard errors. Budgets: the best setting spending at most that NFE. "
          "`no_tp`: our best without Gaussian teleportation (exact on the Gaussian targets, "
          "so there `ours` is at the noise floor from 5 NFE).", "",
          "## Frontier: best of ours vs best peer", "",
          markdown_table(payload["frontier"], ["target", "sde", "nfe", "ours", "ours_error",
                                               "no_tp", "no_tp_error", "peer", "peer_error",
                                               "ratio", "at_or_below", "ratio_no_tp",
                                               "at_or_below_no_tp", "floor"]),
          "", "## Tuned grids (samplers.optimize_grid) vs the best fixed grid", "",
          markdown_table(payload["grid_gain"], ["target", "sde", "method", "nfe", "tuned_error",
                                                "best_fixed", "fixed_error", "gain"]),
          "", "## Adaptive solvers against EM at equal error", "",
          "`em_nfe_same_error`: the NFE EM (its default grid) needs for the setting's error, "
          "log-log interpolated (EM runs to 800 NFE on the Gaussians); `nfe_ratio` = that / "
          "the setting's counted mean NFE. GGF's default is rel_tol 0.1.", "",
          markdown_table(payload.get("adaptive_vs_em", []),
                         ["target", "sde", "method", "setting", "nfe", "error",
                          "em_nfe_same_error", "nfe_ratio"])]
    for target, sde in sorted({(r["target"], r["sde"]) for r in payload["summary"]}):
        rs = [r for r in payload["summary"] if (r["target"], r["sde"]) == (target, sde)]
        md += ["", f"## {target}, {sde}", "",
               markdown_table(sorted(rs, key=lambda r: (r["family"], r["method"], r["nfe"])),
                              ["family", "method", "setting", "nfe", "error", "se"])]
    return "\n".join(md) + "\n"


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["target"], r["sde"]) for r in payload["summary"]})
    cols = min(3, len(keys))
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4 * rows_n), squeeze=False)
    for ax, (target, sde) in zip(axes.flat, keys, strict=False):
        fr = [r for r in payload["frontier"] if (r["target"], r["sde"]) == (target, sde)]
        rs = [r for r in payload["summary"] if (r["target"], r["sde"]) == (target, sde)]
        for fam, color in (("ours", "tab:blue"), ("peer", "tab:red")):
            pts = [(r["nfe"], r["error"]) for r in rs if r["family"] == fam and r["nfe"] > 0]
            if pts:
                ax.scatter(*zip(*pts, strict=True), s=6, alpha=0.25, color=color)
        for key, style, color, label in (
                ("ours_error", "o-", "tab:blue", "scorekit (best)"),
                ("no_tp_error", "s--", "tab:cyan", "scorekit, no teleport"),
                ("peer_error", "o-", "tab:red", "peers (best)")):
            if fr:
                ax.plot([r["nfe"] for r in fr], [r[key] for r in fr], style, color=color,
                        label=label)
        floor = next((r["error"] for r in rs if r["family"] == "floor"), None)
        if floor:
            ax.axhline(floor, color="gray", ls=":", label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE per sample", ylabel="error",
               title=f"{target}, {sde}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
