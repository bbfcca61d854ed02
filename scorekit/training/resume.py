"""What a resumed run may change, and when a run dir may be (re)started.

A resume (`trainer.resume=true`) continues the run's own `config.yaml`: the keys in `RESUMABLE`
(how long to train, how often to log and checkpoint, where and how precisely to compute, the
logger) take the value given now, and any other difference is refused with the key, the
stored value and the given one, before anything in the run dir is written. A run dir without a
checkpoint that holds more than what a run writes when it starts is not restarted from step 0
unless asked (`trainer.resume=allow_new`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from scorekit._validate import ConfigError
from scorekit.lock import LOCK_NAME

# Dotted keys (or whole sections) whose value may change when a run is resumed.
RESUMABLE = ("trainer.steps", "trainer.ckpt_every", "trainer.log_every", "trainer.progress",
             "trainer.resume", "trainer.allow_pickle", "trainer.precision", "device", "logger",
             "name")
# What a run writes before its first checkpoint (and Hydra's log): nothing to protect.
STARTUP_FILES = {"config.yaml", "data_reference.safetensors", "train.log", ".hydra", LOCK_NAME,
                 "checkpoints"}


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"dotted.key": value} (an empty section maps to {})."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def resume_config(stored: dict[str, Any], given: dict[str, Any], where: Path) -> dict[str, Any]:
    """The stored config with the given values of the `RESUMABLE` keys (and of keys the
    stored one lacks); raises ConfigError listing every other difference."""
    old, new = leaves(stored), leaves(given)
    refused = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and old[key] != new[key] and not _resumable(key):
            refused.append(f"{key}: run has {old[key]!r}, given {new[key]!r}")
        elif key in old and key not in new and not _resumable(key):
            refused.append(f"{key}: run has {old[key]!r}, given <absent>")
    if refused:
        raise ConfigError(
            f"trainer.resume=true: {where} was trained with other settings ("
            + "; ".join(refused[:8]) + (f"; and {len(refused) - 8} more" if len(refused) > 8
                                        else "")
            + f"). Resume with the run's own values (its config.yaml), or train in a new run "
            f"dir; only {', '.join(RESUMABLE)} may change on resume")
    merged = OmegaConf.create(stored)
    for key, value in new.items():  # the resumable keys, and keys this version adds
        if key not in old or _resumable(key):
            OmegaConf.update(merged, key, value, force_add=True)
    return OmegaConf.to_container(merged)


def leftovers(run_dir: Path) -> list[str]:
    """Files in `run_dir` beyond what a run writes before its first checkpoint."""
    if not run_dir.is_dir():
        return []
    out = sorted(p.name for p in run_dir.iterdir() if p.name not in STARTUP_FILES)
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        out += sorted(f"checkpoints/{p.name}" for p in ckpts.iterdir())
    return out
