"""Atomic safetensors checkpoints holding model, EMA, optimizer and RNG state.

Tensors go into the safetensors file; everything else (step, loss history, optimizer
hyper-parameters, the config that built the model) is JSON in its metadata header.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

_META_KEY = "scorekit"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model it is loaded into."""


def save(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` + JSON `meta` to `path` atomically (temp file in the same dir + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={_META_KEY: json.dumps(meta)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save`: (tensors on CPU, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if _META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a scorekit checkpoint")
    return tensors, json.loads(header[_META_KEY])


def module_tensors(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(module: nn.Module, tensors: dict[str, Tensor], prefix: str, source: str) -> None:
    """Load `prefix.*` tensors into `module`, raising CheckpointError naming any mismatch."""
    own = module.state_dict()
    got = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing = sorted(set(own) - set(got))
    extra = sorted(set(got) - set(own))
    if missing or extra:
        raise CheckpointError(f"checkpoint {source} does not match the model ({prefix}): "
                              f"missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    for k, v in own.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint {source}: '{prefix}.{k}' has shape "
                                  f"{tuple(got[k].shape)} but the model expects {tuple(v.shape)}")
    module.load_state_dict({k: got[k].to(v.dtype) for k, v in own.items()})


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, val in state.items():
            if isinstance(val, Tensor):
                tensors[f"optim.{pid}.{name}"] = val
            else:
                scalars[f"{pid}.{name}"] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor],
                   meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = val
    for key, val in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
