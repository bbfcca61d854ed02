"""Model, EMA and optimizer state as the tensors and metadata of a checkpoint (`scorekit.io`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from scorekit.io import CheckpointError


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
