"""Trainer: data -> process -> objective -> network -> checkpoint -> sampler -> metrics/plot.

`Trainer(cfg, run_dir).run()` trains with Adam, EMA and gradient clipping, writes atomic
safetensors checkpoints (`checkpoints/last.safetensors`) holding model, EMA, optimizer and RNG
state, resumes bit-for-bit from them, and finishes by sampling and writing `samples.png` and
`metrics.json` to the run directory. `model=closed_form` builds an `EmpiricalScore` from the
training data instead of a network: nothing is trained and the checkpoint holds the data.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import samplers
from scorekit import checkpoint as ckpt
from scorekit._validate import check_kwargs
from scorekit.config import ConfigError, split_named, validate
from scorekit.data import make_dataset
from scorekit.empirical import EmpiricalScore
from scorekit.loggers import WandbLogger
from scorekit.metrics import frechet_distance, mmd, mode_metrics, sliced_wasserstein
from scorekit.nets import make_model
from scorekit.objectives import make_objective
from scorekit.sde import make_sde

# Sections whose values must agree between a checkpoint and the config that loads it.
_MODEL_DEFINING = ("data", "sde", "model")
CKPT_NAME = "last.safetensors"
CLOSED_FORM = "closed_form"  # model name of the training-free EmpiricalScore


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available")
    return dev


def _diff_configs(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r} vs config {b!r}")
    return out


class Trainer:
    """Builds every component from a validated config; see `configs/config.yaml`."""

    def __init__(self, cfg: DictConfig | dict, run_dir: str | Path | None = None,
                 save_config: bool = True):
        cfg = self._init_run(cfg, run_dir)
        name, params = split_named(cfg.data)
        self.data = make_dataset(name, seed=cfg.seed, **params)
        self.train_x = self.data.train.to(self.device, self.dtype)
        name, params = split_named(cfg.sde)
        self.sde = make_sde(name, **params)
        name, params = split_named(cfg.model)
        # model=closed_form: the score is computed from the training data (objectives §7); no
        # network, optimizer or EMA, and fit() only caches the data as the checkpoint.
        self.closed_form = name == CLOSED_FORM
        if self.closed_form:
            check_kwargs(EmpiricalScore, params, where=f"model '{name}'",
                         exclude=("data", "sde", "seed"))
            self.model = EmpiricalScore(self.data.train, self.sde, seed=cfg.seed, **params)
        else:
            if params.get("sigma_data", "auto") in ("auto", None):
                params["sigma_data"] = float(self.data.train.std())
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)  # seeded network initialisation, global RNG untouched
                self.model = make_model(name, self.data.dim, self.sde, **params)
        self.model.to(self.device, self.dtype)
        name, params = split_named(cfg.objective)
        data_score = self.data.score if self.data.has_clean_score else None
        self.objective = make_objective(name, self.sde, data_score=data_score, **params)
        self._init_training(save_config)

    def _init_run(self, cfg: DictConfig | dict, run_dir: str | Path | None) -> DictConfig:
        """Validated config, run directory, device and dtype (shared by every trainer)."""
        self.cfg = validate(cfg)
        self.run_dir = Path(run_dir if run_dir is not None else Path.cwd())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = _resolve_device(self.cfg.device)
        self.dtype = getattr(torch, self.cfg.dtype)
        return self.cfg

    def _init_training(self, save_config: bool) -> None:
        """EMA, optimizer, RNGs and counters for `self.model` (built by the subclass's init)."""
        t = self.cfg.trainer
        if self.closed_form:
            self.ema, self.optimizer = self.model, None
        else:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr,
                                              weight_decay=t.weight_decay)
        self.data_gen = torch.Generator().manual_seed(self.cfg.seed)
        self.noise_gen = torch.Generator(self.device).manual_seed(self.cfg.seed + 1)
        self.step = 0
        self.loss_history: list[float] = []  # mean loss of each log interval
        self.train_time = 0.0
        self._resume_checked = False  # `trainer.resume` is honoured once, by the first fit()
        self._teleports: dict[int | None, samplers.GaussianTeleport] = {}  # by teleport_rank
        if save_config:
            OmegaConf.save(self.cfg, self.run_dir / "config.yaml")

    # --- checkpoints ---------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / CKPT_NAME

    def _model_config(self) -> dict[str, Any]:
        return {k: OmegaConf.to_container(self.cfg[k]) for k in _MODEL_DEFINING}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.ckpt_path
        if self.closed_form:  # the cached training data (and smoothing bank) are the model
            meta = {"step": 0, "loss_history": [], "config": self._model_config(),
                    "train_time": self.train_time, "format": "scorekit-closed-form-1"}
            ckpt.save(path, ckpt.module_tensors(self.model, "model"), meta)
            return path
        opt_tensors, opt_meta = ckpt.optimizer_state(self.optimizer)
        tensors = {**ckpt.module_tensors(self.model, "model"),
                   **ckpt.module_tensors(self.ema, "ema"), **opt_tensors,
                   "rng.data": self.data_gen.get_state(), "rng.noise": self.noise_gen.get_state()}
        meta = {"step": self.step, "loss_history": self.loss_history, "optim": opt_meta,
                "config": self._model_config(), "train_time": self.train_time,
                "format": "scorekit-train-1"}
        ckpt.save(path, tensors, meta)
        return path

    def load_checkpoint(self, path: str | Path, weights_only: bool = False) -> None:
        """Restore from `path` (a checkpoint file or a run dir); raises on any mismatch."""
        path = Path(path)
        if path.is_dir():
            path = path / "checkpoints" / CKPT_NAME
        tensors, meta = ckpt.load(path)
        self._resume_checked = True  # an explicit load wins over `trainer.resume`
        diffs = _diff_configs(meta.get("config", {}), self._model_config())
        if diffs:
            raise ckpt.CheckpointError(f"checkpoint {path} does not match the config: "
                                       + "; ".join(diffs[:6]))
        ckpt.load_module(self.model, tensors, "model", str(path))
        if self.closed_form:
            return
        ckpt.load_module(self.ema, tensors, "ema", str(path))
        if weights_only:
            return
        ckpt.load_optimizer(self.optimizer, tensors, meta["optim"])
        self.data_gen.set_state(tensors["rng.data"])
        self.noise_gen.set_state(tensors["rng.noise"])
        self.step = int(meta["step"])
        self.loss_history = list(meta["loss_history"])
        self.train_time = float(meta.get("train_time", 0.0))

    def _maybe_resume(self) -> None:
        if self._resume_checked:
            return
        self._resume_checked = True
        resume = self.cfg.trainer.resume
        if resume is False or resume is None or resume == "false":
            return
        path = self.ckpt_path if resume is True or resume == "true" else Path(str(resume))
        if resume is True and not path.exists():
            tqdm.write(f"resume: no checkpoint at {path}; starting from step 0")
            return
        self.load_checkpoint(path)
        tqdm.write(f"resumed from {path} at step {self.step}")

    # --- training --------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        t = self.cfg.trainer
        scale = min(1.0, (step + 1) / t.warmup) if t.warmup > 0 else 1.0
        if t.lr_schedule == "cosine" and step >= t.warmup:
            frac = (step - t.warmup) / max(1, t.steps - t.warmup)
            scale *= 0.5 * (1 + math.cos(math.pi * frac))
        return t.lr * scale

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up of the decay (as in common EMA implementations) so early samples are usable.
        decay = min(self.cfg.trainer.ema_decay, (1 + self.step) / (10 + self.step))
        ema_p = list(self.ema.parameters())
        torch._foreach_lerp_(ema_p, list(self.model.parameters()), 1 - decay)

    def batch_loss(self) -> torch.Tensor:
        """Loss of one freshly drawn training batch (scalar, with graph)."""
        idx = torch.randint(self.train_x.shape[0], (self.cfg.trainer.batch_size,),
                            generator=self.data_gen)
        x0 = self.train_x[idx.to(self.device)]
        return self.objective(self.model, x0, generator=self.noise_gen)

    def train_step(self) -> torch.Tensor:
        t = self.cfg.trainer
        loss = self.batch_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return loss.detach()

    def fit(self, until: int | None = None, logger: WandbLogger | None = None,
            max_time_s: float | None = None) -> None:
        """Train up to `trainer.steps` (or stop early at step `until`, e.g. to test resume, or
        once the run's total training time reaches `max_time_s`, checkpointing there)."""
        t = self.cfg.trainer
        if self.closed_form:
            tqdm.write(f"model=closed_form has no training step (trainer.steps={t.steps} "
                       f"ignored); caching the {self.data.train.shape[0]} training points")
            start = time.perf_counter()
            self.save_checkpoint()
            self.train_time += time.perf_counter() - start
            return
        self._maybe_resume()
        if max_time_s is not None and self.train_time >= max_time_s:
            return  # the time budget is spent (e.g. a finished budgeted run being re-evaluated)
        end = t.steps if until is None else min(until, t.steps)
        self.model.train()
        acc, n_acc = torch.zeros((), device=self.device), 0
        bar = tqdm(total=t.steps, initial=self.step, disable=not t.progress, desc="train",
                   dynamic_ncols=True)
        start = time.perf_counter()
        while self.step < end:
            acc += self.train_step()
            n_acc += 1
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == end:
                mean = acc.item() / n_acc  # one host sync per log interval, not per step
                if not math.isfinite(mean):
                    raise FloatingPointError(f"training loss became {mean} within the "
                                             f"{n_acc} steps before step {self.step}")
                self.loss_history.append(mean)
                bar.set_postfix(loss=f"{mean:.4g}")
                if logger is not None:
                    logger.log({"loss": mean, "lr": self._lr(self.step - 1)}, step=self.step)
                acc.zero_()
                n_acc = 0
            out_of_time = (max_time_s is not None
                           and self.train_time + time.perf_counter() - start >= max_time_s)
            if self.step % t.ckpt_every == 0 or self.step == t.steps or out_of_time:
                self.train_time += time.perf_counter() - start
                start = time.perf_counter()
                self.save_checkpoint()
            if out_of_time:
                break
        self.train_time += time.perf_counter() - start
        bar.close()

    # --- sampling and evaluation ---------------------------------------------------------
    def sample(self, n: int, sampler: DictConfig | dict | None = None, use_ema: bool = True,
               seed: int = 1) -> samplers.SampleResult:
        """Draw n samples with the configured (or given) sampler section."""
        section = OmegaConf.create(sampler if sampler is not None else self.cfg.sampler)
        method, options = split_named(section, key="method")
        model = self.ema if use_ema else self.model
        model.eval()
        options = self.teleport_options(model, options)
        gen = torch.Generator(self.device).manual_seed(seed)
        return samplers.sample(model, self.sde, (n, *self.data.sample_shape), method=method,
                               generator=gen, device=self.device, dtype=self.dtype, **options)

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
        res = self.sample(e.n_samples, sampler, use_ema=e.use_ema, seed=e.seed)
        x = res.x.detach().cpu().double()
        test = self.data.test.double()
        gen = torch.Generator().manual_seed(e.seed)
        n_ref = min(len(test), len(self.data.train), e.n_samples)
        prior = self.sde.prior_sample((n_ref, *self.data.sample_shape), generator=gen,
                                      dtype=torch.float64)
        sw = lambda a, b: float(sliced_wasserstein(a, b, n_proj=e.n_proj))  # noqa: E731
        metrics = {
            "sliced_wasserstein": sw(x, test),
            # Noise floor: the same metric between two exact sample sets (train vs test).
            "sliced_wasserstein_floor": sw(self.data.train[:n_ref].double(), test[:n_ref]),
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
        if self.data.has_exact_score:  # mode weights / widths against the known mixture
            metrics.update(mode_metrics(x.flatten(1), self.data.exact_score(self.sde)))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if e.plot:
            from scorekit.plotting import save_samples_plot

            save_samples_plot(x, test, out_dir / "samples.png", kind=self.data.kind,
                              loss_history=self.loss_history or None)
        return metrics

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), then evaluate; returns the metrics."""
        lg = self.cfg.logger
        logger = WandbLogger(lg.mode, lg.project, self.run_dir,
                             config=OmegaConf.to_container(self.cfg), name=self.cfg.name,
                             tags=list(lg.tags))
        try:
            self.fit(logger=logger)
            metrics = self.evaluate()
            logger.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        finally:
            logger.finish()
        return metrics

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, checkpoint: str | Path | None = None,
                     **overrides: Any) -> Trainer:
        """Rebuild a trained run from its saved `config.yaml` and load its weights."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} has no config.yaml; is it a scorekit run dir?")
        cfg = OmegaConf.load(cfg_path)
        cfg.trainer.resume = False
        cfg = OmegaConf.merge(cfg, overrides)
        klass = trainer_class(cfg) if cls is Trainer else cls
        trainer = klass(cfg, run_dir=run_dir, save_config=False)
        trainer.load_checkpoint(checkpoint or trainer.ckpt_path, weights_only=False)
        return trainer


def trainer_class(cfg: DictConfig | dict) -> type[Trainer]:
    """The trainer for a config: `SudokuTrainer` for categorical Sudoku data, else `Trainer`."""
    data = cfg.get("data") or {}
    if data.get("name") == "sudoku":
        from scorekit.train_sudoku import SudokuTrainer

        return SudokuTrainer
    return Trainer
