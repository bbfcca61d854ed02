"""Sampling and evaluation of a trained run: the sampler section (with teleportation), samples
in memory or streamed to disk, and `metrics.json` / `samples.png` against held-out data.

`SamplingMixin` is part of `scorekit.training.Trainer`; it reads the trainer's `cfg`, `data`,
`sde`, `model`, `ema`, `run_dir`, `device`, `dtype`, training counters and its per-rank cache
of fitted teleports (`_teleports`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import samplers
from scorekit import io
from scorekit._validate import ConfigError, split_named
from scorekit.evaluation.metrics import frechet_distance, mmd, mode_metrics, sliced_wasserstein
from scorekit.evaluation.tempered import tempered_beta, tempered_draws, tempered_mixture


class SamplingMixin:
    """`sample`, `sample_to_disk`, `optimize_grid`, `teleport_options` and `evaluate` of a
    Trainer."""

    def sample(self, n: int, sampler: DictConfig | dict | None = None, use_ema: bool = True,
               seed: int = 1, progress: bool | None = None) -> samplers.SampleResult:
        """Draw n samples with the configured (or given) sampler section; sample i from the
        per-sample stream of seed + i (`samplers.sample(seed=...)`). `progress`: a per-step bar
        (default: `trainer.progress` on a terminal or notebook), for methods that report steps."""
        model, method, options = self._sampler_setup(sampler, use_ema)
        progress = self._shows_progress() if progress is None else bool(progress)
        progress = progress and "callback" not in options and \
            samplers.api.reports_steps(method, self.sde, options.get("capture"))
        if progress:
            options = {**options, "progress": True}
        return samplers.sample(model, self.sde, (n, *self.data.sample_shape), method=method,
                               seed=seed, device=self.device, dtype=self.dtype, **options)

    def sample_to_disk(self, out_dir: str | Path, n: int, batch_size: int = 10_000,
                       sampler: DictConfig | dict | None = None, use_ema: bool = True,
                       seed: int = 1, progress: bool = False) -> samplers.stream.StreamResult:
        """`samplers.sample_to_disk` with this run's model and sampler section: n samples in
        shards of batch_size under out_dir, resuming an interrupted call (split over the
        ranks under torchrun). The manifest records the checkpoint's checksum, step and
        `use_ema`: a rerun with another model or weights is refused."""
        model, method, options = self._sampler_setup(sampler, use_ema)
        source = {"checkpoint_sha256": self.checkpoint_digest, "step": self.step,
                  "use_ema": use_ema}
        return samplers.sample_to_disk(model, self.sde, out_dir, n, self.data.sample_shape,
                                       batch_size=batch_size, seed=seed, method=method,
                                       device=self.device, dtype=self.dtype, progress=progress,
                                       source=source, **options)

    def check_sampler(self) -> None:
        """Dry-run the sampler section on 2 samples (teleport off: its fit needs a trained
        model) with the untrained EMA model, so an unknown method, option, grid or value fails
        before training, as a ConfigError naming the section."""
        section = OmegaConf.to_container(self.cfg.sampler)
        for key in ("teleport", "teleport_rank", "teleport_thresh"):
            section.pop(key, None)
        if section.get("t_start") in ("auto", None):
            section.pop("t_start", None)
        try:
            self.sample(2, section, use_ema=True, seed=0, progress=False)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"sampler section {section} fails before training: {err}") from None
        self._sampler_checked = True

    def optimize_grid(self, nfe: int, sampler: DictConfig | dict | None = None,
                      use_ema: bool = True, n: int = 512, max_evals: int = 400,
                      path: str | Path | None = None, progress: bool = True) -> dict:
        """`samplers.optimize_grid` for this run's model: the grid of the sampler section's
        method (a deterministic one: dpm_solver, unipc, heun, closed_form; its options and
        teleport settings are kept, its steps and grid replaced) at `nfe` evaluations, tuned
        on n prior draws; the training data set the error's scale. Written to `path` (default
        `<run_dir>/grids/<method>_nfe<nfe>[_teleport].json`) for `sampler.grid=<file>`."""
        model, method, options = self._sampler_setup(sampler, use_ema)
        if method not in samplers.grid_opt.DETERMINISTIC:
            raise ConfigError(f"sampler.method={method!r}: optimize_grid tunes "
                              f"{sorted(samplers.grid_opt.DETERMINISTIC)}")
        for key in ("steps", "grid"):
            options.pop(key, None)
        tag = "_teleport" if options.get("teleport") is not None else ""
        path = Path(path) if path is not None else (
            self.run_dir / "grids" / f"{method}_nfe{nfe}{tag}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        res = samplers.optimize_grid(model, self.sde, nfe, method, x_data=self.data.train,
                                     n=n, max_evals=max_evals, path=path, device=self.device,
                                     dtype=self.dtype, progress=progress, **options)
        return {**res, "path": str(path)}

    def _sampler_setup(self, sampler: DictConfig | dict | None, use_ema: bool
                       ) -> tuple[torch.nn.Module, str, dict[str, Any]]:
        section = OmegaConf.create(sampler if sampler is not None else self.cfg.sampler)
        method, options = split_named(section, key="method")
        model = self.ema if use_ema else self.model
        model.eval()
        return model, method, self.teleport_options(model, options)

    def teleport_options(self, model: torch.nn.Module, options: dict[str, Any]
                          ) -> dict[str, Any]:
        """Turn the sampler section's `teleport: true` (+ `teleport_rank`, `t_start`,
        `teleport_thresh`) into a fitted `GaussianTeleport` and a numeric t_start.

        The Gaussian is fitted to the training data and cached in `<run_dir>/teleport.safetensors`;
        t_start "auto" is the smallest t from which up the model's score is explained by the
        Gaussian's to `teleport_thresh` (0.99) on training data noised to t.
        """
        options = dict(options)
        use = options.pop("teleport", False)
        rank = options.pop("teleport_rank", None)
        if use in (False, None, "false"):
            if options.get("t_start") in ("auto", None):
                options.pop("t_start", None)
            options.pop("teleport_thresh", None)
            return options
        if use is not True and use != "true":
            raise ConfigError(f"sampler.teleport must be true or false, got {use!r}")
        if rank not in self._teleports:  # fitted (or loaded from the cache) once per rank
            self._teleports[rank] = samplers.GaussianTeleport.fit(
                self.data.train, self.sde, rank=rank, cache=self.run_dir / "teleport.safetensors")
        tp = self._teleports[rank]
        t_start = options.get("t_start", "auto")
        if t_start in ("auto", None):
            thresh = options.pop("teleport_thresh", 0.99)
            t_start, _ = tp.suggest_t_start(model, data=self.data.train, thresh=thresh,
                                            generator=torch.Generator().manual_seed(0))
        options["t_start"] = float(t_start)
        options["teleport"] = tp
        return options

    def evaluate(self, sampler: DictConfig | dict | None = None, out_dir: Path | None = None
                 ) -> dict[str, Any]:
        """Sample, compare with held-out data, write `metrics.json` and `samples.png`."""
        e = self.cfg.eval
        out_dir = Path(out_dir) if out_dir is not None else self.run_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        section = OmegaConf.to_container(OmegaConf.create(sampler or self.cfg.sampler))
        self._print(f"evaluating: {e.n_samples} samples with {section}")
        res = self.sample(e.n_samples, sampler, use_ema=e.use_ema, seed=e.seed)
        if "t_start" in res.info:
            self._print(f"teleported to t_start={res.info['t_start']:.4g} "
                        f"({res.info.get('teleport_mode')}); the sampler ran from there")
        x = res.x.detach().cpu().double()
        test = self.data.test.double()
        gen = torch.Generator().manual_seed(e.seed)
        n_ref = min(len(test), len(self.data.train), e.n_samples)
        prior = self.sde.prior_sample((n_ref, *self.data.sample_shape), generator=gen,
                                      dtype=torch.float64)
        sw = lambda a, b: float(sliced_wasserstein(a, b, n_proj=e.n_proj))  # noqa: E731
        # Noise floor: the same metric between two exact sample sets (train vs test).
        exact, target, beta = self.data.train[:n_ref].double(), "p", tempered_beta(section)
        gmm = self.data.exact_score(self.sde) if self.data.has_exact_score else None
        if beta is not None and gmm is not None:  # FKC anneal: compare with p^beta itself
            test = tempered_draws(gmm, beta, len(test), gen)
            exact, target = tempered_draws(gmm, beta, n_ref, gen), f"p^{beta:g}"
            gmm = tempered_mixture(gmm, beta)
        elif beta is not None:
            target = f"p (p^{beta:g} has no closed-form reference for data '{self.data.name}')"
        metrics = {
            "target": target,
            "sliced_wasserstein": sw(x, test),
            "sliced_wasserstein_floor": sw(exact, test[:n_ref]),
            "sliced_wasserstein_prior": sw(prior, test[:n_ref]),
            "mmd": float(mmd(x[:2000].flatten(1), test[:2000].flatten(1))),
            "frechet_distance_raw": float(frechet_distance(x.flatten(1), test.flatten(1))),
            "nfe": res.nfe,
            "sampler": OmegaConf.to_container(OmegaConf.create(sampler or self.cfg.sampler)),
            "n_samples": e.n_samples,
            "ema": e.use_ema,
            "sample_time_s": res.info["wall_time"],
            "train_time_s": self.train_time,
            "train_steps": self.step,
            "final_loss": self.loss_history[-1] if self.loss_history else None,
            "nonfinite_samples": int((~torch.isfinite(x.flatten(1))).any(1).sum()),
        }
        if "t_start" in res.info:  # teleported: where the numerical phase began
            metrics.update(t_start=res.info["t_start"],
                           teleport_mode=res.info.get("teleport_mode"))
        if self.data.value_range is not None:  # e.g. pixels: samples outside the data's range
            lo, hi = self.data.value_range
            out = (x < lo) | (x > hi)
            metrics.update(out_of_range_fraction=float(out.flatten(1).any(1).double().mean()),
                           out_of_range_elements=float(out.double().mean()))
        if gmm is not None:  # mode weights / widths against the known mixture (or its p^beta)
            metrics.update(mode_metrics(x.flatten(1), gmm))
        io.write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        if e.plot:
            from scorekit.evaluation.plotting import save_samples_plot

            save_samples_plot(x, test, out_dir / "samples.png", kind=self.data.kind,
                              data_title="data (held-out)" if target == "p" else
                              f"target {target.split(' ')[0]} (exact draws)",
                              loss_history=self.loss_history or None,
                              log_every=self.cfg.trainer.log_every,
                              value_range=self.data.value_range or (-1.0, 1.0))
        return metrics
