"""Which path an update takes, and the per-solve data every update of one solve shares."""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

from samplers.plans import memo
from scorekit import rng
from scorekit.processes import compute_dtype

# Seeds drawn from a torch.Generator stay below 2^62 (int64 seed tensors never overflow).
SEED_BOUND = 2**62


def triton_available() -> bool:
    """Whether triton can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def use_fused(x: Tensor, use_triton: bool | None = None) -> bool:
    """True when updates of `x` run as Triton kernels.

    None picks the kernels for CUDA tensors when triton is installed, PyTorch otherwise;
    True forces them (CPU tensors then need TRITON_INTERPRET=1, triton's interpreter).
    """
    if use_triton is None:
        return x.is_cuda and triton_available()
    if not use_triton:
        return False
    if not triton_available():
        raise RuntimeError("use_triton=True needs triton (pip install 'scorekit[gpu]')")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"use_triton=True on a {x.device} tensor needs triton's interpreter "
                         "(TRITON_INTERPRET=1 set before the kernels are imported)")
    return True


class Steps:
    """Per-step data of one fixed-step solve of x: (B, *D) on the float64 grid ts: (N+1,).

    table (N, k) float64: row i = step i's coefficients. The PyTorch path reads `rows` (Python
    floats in x's dtype, or `host_rows`); the kernel path reads `coef` on the device at the row
    of the device `cursor` = [row, Philox block], so its loops are CUDA-graph capturable. The
    read-only data derived from (table, ts, host_rows) for a device, dtype and batch is built
    once and reused (`plans.memo`); under CUDA-graph capture the Philox seeds are not set here
    but before each replay (`reset`).

    Noise on the kernel path follows `scorekit.rng.SampleStreams`: row r draws from Philox keyed
    by its own seed (`seeds[r]` of a SampleStreams generator, or one drawn per row from a
    torch.Generator), each draw taking ceil(D / 4) counter blocks, so it reproduces the PyTorch
    path's per-sample streams up to float rounding.
    """

    def __init__(self, table: Tensor, ts: Tensor, like: Tensor,
                 generator: torch.Generator | None = None, use_triton: bool | None = None,
                 host_rows: list[list[float]] | None = None, noise: bool = True):
        self.fused = use_fused(like, use_triton)
        self.noise = noise  # False: a deterministic solve, which draws no Philox seed
        self.count, self.batch, self.numel = table.shape[0], like.shape[0], like.numel()
        self.row_numel = self.numel // max(self.batch, 1)
        self.blocks = -(-self.row_numel // 4)  # Philox blocks per row per draw
        self.generator = generator
        key = ("steps", id(table), id(ts), id(host_rows), like.dtype, like.device, self.batch,
               self.numel, self.fused)
        self.rows, self.t_table, self.times, self.coef, self._moves = memo(
            key, lambda: self._data(table, ts, like, host_rows), pins=(table, ts, host_rows))
        self._buffers: dict[str, Tensor] = {}
        if self.fused:
            dev = like.device
            # No fill kernels here: under capture they would reset the seed at every replay.
            self.cursor = torch.empty(2, dtype=torch.int64, device=dev)
            self.seed = torch.empty(self.batch, dtype=torch.int64, device=dev)
            if not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
                self.reset(generator)

    def _data(self, table: Tensor, ts: Tensor, like: Tensor,
              host_rows: list[list[float]] | None) -> tuple:
        work = compute_dtype(like.dtype)  # half samples: times and coefficients in float32
        rows = table.to(work).tolist() if host_rows is None else host_rows
        t_table = ts.to(device=like.device, dtype=work)
        # One view per grid point, made once: indexing a tensor every step costs a dispatch.
        times = t_table[:, None].expand(-1, self.batch).unbind(0)
        if not self.fused:
            return rows, t_table, times, None, None
        coef = table.to(device=like.device, dtype=work).contiguous()
        # Cursor increments: next step (row and noise), noise only, row only.
        moves = torch.tensor([[1, self.blocks], [0, self.blocks], [1, 0]], dtype=torch.int64,
                             device=like.device)
        return rows, t_table, times, coef, moves

    def reset(self, generator: torch.Generator | rng.SampleStreams | None = None) -> None:
        """Kernel path: back to row 0 with the rows' Philox seeds: those of a SampleStreams
        generator (from its current block), or fresh ones drawn from a torch.Generator (none
        for a noise-free solve: its random streams are left untouched)."""
        if not self.fused:
            return
        self.cursor.zero_()
        if not self.noise:
            return
        streams = rng.streams_for(generator, self.batch)
        if streams is not None:
            start = streams.blocks
            if bool((start != start[0]).any()):
                raise ValueError("the kernel path needs every row's stream at the same block")
            self.seed.copy_(streams.seeds, non_blocking=True)
            self.cursor[1:].copy_(start[:1], non_blocking=True)
            return
        dev = self.cursor.device
        gen_dev = generator.device if generator is not None else dev
        seed = torch.randint(0, SEED_BOUND, (self.batch,), generator=generator, device=gen_dev,
                             dtype=torch.int64)
        self.seed.copy_(seed, non_blocking=True)

    def advance(self, noise: bool = True, row: bool = True) -> None:
        """Kernel path: move the cursor past this step's row and/or its noise draw."""
        if self.fused:
            self.cursor.add_(self._moves[0 if noise and row else (1 if noise else 2)])

    def time(self, i: int, ahead: int = 0) -> Tensor:
        """t of grid point i + ahead for every sample, (B,); the kernel path reads the row
        from the cursor (i is then ignored)."""
        if not self.fused:
            return self.times[i + ahead]
        return torch.index_select(self.t_table[ahead:], 0, self.cursor[:1]).expand(self.batch)

    def coefficient(self, col: int) -> Tensor:
        """Kernel path: coefficient `col` of the cursor's row, (1,) on the device."""
        return torch.index_select(self.coef[:, col], 0, self.cursor[:1])

    def draw(self, x: Tensor) -> Tensor:
        """PyTorch path: standard normal noise shaped like x from the solve's generator (a
        torch.Generator draws into a buffer reused every step; SampleStreams makes its own)."""
        if isinstance(self.generator, rng.SampleStreams):
            return self.generator.randn(x.shape, x.dtype).to(x.device)
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device,
                           out=self.buffer("z", x))

    def buffer(self, name: str, like: Tensor) -> Tensor:
        """A scratch tensor shaped like `like`, allocated once per solve."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = torch.empty_like(like, memory_format=torch.contiguous_format)
            self._buffers[name] = buf
        return buf

    def own(self, x: Tensor) -> Tensor:
        """A contiguous copy of the caller's x that the updates may overwrite in place."""
        return x.clone(memory_format=torch.contiguous_format)
