"""Multi-process training through `torchrun` and DistributedDataParallel.

`init_from_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: one process) and
joins the process group (gloo for CPU tensors, NCCL for CUDA ones). `Dist` holds the rank and
the few collectives the trainer needs, all no-ops in one process. `DataParallelScore` routes a
score model's forward *and* its own entry points (`scaled_score`, `stick_score`, ...) through
DDP, so every call the objective makes takes part in the gradient all-reduce. Every rank keeps
the whole training set and draws the same global batch; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from scorekit.ranks import Ranks, dist_timeout
from scorekit.training.config import ConfigError


@dataclass(frozen=True)
class Dist(Ranks):
    """This process's place in the job: `Ranks` (rank, world size, `enabled`, `is_main`,
    `barrier`, ...) plus the local rank (one process: 0, 1, 0)."""

    local_rank: int = 0

    def mean(self, x: Tensor) -> Tensor:
        """Average of `x` over ranks (`x` itself in one process)."""
        if not self.enabled:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / self.world_size

    def max_of(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise maximum over ranks of a few numbers (unchanged in one process)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def broadcast_str(self, text: str, device: torch.device) -> str:
        """Rank 0's `text` on every rank."""
        if not self.enabled:
            return text
        data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
        n = torch.tensor([data.numel()], device=device)
        dist.broadcast(n, 0)
        buf = data if self.is_main else torch.empty(int(n), dtype=torch.uint8, device=device)
        dist.broadcast(buf, 0)
        return bytes(buf.cpu().tolist()).decode()


def init_from_env() -> Dist:
    """Join the process group that torchrun's environment describes (once per process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        # One group for both kinds of tensor, so device=cpu also runs on a GPU machine.
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=dist_timeout())
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, ranks: Dist) -> torch.device:
    """The config's `device` for this process; under torchrun CUDA means cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available")
    if dev.type == "cuda" and ranks.enabled:
        if dev.index is not None:
            raise ConfigError(f"device={name!r}: under torchrun each process uses "
                              f"cuda:LOCAL_RANK; set device=cuda or device=auto")
        dev = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(dev)  # NCCL binds each process's communicator to this device
    return dev


def hydra_overrides() -> list[str]:
    """Hydra overrides for a torchrun rank other than 0: rank 0 alone writes `.hydra/` and
    the job log (read from the environment, before any process group exists)."""
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=disabled"]


class _Router(nn.Module):
    """What DDP wraps: `forward(..., _method=name)` calls the model's method `name`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, _method: str = "forward", **kwargs: Any) -> Any:
        return getattr(self.module, _method)(*args, **kwargs)


class DataParallelScore:
    """A score model under DistributedDataParallel, called like the model itself.

    `self(x, t)` and the model's own methods (`scaled_score`, `stick_score`, ...) all run
    through DDP's forward; attributes and `nn.Module` methods are the model's.
    """

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_Router(module), device_ids=ids)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.module, name)
        if inspect.ismethod(attr) and not hasattr(nn.Module, name):
            return functools.partial(self.ddp, _method=name)
        return attr

    def no_sync(self) -> AbstractContextManager:
        return self.ddp.no_sync()


def wrap(module: nn.Module, ranks: Dist, device: torch.device) -> nn.Module | DataParallelScore:
    """The model that training calls: DDP-wrapped under torchrun, else the model itself."""
    return DataParallelScore(module, device) if ranks.enabled else module


def no_sync(model: nn.Module | DataParallelScore, skip: bool) -> AbstractContextManager:
    """DDP's `no_sync()` when `skip` (a micro-batch before the last), else nothing."""
    if skip and isinstance(model, DataParallelScore):
        return model.no_sync()
    return contextlib.nullcontext()
