"""The training config as `scripts/train.py` composes it, for tests (without Hydra's section)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def compose_config(overrides=()) -> dict:
    """`configs/config.yaml` with Hydra-style overrides, as a plain (unresolved) dict."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("hydra", None)
    return cfg
