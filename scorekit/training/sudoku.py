"""Training and evaluation of a Sudoku solver by Dirichlet diffusion (`experiment=sudoku`).

`SudokuTrainer` reuses `Trainer`'s loop, EMA, learning-rate schedule and atomic, resumable
safetensors checkpoints; it draws its batches differently (random symmetries of the training
grids, a random set of given cells per board) and evaluates by solving held-out puzzles: the
givens are held one-hot throughout sampling, and a board counts as solved when every row, column
and box is valid and the givens are kept.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import samplers
from scorekit import io
from scorekit.data import Dataset
from scorekit.data.sudoku import (
    augment,
    from_onehot,
    is_latin,
    make_puzzles,
    pick_fill,
    solves,
    to_onehot,
)
from scorekit.nets import make_model
from scorekit.objectives import make_objective
from scorekit.processes import make_sde
from scorekit.training.config import ConfigError, split_named
from scorekit.training.trainer import Trainer


class SudokuTrainer(Trainer, data="sudoku"):
    """`SudokuTrainer(cfg, run_dir).run()`: fit, solve held-out puzzles, write metrics/plot."""

    def __init__(self, cfg: DictConfig | dict, run_dir: str | Path | None = None,
                 save_config: bool = True, data: Dataset | None = None):
        cfg = self._init_run(cfg, run_dir, writes=save_config)
        with self._undo_on_error():
            self._build(cfg, data, save_config)

    def _build(self, cfg: DictConfig, data: Dataset | None, save_config: bool) -> None:
        name, _ = split_named(cfg.data)
        if name != "sudoku":
            raise ConfigError(f"SudokuTrainer needs data=sudoku, got {name!r}")
        self.data = data if data is not None else self._make_data(cfg)
        self.train_grids = self.data.train
        name, params = split_named(cfg.sde)
        self.sde = make_sde(name, **params)
        if hasattr(self.sde, "to"):
            self.sde.to(self.device)   # the series lookup tables
        if not getattr(self.sde, "on_simplex", False) or self.sde.K != 9:
            raise ConfigError(f"sde must be a 9-category simplex process (sde=jacobi), got "
                              f"{self.sde!r}")
        name, params = split_named(cfg.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = make_model(name, self.data.dim, self.sde, **params)
        self.model.to(self.device, self.dtype)
        name, params = split_named(cfg.objective)
        self.objective = make_objective(name, self.sde, **params)
        self.closed_form = False
        self._init_training(save_config)

    # --- training --------------------------------------------------------------------------
    def draw_batch(self, n: int) -> dict[str, torch.Tensor]:
        """Augmented training grids (n, 9, 9) and a uniform number of givens in
        [min_known, max_known] per board, as the mask `known` (n, 81)."""
        gen = self.data_gen
        idx = torch.randint(self.train_grids.shape[0], (n,), generator=gen)
        grids = augment(self.train_grids[idx], gen)
        params = self.data.params
        n_known = torch.randint(params.get("min_known", 0), params.get("max_known", 64) + 1,
                                (n, 1), generator=gen)
        rank = torch.argsort(torch.argsort(torch.rand(n, 81, generator=gen), 1), 1)
        return {"grids": grids, "known": rank < n_known}

    def chunk_loss(self, chunk: dict[str, torch.Tensor], generator: torch.Generator
                   ) -> torch.Tensor:
        """DirichletDSM of a chunk of boards with their givens held fixed."""
        x0 = to_onehot(chunk["grids"], self.dtype).to(self.device)
        return self.objective(self.train_model, x0, known=chunk["known"].to(self.device),
                              generator=generator)

    # --- solving ---------------------------------------------------------------------------
    @torch.no_grad()
    def solve(self, puzzles: torch.Tensor, sampler: DictConfig | dict | None = None,
              use_ema: bool = True, seed: int = 1, batch: int = 256, candidates: int = 1
              ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Fill puzzles (B, 9, 9) (0 = blank) by sampling with the givens held fixed;
        returns the grids (B, 9, 9) and {nfe, wall_time, candidates, candidate_solved}.

        `candidates` = k > 1 draws k independent fills per puzzle and keeps the one violating
        the fewest of the 27 units (a valid grid when any candidate is one; the check needs
        no solution). `nfe` is then per puzzle, k times the sampler's; `candidate_solved` is
        the fraction of single fills that solve their puzzle (the k = 1 rate, from k B draws).
        """
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
        section = OmegaConf.create(sampler if sampler is not None else self.cfg.sampler)
        method, options = split_named(section, key="method")
        model = self.ema if use_ema else self.model
        model.eval()
        preds, nfe, wall, done = [], 0.0, 0.0, 0
        for part in puzzles.repeat_interleave(candidates, 0).split(batch):
            seeds = torch.arange(done, done + part.shape[0]) + seed  # per candidate
            done += part.shape[0]
            known = (part > 0).reshape(part.shape[0], 81).to(self.device)
            x_known = to_onehot(part.clamp_min(1), self.dtype).to(self.device)
            res = samplers.sample(partial(model, known=known), self.sde, (part.shape[0], 81, 9),
                                  method=method, seeds=seeds, device=self.device,
                                  dtype=self.dtype, known=known, x_known=x_known, **options)
            preds.append(from_onehot(res.x).cpu())
            nfe, wall = res.nfe, wall + res.info["wall_time"]
        best, solved = pick_fill(torch.cat(preds).view(len(puzzles), candidates, 9, 9), puzzles)
        return best, {"nfe": nfe * candidates, "wall_time": wall, "candidates": candidates,
                      "candidate_solved": float(solved.double().mean())}

    def check_sampler(self) -> None:
        """Dry-run the sampler section on one held-out puzzle before training."""
        try:
            self.solve(self.puzzles(40, n=1))
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"sampler section {OmegaConf.to_container(self.cfg.sampler)} "
                              f"fails before training: {err}") from None
        self._sampler_checked = True

    def puzzles(self, n_clues: int, n: int | None = None, seed: int = 0) -> torch.Tensor:
        """Held-out puzzles with `n_clues` givens made from the test grids: (n, 9, 9)."""
        grids = self.data.test[:n] if n is not None else self.data.test
        return make_puzzles(grids, n_clues, seed=seed + n_clues,
                            unique=self.data.params.get("unique", True))

    def score_solutions(self, pred: torch.Tensor, puzzles: torch.Tensor) -> dict[str, float]:
        """Solved fraction (all 27 units + givens), the rows-and-columns-only fraction that a
        checker ignoring boxes would report, and accuracy on blanks against the generating grid
        (a lower bound when a puzzle has several solutions)."""
        blank = puzzles == 0
        truth = self.data.test[:len(puzzles)]
        kept = ((pred == puzzles) | ~(puzzles > 0)).flatten(1).all(1)
        return {"solved_fraction": float(solves(pred, puzzles).double().mean()),
                "rows_cols_only_fraction": float((is_latin(pred) & kept).double().mean()),
                "blank_cell_accuracy": float((pred == truth)[blank].double().mean()),
                "n_puzzles": len(puzzles)}

    def evaluate(self, sampler: DictConfig | dict | None = None, out_dir: Path | None = None
                 ) -> dict[str, Any]:
        """Solve held-out puzzles for each `data.eval_clues`; write metrics.json, samples.png."""
        e = self.cfg.eval
        out_dir = Path(out_dir) if out_dir is not None else self.run_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        per_clue, examples = {}, None
        nfe = wall = 0.0
        for n_clues in self.data.params.get("eval_clues", [30, 35, 40]):
            puz = self.puzzles(int(n_clues), e.n_samples, seed=e.seed)
            pred, info = self.solve(puz, sampler, use_ema=e.use_ema, seed=e.seed)
            per_clue[int(n_clues)] = self.score_solutions(pred, puz)
            nfe, wall = info["nfe"], wall + info["wall_time"]
            if examples is None:
                examples = (puz[:4], pred[:4])
        fractions = [m["solved_fraction"] for m in per_clue.values()]
        metrics = {
            "solved_fraction": sum(fractions) / len(fractions),
            "per_clues": per_clue,
            "nfe": nfe,
            "sampler": OmegaConf.to_container(OmegaConf.create(sampler or self.cfg.sampler)),
            "ema": e.use_ema,
            "sample_time_s": wall,
            "train_time_s": self.train_time,
            "train_steps": self.step,
            "final_loss": self.loss_history[-1] if self.loss_history else None,
        }
        io.write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        if e.plot:
            from scorekit.evaluation.plotting import sudoku_plot

            sudoku_plot(per_clue, examples, out_dir / "samples.png",
                        loss_history=self.loss_history or None,
                        log_every=self.cfg.trainer.log_every)
        return metrics
