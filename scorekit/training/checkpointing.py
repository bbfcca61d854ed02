"""Checkpoints of a Trainer: save, load (with the fallback to `prev` and the checks before any
tensor is read) and resume.

`CheckpointMixin` is part of `scorekit.training.Trainer`; it reads the trainer's `cfg`, `dist`,
`run_dir`, `model`, `ema`, `optimizer`, `scaler`, `data_gen`, `closed_form` and its training
counters, and writes them back on load.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from scorekit import io
from scorekit.training.checkpoint import (
    load_module,
    load_optimizer,
    module_tensors,
    optimizer_state,
)

# Sections whose values must agree between a checkpoint and the config that loads it.
_MODEL_DEFINING = ("data", "sde", "model")
CKPT_NAME = "last.safetensors"
PREV_NAME = "prev.safetensors"  # the checkpoint before `last`, kept for a corrupted `last`


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


class CheckpointMixin:
    """`save_checkpoint`, `load_checkpoint` and the resume of a Trainer."""

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / CKPT_NAME

    @staticmethod
    def _checkpoint_file(path: str | Path) -> Path:
        """A checkpoint file, or a run dir's `checkpoints/last.safetensors`."""
        path = Path(path)
        if path.is_dir() and path.suffix in (".safetensors", ".pt", ".pth"):
            raise io.CheckpointError(f"{path} is a directory, not a checkpoint file (a run dir "
                                     f"is given by its own path)")
        return path / "checkpoints" / CKPT_NAME if path.is_dir() else path

    @staticmethod
    def _previous_of(path: Path) -> Path | None:
        """Where the checkpoint before `path` is kept (only for the rotating `last` file)."""
        return path.with_name(PREV_NAME) if path.name == CKPT_NAME else None

    def _model_config(self) -> dict[str, Any]:
        return {k: OmegaConf.to_container(self.cfg[k]) for k in _MODEL_DEFINING}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the training state to `path` (default `checkpoints/last.safetensors`). Under
        torchrun every rank calls it, rank 0 writes, and all return once the file is there."""
        path = Path(path) if path is not None else self.ckpt_path
        if self.dist.is_main:
            tensors, meta = self._checkpoint_state()
            self.checkpoint_digest = io.save(path, tensors, meta,
                                             previous=self._previous_of(path))
        self.dist.barrier()
        return path

    def _checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.closed_form:  # the cached training data (and smoothing bank) are the model
            meta = {"step": 0, "loss_history": [], "config": self._model_config(),
                    "train_time": self.train_time, "format": "scorekit-closed-form-1"}
            return module_tensors(self.model, "model"), meta
        opt_tensors, opt_meta = optimizer_state(self.optimizer)
        # No noise generator state: each chunk's noise is seeded from (seed, batch, chunk).
        tensors = {**module_tensors(self.model, "model"),
                   **module_tensors(self.ema, "ema"), **opt_tensors,
                   "rng.data": self.data_gen.get_state()}
        if self._losses:  # the current log interval's losses: a resumed run logs the same means
            tensors["losses.pending"] = torch.stack(self._losses)
        meta = {"step": self.step, "loss_history": self.loss_history, "optim": opt_meta,
                "config": self._model_config(), "train_time": self.train_time,
                "run_config": OmegaConf.to_container(self.cfg),
                "skipped": self.skipped, "segments": self.training_segments(),
                "format": "scorekit-train-1"}
        if self.scaler.is_enabled():  # fp16 loss scale and growth counter: exact resume
            meta["scaler"] = self.scaler.state_dict()
        return tensors, meta

    def training_segments(self) -> list[dict[str, Any]]:
        """Which code trained which steps: the loaded checkpoint's segments, then this
        process's (`from_step`, `to_step`, `source`: `scorekit.provenance.source_state()`;
        `source` None for steps trained before segments were recorded)."""
        current = self._segment
        if current is None or self.step <= current["from_step"]:
            return list(self.segments)
        return [*self.segments, {**current, "to_step": self.step}]

    def load_checkpoint(self, path: str | Path, weights_only: bool = False,
                        allow_pickle: bool | None = None) -> Path:
        """Restore from `path` (a checkpoint file or a run dir); raises on any mismatch.

        A missing or unreadable `last.safetensors` falls back to `prev.safetensors` with a
        warning; returns the file actually read. Pickle files load only with `allow_pickle`
        (default `trainer.allow_pickle`), as weights (`weights_only=True`) of a state_dict.
        """
        path = self._checkpoint_file(path)
        allow = self.cfg.trainer.allow_pickle if allow_pickle is None else allow_pickle
        tensors, meta, used = io.load_latest(path, self._previous_of(path), allow,
                                             max_bytes=self._max_checkpoint_bytes(),
                                             check=self._check_meta)
        self.checkpoint_digest = None if io.is_pickle(used) else io.digest_of(used)
        self._resume_checked = True  # an explicit load wins over `trainer.resume`
        if "config" not in meta:  # a bare state_dict (pickle): weights without training state
            tensors = self._foreign_weights(tensors, used, weights_only)
        else:
            diffs = _diff_configs(meta["config"], self._model_config())
            if diffs:
                raise io.CheckpointError(f"checkpoint {used} does not match the config: "
                                           + "; ".join(diffs[:6]))
        load_module(self.model, tensors, "model", str(used))
        if self.closed_form:
            return used
        load_module(self.ema, tensors, "ema", str(used))
        if weights_only:
            return used
        load_optimizer(self.optimizer, tensors, meta["optim"])
        self.data_gen.set_state(tensors["rng.data"])
        if self.scaler.is_enabled() and "scaler" in meta:
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])
        self.loss_history = list(meta["loss_history"])
        self.train_time = float(meta.get("train_time", 0.0))
        self.skipped = list(meta.get("skipped", []))
        self.segments = list(meta.get("segments", []))
        if not self.segments and self.step > 0:  # written before segments were recorded
            self.segments = [{"from_step": 0, "to_step": self.step, "source": None}]
        self._segment = None
        pending = tensors.get("losses.pending")
        self._losses = [] if pending is None else list(pending.to(self.device).unbind())
        return used

    def _max_checkpoint_bytes(self) -> int:
        """A bound on this model's checkpoint: model, EMA and two Adam moments, each in up to 8
        bytes per element, plus room for RNG state, pending losses and the header."""
        elements = sum(t.numel() for t in self.model.state_dict().values())
        return 4 * 8 * elements + (64 << 20)

    def _check_meta(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Types of the metadata this trainer reads (a bad one falls back to `prev`)."""
        if "config" not in meta:
            return  # a bare state_dict: `_foreign_weights` decides
        ok = (isinstance(meta.get("step"), int) and meta["step"] >= 0
              and isinstance(meta.get("loss_history"), list) and isinstance(meta["config"], dict)
              and (self.closed_form or (isinstance(meta.get("optim"), dict)
                                        and "rng.data" in tensors)))
        if not ok:
            raise io.CheckpointError(f"checkpoint metadata is malformed (step "
                                     f"{meta.get('step')!r}, keys {sorted(meta)})")

    def _foreign_weights(self, tensors: dict[str, torch.Tensor], source: Path,
                         weights_only: bool) -> dict[str, torch.Tensor]:
        """Model (and EMA) tensors of a plain state_dict, keyed as in our checkpoints."""
        if not weights_only:
            raise io.CheckpointError(
                f"{source} holds weights only (no step, optimizer or RNG state, no config to "
                f"check against); load it with weights_only=True, not to resume training")
        warnings.warn(f"{source} carries no config: only tensor names and shapes are checked",
                      stacklevel=3)
        if not any(k.startswith("model.") for k in tensors):
            tensors = {f"model.{k}": v for k, v in tensors.items()}
        if not any(k.startswith("ema.") for k in tensors):
            tensors.update({"ema." + k[6:]: v for k, v in tensors.items()
                            if k.startswith("model.")})
        return tensors

    def _maybe_resume(self) -> None:
        if self._resume_checked:
            return
        self._resume_checked = True
        resume = self.cfg.trainer.resume
        if resume is False or resume is None or resume == "false":
            return
        here = self._resumes_here()
        path = self._checkpoint_file(self.ckpt_path if here else Path(str(resume)))
        prev = self._previous_of(path)
        if here and not path.exists() and not (prev and prev.exists()):
            self._print(f"resume: no checkpoint at {path}; starting from step 0")
            return
        used = self.load_checkpoint(path)  # every rank reads it: the run dir must be shared
        self.dist.barrier()
        if used != path and path.exists() and self.dist.is_main:
            # Moved aside so that the next save does not rotate it over the good `prev`.
            os.replace(path, path.with_name(path.name + ".corrupt"))
        self._print(f"resumed from {used} at step {self.step}")
