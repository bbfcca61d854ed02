"""Validation of what users pass to the sampling entry points (shapes, dtypes, devices, starts),
with messages that name the bad value."""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from scorekit import rng

__all__ = ["check_shape", "check_device_dtype", "check_x_init", "check_batch"]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` as a tuple of ints (n, *D) with positive sizes, else ValueError naming it."""
    try:
        if isinstance(shape, bool) or any(isinstance(s, bool) for s in shape):
            raise TypeError
        dims = tuple(operator.index(s) for s in shape)  # ints, numpy / torch integers
    except TypeError:
        raise ValueError(f"shape must be (n, *D) with positive integer sizes, got "
                         f"{shape!r}") from None
    if len(dims) < 2 or any(s < 1 for s in dims):
        raise ValueError(f"shape must be (n, *D) with positive integer sizes, got {shape!r}")
    return dims


def check_device_dtype(generator: torch.Generator | None, device: torch.device | str | None,
                       dtype: torch.dtype) -> torch.device | str | None:
    """Validate the sampling dtype and that `generator` lives on `device`; returns the device
    to sample on (the generator's when `device` is None)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.float32), "
                         f"got {dtype!r}")
    if generator is None:
        return device
    if device is None:
        return generator.device
    if not _same_device(torch.device(device), generator.device):
        raise ValueError(f"generator is on {generator.device} but device={device!s}; pass a "
                         f"generator created on the sampling device")
    return device


def check_x_init(x_init: Tensor, shape: tuple[int, ...], device: torch.device | str | None,
                 dtype: torch.dtype) -> Tensor:
    """A user-given start point: right shape, on `device` (never moved), finite; cast to dtype."""
    if not isinstance(x_init, Tensor):
        raise TypeError(f"x_init must be a tensor, got {type(x_init).__name__}")
    if tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
    if device is not None and not _same_device(torch.device(device), x_init.device):
        raise ValueError(f"x_init is on {x_init.device} but device={device!s}; samplers do not "
                         f"move data between devices")
    x = x_init.to(dtype=dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(f"x_init has {int(finite.logical_not().sum())} non-finite entries "
                         f"(after the cast to {dtype})")
    return x


def check_batch(x: Tensor, name: str = "x") -> None:
    """User data x: a floating tensor (B, *D), B >= 1 and every row finite; else an error
    naming the bad value (the non-finite rows by count and first index)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor (B, *D), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (e.g. torch.float32), got {x.dtype}")
    if x.dim() < 2 or any(s < 1 for s in x.shape):
        raise ValueError(f"{name} must have shape (B, *D) with positive sizes, got "
                         f"{tuple(x.shape)}")
    count, first = nonfinite_rows(x)
    if count:
        raise ValueError(f"{name} has {count} non-finite rows of {x.shape[0]} "
                         f"(first: row {first})")


def nonfinite_rows(v: Tensor) -> tuple[int, int]:
    """(count, first index) of the rows of v: (B, *D) or (B,) holding NaN/inf; (0, -1) if none."""
    rows = torch.isfinite(v).reshape(v.shape[0], -1).all(1).logical_not().nonzero().flatten()
    return rows.numel(), int(rows[0]) if rows.numel() else -1


def per_sample_streams(generator, seed: int | None, seeds: torch.Tensor | None, n: int,
                       device: torch.device):
    """The generator a sampler draws from: per-sample streams for `seed` / `seeds`, else
    `generator` (a torch.Generator, a SampleStreams of n rows, or None)."""
    given = [k for k, v in (("generator", generator), ("seed", seed), ("seeds", seeds))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass one of generator / seed / seeds, got {' and '.join(given)}")
    if seeds is not None:
        if not isinstance(seeds, torch.Tensor) or seeds.shape != (n,):
            got = tuple(seeds.shape) if isinstance(seeds, torch.Tensor) else type(seeds).__name__
            raise ValueError(f"seeds must be a ({n},) integer tensor, one per sample; got {got}")
        return rng.SampleStreams(seeds, device=device)
    if seed is not None:
        return rng.SampleStreams(rng.check_seed(seed), n, device=device)
    rng.streams_for(generator, n)  # a SampleStreams generator must have one row per sample
    return generator
