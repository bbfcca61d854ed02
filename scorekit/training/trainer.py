"""Trainer: data -> process -> objective -> network -> checkpoint -> sampler -> metrics/plot.

`Trainer(cfg, run_dir).run()` trains with Adam, EMA and gradient clipping, writes atomic
safetensors checkpoints (`checkpoints/last.safetensors`, the one before kept as
`prev.safetensors`) holding model, EMA, optimizer and RNG state, resumes bit-for-bit from them
(from `prev` with a warning when `last` is missing or corrupted), and finishes by sampling and
writing `samples.png` and `metrics.json` to the run directory. A non-finite loss stops training
with an error naming the step before anything is checkpointed; `trainer.skip_nonfinite=N`
skips up to N such batches instead. The step itself (chunked batches, gradient accumulation,
mixed precision, EMA) is `scorekit.training.step`; under `torchrun` every rank trains a DDP
replica and rank 0 alone writes files (`scorekit.training.distributed`). SIGTERM / SIGINT stop
training after the current step with a checkpoint (`scorekit.training.signals.StopRequested`).
`model=closed_form` builds an `EmpiricalScore` from the training data instead of a network:
nothing is trained and the checkpoint holds the data. Sampling and evaluation (`sample`,
`sample_to_disk`, `evaluate`) live in `scorekit.evaluation.sampling`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import samplers
from scorekit import io
from scorekit._validate import check_kwargs
from scorekit.cli import remove_if_empty
from scorekit.data import Dataset, make_dataset
from scorekit.data.reference import REFERENCE, load_reference, save_reference
from scorekit.evaluation.sampling import SamplingMixin
from scorekit.lock import DirLock, LockHeld
from scorekit.nets import make_model
from scorekit.objectives import make_objective
from scorekit.processes import make_sde
from scorekit.provenance import source_state
from scorekit.scores.empirical import EmpiricalScore
from scorekit.training import distributed
from scorekit.training.checkpointing import CKPT_NAME, PREV_NAME, CheckpointMixin
from scorekit.training.config import ConfigError, compose, split_named, validate
from scorekit.training.loggers import WandbLogger
from scorekit.training.resume import leftovers, resume_config
from scorekit.training.signals import SignalFlag, StopRequested
from scorekit.training.step import StepMixin

ALLOW_NEW = "allow_new"  # trainer.resume value: resume, or start here even over other files
_RESUME_HERE = (True, "true", ALLOW_NEW)  # trainer.resume values that resume this run dir
CLOSED_FORM = "closed_form"  # model name of the training-free EmpiricalScore


class Trainer(CheckpointMixin, StepMixin, SamplingMixin):
    """Builds every component from a validated config; see `configs/config.yaml`.

    A task with its own batches and evaluation subclasses it with `data="<dataset name>"`
    (`class SudokuTrainer(Trainer, data="sudoku")`), which registers it in `Trainer.tasks` for
    `trainer_class` and `from_run_dir`.
    """

    tasks: ClassVar[dict[str, type[Trainer]]] = {}

    def __init_subclass__(cls, data: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if data is not None:
            Trainer.tasks[data] = cls

    def __init__(self, cfg: DictConfig | dict, run_dir: str | Path | None = None,
                 save_config: bool = True, data: Dataset | None = None):
        cfg = self._init_run(cfg, run_dir, writes=save_config)
        with self._undo_on_error():
            self._build(cfg, data, save_config)

    def _build(self, cfg: DictConfig, data: Dataset | None, save_config: bool) -> None:
        """Data, process, model, objective and training state, checked before training."""
        self.data = data if data is not None else self._make_data(cfg)
        self.train_x = self.data.train.to(self.device, self.dtype)
        name, params = split_named(cfg.sde)
        self.sde = make_sde(name, **params)
        if getattr(self.sde, "is_reflected", False):
            self._check_in_box()
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
                params["sigma_data"] = float(self.data.train_std)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)  # seeded network initialisation, global RNG untouched
                self.model = make_model(name, self.data.dim, self.sde,
                                        sample_shape=self.data.sample_shape, **params)
        self.model.to(self.device, self.dtype)
        name, params = split_named(cfg.objective)
        data_score = self.data.score if self.data.has_clean_score else None
        self.objective = make_objective(name, self.sde, data_score=data_score, **params)
        self._init_training(save_config)

    @staticmethod
    def _make_data(cfg: DictConfig) -> Dataset:
        name, params = split_named(cfg.data)
        return make_dataset(name, seed=cfg.seed, **params)

    def _save_reference(self) -> None:
        """Rank 0: store what sampling needs from the data (`scorekit.data.reference`), once."""
        path = self.run_dir / REFERENCE
        if self.dist.is_main and not path.is_file():
            save_reference(self.data, path, seed=self.cfg.seed)

    def _init_run(self, cfg: DictConfig | dict, run_dir: str | Path | None,
                  writes: bool = True) -> DictConfig:
        """Validated config, ranks, device, run directory (rank 0's) and dtype (shared by every
        trainer). A trainer that `writes` (trains) holds the run dir's lock, removes what
        killed writers left there and, when resuming, continues the run's own config
        (`scorekit.training.resume`); nothing else is written yet."""
        self.cfg = validate(cfg)
        self.dist = distributed.init_from_env()
        self.device = distributed.resolve_device(self.cfg.device, self.dist)
        run_dir = str(run_dir if run_dir is not None else Path.cwd())
        self.run_dir = Path(self.dist.broadcast_str(run_dir, self.device))
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run dir {self.run_dir} exists and is not a directory")
        # The nearest folder that exists now: a constructor that fails removes what it made.
        self._existed = next(p for p in (self.run_dir.absolute(), *self.run_dir.absolute()
                                         .parents) if p.exists())
        self.lock: DirLock | None = None
        self.log_path: Path | None = None  # where `_print` appends; set once training may write
        if writes:
            self.cfg = self._resume_base(self.cfg)  # reads only
            error = None
            if self.dist.is_main:
                try:
                    self.lock = DirLock(self.run_dir, "run dir").acquire()
                    for folder in (self.run_dir, self.run_dir / "checkpoints"):
                        io.remove_stale_temps(folder)
                except (LockHeld, OSError) as err:
                    error = err
            self.dist.agree(error, f"locking the run dir {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dtype = getattr(torch, self.cfg.dtype)
        return self.cfg

    def _resumes_here(self) -> bool:
        return self.cfg.trainer.resume in _RESUME_HERE

    def _resume_base(self, cfg: DictConfig) -> DictConfig:
        """`trainer.resume=true` with a checkpoint here: the run's config.yaml with the given
        resumable values (others must agree). Without one: refuse a run dir that holds more
        than a run's start-up files, unless `trainer.resume=allow_new`. Any other value over
        a checkpoint here is refused: a new run would replace it."""
        resume = cfg.trainer.resume
        has_checkpoint = self.ckpt_path.exists() or self.ckpt_path.with_name(PREV_NAME).exists()
        if resume not in _RESUME_HERE:
            if has_checkpoint:  # a new run from step 0 would replace this one's checkpoints
                raise ConfigError(
                    f"{self.run_dir} already holds a run (checkpoints/{CKPT_NAME} or "
                    f"{PREV_NAME}); training there with trainer.resume={resume} would replace "
                    f"it. Continue it with trainer.resume=true, or train in another run dir "
                    f"(hydra.run.dir=...), or delete {self.run_dir / 'checkpoints'} first")
            return cfg
        if not has_checkpoint:
            extra = leftovers(self.run_dir)
            if extra and resume != ALLOW_NEW:
                raise ConfigError(
                    f"trainer.resume=true, but {self.run_dir} has no checkpoint "
                    f"(checkpoints/{CKPT_NAME} or {PREV_NAME}) and holds {extra[:6]}: a "
                    f"resumed run would start from step 0 over them. Set "
                    f"trainer.resume={ALLOW_NEW} to start there anyway, or use another run dir")
            return cfg
        stored = self.run_dir / "config.yaml"
        if not stored.is_file():  # the checkpoint's own config is checked when it loads
            return cfg
        try:
            saved = OmegaConf.to_container(OmegaConf.load(stored))
        except Exception as err:  # noqa: BLE001 - any YAML or OmegaConf error
            raise ConfigError(f"cannot read {stored} to resume: {err}") from None
        return validate(resume_config(saved, OmegaConf.to_container(cfg), self.run_dir))

    def _init_training(self, save_config: bool) -> None:
        """EMA, optimizer, RNGs, counters and step set-up for `self.model` (built by the
        subclass's init)."""
        t = self.cfg.trainer
        if self.closed_form:
            self.ema, self.optimizer = self.model, None
        else:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr,
                                              weight_decay=t.weight_decay)
        self.data_gen = torch.Generator().manual_seed(self.cfg.seed)
        self.step = 0
        self.loss_history: list[float] = []  # mean loss of each log interval
        self.skipped: list[int] = []  # steps whose batch had a non-finite loss (skip_nonfinite)
        self._losses: list[torch.Tensor] = []  # losses since the last log (checkpointed too)
        self.train_time = 0.0
        # Which code trained which steps: one entry per process that trained (`provenance`).
        self.segments: list[dict[str, Any]] = []
        self._segment: dict[str, Any] | None = None
        self._resume_checked = False  # `trainer.resume` is honoured once, by the first fit()
        self._sampler_checked = False  # the sampler section's dry run, once before training
        self.checkpoint_digest: str | None = None  # of the checkpoint last loaded or saved
        self._teleports: dict[int | None, samplers.GaussianTeleport] = {}  # by teleport_rank
        if not self.closed_form:
            self._init_step()
            if save_config:  # `trainer.resume`'s checkpoint loads before anything is written
                self._maybe_resume()
        if save_config and self.step < self.cfg.trainer.steps:
            self.check_sampler()  # a bad option fails before training
        if save_config and self.dist.is_main:
            self.log_path = self.run_dir / "train.log"
            io.write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
            self._save_reference()

    @contextlib.contextmanager
    def _undo_on_error(self) -> Iterator[None]:
        """The constructor after `_init_run`: on any failure the run dir's lock goes with the
        error, and folders this constructor created are removed while empty, so a rejected
        Trainer leaves nothing behind (and a corrected one in the same process starts clean)."""
        try:
            yield
        except BaseException:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            if self.dist.is_main and self._existed != self.run_dir.absolute():
                remove_if_empty(self.run_dir, stop=self._existed)
            raise

    def _check_in_box(self) -> None:
        """A reflected process lives on its box: the training data must lie in it."""
        lo, hi = float(self.data.train.min()), float(self.data.train.max())
        if lo < self.sde.lower or hi > self.sde.upper:
            raise ConfigError(f"data '{self.data.name}' spans [{lo:g}, {hi:g}], outside the box "
                              f"[{self.sde.lower:g}, {self.sde.upper:g}] of sde=reflected: set "
                              "sde.lower / sde.upper (or the data's range, e.g. data.low=0 for "
                              "digits)")

    # --- training --------------------------------------------------------------------------
    def _check_losses(self, losses: list[torch.Tensor]) -> torch.Tensor:
        """Stack the losses of the steps up to `self.step`; raise naming the first non-finite
        one (read here, once per log interval or checkpoint, not every step)."""
        vals = torch.stack(losses)
        finite = torch.isfinite(vals)
        if not bool(finite.all()):
            i = int(finite.logical_not().nonzero()[0, 0])
            step = self.step - len(losses) + 1 + i
            raise FloatingPointError(
                f"training loss is {float(vals[i])} at step {step}; stopped before "
                f"checkpointing it (the last checkpoint is from an earlier step). Lower "
                f"trainer.lr, set trainer.grad_clip, or set trainer.skip_nonfinite=N to skip up "
                f"to N such batches")
        return vals

    def fit(self, until: int | None = None, logger: WandbLogger | None = None,
            max_time_s: float | None = None) -> None:
        """Train up to `trainer.steps` (or stop early at step `until`, e.g. to test resume, or
        once the run's total training time reaches `max_time_s`, checkpointing there). On
        SIGTERM / SIGINT: checkpoint after the current step and raise `StopRequested`."""
        t = self.cfg.trainer
        if self.closed_form:
            self._print(f"model=closed_form has no training step (trainer.steps={t.steps} "
                        f"ignored); caching the {self.data.train.shape[0]} training points")
            start = time.perf_counter()
            self.save_checkpoint()
            self.train_time += time.perf_counter() - start
            return
        self._maybe_resume()
        if max_time_s is not None and self.train_time >= max_time_s:
            return  # the time budget is spent (e.g. a finished budgeted run being re-evaluated)
        end = t.steps if until is None else min(until, t.steps)
        if self.step < end and not self._sampler_checked:
            self.check_sampler()  # a bad sampler option fails now, not after training
        if self.step < end and self._segment is None:
            self._segment = {"from_step": self.step, "source": source_state()}
        self.model.train()
        bar = tqdm(total=t.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not self._shows_progress())
        if self.step < end:  # loss lines go to train.log; to the console when no bar shows
            self._print(f"training steps {self.step + 1}..{end} of {t.steps} in "
                        f"{self.run_dir}", console=bar.disable)
        start = time.perf_counter()
        with SignalFlag() as stop, bar:
            while self.step < end:
                loss = self.train_step()
                if loss is None:
                    if logger is not None:
                        logger.log({"skipped_batches": len(self.skipped)}, step=self.step + 1)
                    continue
                self._losses.append(loss)
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.steps:
                    # one host sync per log interval, not per step
                    mean = float(self._check_losses(self._losses).mean())
                    self.loss_history.append(mean)
                    bar.set_postfix(loss=f"{mean:.4g}")
                    self._print(f"step {self.step}/{t.steps}  loss {mean:.6g}  lr "
                                f"{self._lr(self.step - 1):.4g}", console=bar.disable)
                    if logger is not None:
                        logger.log({"loss": mean, "lr": self._lr(self.step - 1)}, step=self.step)
                    self._losses = []
                out_of_time = (max_time_s is not None
                               and self.train_time + time.perf_counter() - start >= max_time_s)
                # Ranks stop together: a signal to any of them, or any one's clock, stops all.
                signum, out_of_time = self.dist.max_of([stop.signum, out_of_time], self.device)
                if self.step % t.ckpt_every == 0 or self.step == t.steps or out_of_time or signum:
                    if self._losses:
                        self._check_losses(self._losses)  # never checkpoint a diverged state
                    self.train_time += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save_checkpoint()
                if signum:
                    raise StopRequested(int(signum), self.step, self.ckpt_path)
                if out_of_time:
                    break
        self.train_time += time.perf_counter() - start

    def run(self) -> dict[str, Any]:
        """Train (resuming if asked), then evaluate; returns the metrics. Under torchrun rank 0
        alone logs and evaluates; the other ranks return {} after training."""
        lg = self.cfg.logger
        logger = WandbLogger(lg.mode if self.dist.is_main else "disabled", lg.project,
                             self.run_dir, config=OmegaConf.to_container(self.cfg),
                             name=self.cfg.name, tags=list(lg.tags))
        if (where := logger.where()) is not None:
            self._print(where)
        try:
            self.fit(logger=logger)
            if not self.dist.is_main:
                return {}
            metrics = self.evaluate()
            logger.summary({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        finally:
            logger.finish()
        return metrics

    @classmethod
    def from_overrides(cls, overrides: list[str] | tuple[str, ...] = (),
                       run_dir: str | Path | None = None, experiment: str | None = None
                       ) -> Trainer:
        """The trainer `python scripts/train.py <overrides>` builds (`scorekit.config.compose`),
        e.g. `Trainer.from_overrides(["trainer.steps=500"], "outputs/mine", "digits")`."""
        cfg = compose(overrides, experiment)
        klass = trainer_class(cfg) if cls is Trainer else cls
        return klass(cfg, run_dir=run_dir)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, checkpoint: str | Path | None = None,
                     **overrides: Any) -> Trainer:
        """Rebuild a trained run from its saved `config.yaml`, its data reference and its
        weights; the data source itself is not needed."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} has no config.yaml; is it a scorekit run dir?")
        cfg = OmegaConf.load(cfg_path)
        cfg.trainer.resume = False
        cfg = OmegaConf.merge(cfg, overrides)
        klass = trainer_class(cfg) if cls is Trainer else cls
        # The data set is not rebuilt: its stored reference has what sampling needs (runs
        # written before references existed rebuild it from the config).
        ref = run_dir / REFERENCE
        data = load_reference(ref)[0] if ref.is_file() else None
        trainer = klass(cfg, run_dir=run_dir, save_config=False, data=data)
        path = Path(checkpoint or trainer.ckpt_path)
        # A pickle state_dict (trainer.allow_pickle) has weights only; ours restore everything.
        trainer.load_checkpoint(path, weights_only=path.is_file() and io.is_pickle(path))
        return trainer


def trainer_class(cfg: DictConfig | dict) -> type[Trainer]:
    """The trainer for a config: the task trainer registered for its data (`SudokuTrainer` for
    Sudoku grids), else `Trainer`."""
    data = cfg.get("data") or {}
    return Trainer.tasks.get(data.get("name"), Trainer)
