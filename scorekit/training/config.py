"""Schema and validation of the training configuration (the Hydra tree under `configs/`).

Sections `data`, `sde`, `model`, `objective` are open: a `name` picks a builder and the other
keys are checked against its signature when it is built. `sampler`, `trainer`, `eval` and
`logger` have fixed schemas below. Every error names the offending key and value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scorekit import rng
from scorekit._validate import ConfigError, split_named

__all__ = ["ConfigError", "split_named", "validate", "compose", "TrainerConfig", "EvalConfig",
           "LoggerConfig"]


@dataclass
class TrainerConfig:
    steps: int = 4000
    batch_size: int = 512  # the global batch, over all processes and micro-batches
    grad_accum: int = 1  # micro-batches per process and optimizer step
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" (autocast of forward + loss)
    lr: float = 2e-3
    warmup: int = 100
    lr_schedule: str = "constant"  # "constant" | "cosine" (after warmup)
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1+step)/(10+step)); false: ema_decay
    grad_clip: float | None = 1.0
    ckpt_every: int = 1000
    log_every: int = 50
    # false | true (this run dir, its own config; refused in a dir holding other files and no
    # checkpoint) | allow_new (true, or start there anyway) | path to a run dir or checkpoint
    resume: Any = False
    progress: bool = True
    skip_nonfinite: int = 0  # batches with a NaN/inf loss to skip (and log) before stopping
    allow_pickle: bool = False  # load pickle (.pt) checkpoints with torch.load(weights_only)


@dataclass
class EvalConfig:
    n_samples: int = 4000
    use_ema: bool = True
    n_proj: int = 256
    seed: int = 1
    plot: bool = True


@dataclass
class LoggerConfig:
    name: str = "wandb"
    mode: str = "disabled"  # "disabled" | "offline" | "online"
    project: str = "scorekit"
    tags: list[str] = field(default_factory=list)


FIXED = {"trainer": TrainerConfig, "eval": EvalConfig, "logger": LoggerConfig}
OPEN = ("data", "sde", "model", "objective", "sampler")
TOP = {"seed": int, "device": str, "dtype": str, "name": str}
DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16", "fp16")


def _check_keys(section: str, cfg: DictConfig, valid: list[str]) -> None:
    for key in cfg:
        if key not in valid:
            raise ConfigError(f"unknown config key '{section}.{key}'; valid keys: {sorted(valid)}")


def validate(cfg: Any) -> DictConfig:
    """Return a resolved, validated copy of `cfg` (dict or DictConfig) with defaults filled in."""
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(f"config key '{missing[0]}' has no value ('???'); set it on the command "
                          f"line, e.g. {missing[0]}=...")
    allowed = list(FIXED) + list(OPEN) + list(TOP)
    for key in cfg:
        if key not in allowed:
            raise ConfigError(
                f"unknown config key '{key}'; valid top-level keys: {sorted(allowed)}")
    for section in OPEN:
        if section not in cfg:
            raise ConfigError(f"config is missing the section '{section}'")
        if not isinstance(cfg[section], DictConfig):
            raise ConfigError(f"config section '{section}' must be a mapping, got {cfg[section]!r}")
        key = "method" if section == "sampler" else "name"
        if key not in cfg[section]:
            raise ConfigError(f"config section '{section}' needs a '{key}' key")
    out = OmegaConf.create({k: cfg[k] for k in OPEN})
    for section, schema in FIXED.items():
        given = cfg.get(section, OmegaConf.create({}))
        _check_keys(section, given, [f.name for f in fields(schema)])
        try:
            out[section] = OmegaConf.merge(OmegaConf.structured(schema), given)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            raise ConfigError(f"invalid value for '{section}.{key}': {err.msg}") from err
    try:  # an int >= 0: not a float that rounds, a bool or a string
        out.seed = rng.check_seed(cfg.get("seed", 0))
    except ValueError as err:
        raise ConfigError(f"invalid value for 'seed': {err}") from None
    out.device = str(cfg.get("device", "cpu"))
    out.dtype = str(cfg.get("dtype", "float32"))
    out.name = str(cfg.get("name", "default"))
    _check_values(out)
    return out


def _require(ok: bool, key: str, value: Any, what: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {what}, got {value!r}")


def _check_values(cfg: DictConfig) -> None:
    t, e, s = cfg.trainer, cfg.eval, cfg.sampler
    for key in ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every"):
        _require(t[key] >= 1, f"trainer.{key}", t[key], "an integer >= 1")
    _require(t.batch_size % t.grad_accum == 0, "trainer.batch_size", t.batch_size,
             f"divisible by trainer.grad_accum={t.grad_accum}")
    _require(t.precision in PRECISIONS, "trainer.precision", t.precision,
             f"one of {list(PRECISIONS)}")
    _require(t.warmup >= 0, "trainer.warmup", t.warmup, ">= 0")
    _require(t.skip_nonfinite >= 0, "trainer.skip_nonfinite", t.skip_nonfinite,
             "an integer >= 0")
    _require(t.weight_decay >= 0, "trainer.weight_decay", t.weight_decay, ">= 0")
    _require(isinstance(t.resume, (bool, str)) or t.resume is None, "trainer.resume", t.resume,
             "true, false or a path")
    _require(t.lr > 0, "trainer.lr", t.lr, "> 0")
    _require(0 <= t.ema_decay < 1, "trainer.ema_decay", t.ema_decay, "in [0, 1)")
    _require(t.grad_clip is None or t.grad_clip > 0, "trainer.grad_clip", t.grad_clip,
             "null or > 0")
    _require(t.lr_schedule in ("constant", "cosine"), "trainer.lr_schedule", t.lr_schedule,
             "'constant' or 'cosine'")
    _require(e.n_samples >= 2, "eval.n_samples", e.n_samples, "an integer >= 2")
    _require(e.n_proj >= 1, "eval.n_proj", e.n_proj, "an integer >= 1")
    if "steps" in s and s.steps is not None:
        _require(isinstance(s.steps, int) and s.steps >= 1, "sampler.steps", s.steps,
                 "an integer >= 1")
    _require(cfg.logger.mode in ("disabled", "offline", "online"), "logger.mode",
             cfg.logger.mode, "'disabled', 'offline' or 'online'")
    _require(cfg.dtype in DTYPES, "dtype", cfg.dtype, f"one of {list(DTYPES)}")
    # Autocast lowers float32 ops only: under float64 it would silently do nothing.
    _require(t.precision == "fp32" or cfg.dtype == "float32", "trainer.precision",
             t.precision, f"fp32 with dtype={cfg.dtype} (bf16 / fp16 need dtype=float32)")
    _require(cfg.device == "cpu" or cfg.device == "auto" or cfg.device.startswith("cuda"),
             "device", cfg.device, "'cpu', 'auto' or 'cuda[:i]'")


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose(overrides: list[str] | tuple[str, ...] = (), experiment: str | None = None,
            config_dir: str | Path | None = None) -> DictConfig:
    """The validated training config that `python scripts/train.py <overrides>` builds, for
    Python: `compose(["trainer.steps=500", "sampler=heun"], experiment="digits")`. Hydra's own
    section (run dir, logging) is dropped; `config_dir` defaults to the repository's configs/."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = list(overrides) + ([f"experiment={experiment}"] if experiment else [])
    folder = Path(config_dir) if config_dir is not None else CONFIGS
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml under {folder}; pass config_dir=")
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: compose beside it
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"config overrides {overrides}: {err}") from None
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("hydra", None)
    return validate(cfg)
