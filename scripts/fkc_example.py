"""Feynman–Kac correctors on trained models: the product of two 2-D models and a tempered one.

Trains (or reuses, if `<out_dir>/<name>` holds a run with the same settings; other settings
are refused) two small MLP score models on
different 2-D mixtures, then samples with `samplers.fkc_sample`:
  product: p1 * p2 (normalised), and the naive sum-of-scores sampler without weights;
  anneal:  p1^beta, and the naive beta-scaled score without weights.
Writes fkc_product.png and fkc_anneal.png (weighted particles resampled to equal weights).

    python scripts/fkc_example.py out_dir=outputs/fkc train_steps=600 n=4000 steps=300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

import samplers
from scorekit.config import compose
from scorekit.evaluation.tempered import tempered_draws
from scorekit.train import Trainer
from scorekit.training.resume import leaves

MODELS = {  # two overlapping layouts: their product keeps only the shared regions
    "ring4": ["data.layout=ring", "data.n_modes=4", "data.std=0.3"],
    "three": ["data=gmm3"],
}


def _args(argv: list[str]) -> dict[str, str]:
    opts = {"out_dir": "outputs/fkc", "train_steps": "600", "n": "4000", "steps": "300",
            "beta": "2.0", "seed": "0"}
    for a in argv:
        key, _, val = a.partition("=")
        if key not in opts:
            raise SystemExit(f"unknown argument {key!r}; valid: {sorted(opts)}")
        opts[key] = val
    return opts


def overrides(name: str, train_steps: int) -> list[str]:
    """The training config of model `name` (a key of MODELS)."""
    return MODELS[name] + [f"trainer.steps={train_steps}", "trainer.progress=false",
                           "trainer.ckpt_every=100000", "model.hidden=64", "eval.plot=false",
                           "data.n_train=5000", "data.n_test=500"]


def _trainer(name: str, out_dir: Path, train_steps: int) -> Trainer:
    """Train MODELS[name] in `<out_dir>/<name>`, or reuse (resume) the run there if it was
    trained with exactly these settings; a run with others is refused, naming them."""
    run_dir = out_dir / name
    cfg = compose(overrides(name, train_steps))
    stored = run_dir / "config.yaml"
    if stored.is_file():
        old = leaves(OmegaConf.to_container(OmegaConf.load(stored)))
        new = leaves(OmegaConf.to_container(cfg))
        diffs = [f"{k}: {old.get(k, '<absent>')!r} there, {new.get(k, '<absent>')!r} now"
                 for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k) and k not in ("trainer.resume", "trainer.progress")]
        if diffs:
            raise SystemExit(f"error: {run_dir} holds a model trained with other settings ("
                             + "; ".join(diffs[:4]) + "); pass another out_dir or remove it")
        cfg.trainer.resume = True  # the same run: finish it if it was interrupted
    tr = Trainer(cfg, run_dir=run_dir)
    tr.fit()
    return tr


def _panel(fig: Figure, pos: int, x: torch.Tensor, title: str) -> None:
    ax = fig.add_subplot(1, 3, pos)
    x = x.detach().cpu()
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
    ax.set(title=title, xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal")


def main(argv: list[str]) -> None:
    o = _args(argv)
    out_dir = Path(o["out_dir"])
    n, steps, beta = int(o["n"]), int(o["steps"]), float(o["beta"])
    t1, t2 = (_trainer(name, out_dir, int(o["train_steps"])) for name in MODELS)
    s1, s2 = t1.ema.eval(), t2.ema.eval()
    sde = t1.sde
    gen = torch.Generator().manual_seed(int(o["seed"]))

    prod = samplers.fkc_sample([s1, s2], sde, (n, 2), mode="product", steps=steps,
                               final_resample=True, generator=gen)
    naive = samplers.sample(lambda x, t: s1(x, t) + s2(x, t), sde, (n, 2), method="em",
                            steps=steps, denoise="none", generator=gen)
    fig = Figure(figsize=(12, 4))
    _panel(fig, 1, t1.data.test, "model 1 data (ring4)")
    _panel(fig, 2, naive.x, "product: naive sum of scores")
    _panel(fig, 3, prod.x, f"product: FKC ({prod.info['n_resample']} resamples)")
    fig.savefig(out_dir / "fkc_product.png", dpi=110, bbox_inches="tight")

    ann = samplers.fkc_sample(s2, sde, (n, 2), mode="anneal", beta=beta, steps=steps,
                              final_resample=True, generator=gen)
    naive = samplers.sample(lambda x, t: beta * s2(x, t), sde, (n, 2), method="em",
                            steps=steps, denoise="none", generator=gen)
    fig = Figure(figsize=(12, 4))
    # The target is p^beta, not p: exact draws of it from the data's closed-form density.
    target = tempered_draws(t2.data.exact_score(sde), beta, n, gen)
    _panel(fig, 1, target, f"target p^{beta:g} of model 2's data (exact draws)")
    _panel(fig, 2, naive.x, f"p^{beta:g}: naive scaled score")
    _panel(fig, 3, ann.x, f"p^{beta:g}: FKC")
    fig.savefig(out_dir / "fkc_anneal.png", dpi=110, bbox_inches="tight")
    print(f"NFE per sample: product {prod.nfe:.0f}, anneal {ann.nfe:.0f}; final ESS before "
          f"resampling: product {prod.info['ess'][-1]:.0f}, anneal {ann.info['ess'][-1]:.0f}")
    print(f"wrote {out_dir}/fkc_product.png and {out_dir}/fkc_anneal.png")


if __name__ == "__main__":
    main(sys.argv[1:])
