"""Per-sample random streams: sample i draws its noise from its own counter-based stream.

A `torch.Generator` hands out one stream for the whole batch, so row i of a draw depends on
the batch size and on how the work was split. `SampleStreams(seeds)` gives row i the stream
of `seeds[i]`: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2,
3") keyed by the seed, with the row's own block counter. Row i's k-th draw is then the same
numbers whatever the batch, its split over shards or ranks, or the device; the fused Triton
kernels (`samplers.kernels`) compute the same integers from the same (seed, counter) with
`tl.randint4x`, so CPU, CUDA eager and CUDA fused draws agree up to float rounding.

Layout of a row's stream: counter block b gives four 32-bit words (w0, w1, w2, w3). Normals
come in Box–Muller pairs, four per block: (w0, w1) -> r cos th, r sin th and (w2, w3) likewise,
with u = (w + 1/2) 2^-32 in (0, 1), r = sqrt(-2 log u_a), th = 2 pi u_b. A draw of m values
per row takes ceil(m / 4) whole blocks (normals) or ceil(m / 2) (uniforms, 53 bits from two
words), and always starts at a fresh block.

`randn` / `rand` below take either kind of generator, so a sampler written against them
accepts both.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SampleStreams", "philox4x32", "randn", "rand", "population_generator",
           "streams_for", "MAX_SEED"]

MASK32 = 0xFFFFFFFF
# Philox4x32 constants: round multipliers and Weyl key increments.
_MUL_A, _MUL_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MAX_SEED = 2**63 - 1


def _mulhilo_split(mult: int, c: Tensor) -> tuple[Tensor, Tensor]:
    # mult * c for 32-bit operands without leaving int64: split mult into 16-bit halves.
    p_lo = c * (mult & 0xFFFF)
    p_hi = c * (mult >> 16)
    mid = p_lo + ((p_hi & 0xFFFF) << 16)
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def _mulhilo_wrap(mult: int, c: Tensor) -> tuple[Tensor, Tensor]:
    # One int64 product, which wraps modulo 2^64 on every backend checked at import.
    p = c * mult
    return (p >> 32) & MASK32, p & MASK32


def _rounds(k0: Tensor, k1: Tensor, c: list[Tensor], mulhilo) -> list[Tensor]:
    c0, c1, c2, c3 = c
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + _KEY_A) & MASK32
            k1 = (k1 + _KEY_B) & MASK32
        hi_b, lo_b = mulhilo(_MUL_B, c2)
        hi_a, lo_a = mulhilo(_MUL_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
    return [c0, c1, c2, c3]


def _wrap_ok() -> bool:
    z = torch.zeros(1, dtype=torch.int64)
    f = torch.full((1,), MASK32, dtype=torch.int64)
    for k, c in ((z, [z, z, z, z]), (f, [f, f, f, f])):
        if [int(v) for v in _rounds(k, k, c, _mulhilo_wrap)] != \
                [int(v) for v in _rounds(k, k, c, _mulhilo_split)]:
            return False
    return True


_MULHILO = _mulhilo_wrap if _wrap_ok() else _mulhilo_split


def philox4x32(seed: Tensor, counter: Tensor) -> list[Tensor]:
    """Philox4x32-10 of the 64-bit `counter` (c0 = low word, c1 = high word, c2 = c3 = 0) under
    the key (low word, high word) of `seed` (int64 >= 0); broadcasts; four int64 tensors of
    32-bit words. Matches triton's `tl.randint4x(seed, counter)`."""
    seed, counter = torch.broadcast_tensors(seed.to(torch.int64), counter.to(torch.int64))
    zero = torch.zeros_like(counter)
    return _rounds(seed & MASK32, (seed >> 32) & MASK32,
                   [counter & MASK32, (counter >> 32) & MASK32, zero, zero], _MULHILO)


def _uniform32(w: Tensor) -> Tensor:
    return (w.to(torch.float64) + 0.5) * 2.0**-32


class SampleStreams:
    """One Philox stream per sample: row i of every draw comes from `seeds[i]`.

    seeds: (B,) non-negative integers (or an int s with n: seeds s, s+1, ..., s+n-1). Each row
    keeps its own block counter, so a draw restricted to some rows (`rows=`) advances only
    those rows' streams. Draws must have B (or len(rows)) leading rows.
    """

    def __init__(self, seeds: Tensor | int, n: int | None = None,
                 device: torch.device | str | None = None):
        if isinstance(seeds, Tensor):
            if seeds.dim() != 1 or seeds.dtype.is_floating_point or seeds.dtype == torch.bool:
                raise ValueError(f"seeds must be a 1-D integer tensor, got {seeds.dtype} of "
                                 f"shape {tuple(seeds.shape)}")
            seeds = seeds.to(device=device if device is not None else seeds.device,
                             dtype=torch.int64)
        else:
            seed = check_seed(seeds)
            if n is None:
                raise ValueError("SampleStreams(seed, n): n (the number of samples) is needed "
                                 "with an integer seed")
            if seed + n - 1 > MAX_SEED:
                raise ValueError(f"seeds {seed}..{seed + n - 1} exceed {MAX_SEED}")
            seeds = torch.arange(n, dtype=torch.int64, device=device) + seed
        if seeds.numel() and int(seeds.min()) < 0:
            raise ValueError("seeds must be >= 0")
        self.seeds = seeds
        self.blocks = torch.zeros_like(seeds)  # each row's next unused counter block

    @property
    def device(self) -> torch.device:
        return self.seeds.device

    def __len__(self) -> int:
        return self.seeds.numel()

    def __repr__(self) -> str:
        return f"SampleStreams(n={len(self)}, device={self.device})"

    def _words(self, shape: tuple[int, ...], per_block: int, rows: Tensor | None
               ) -> tuple[list[Tensor], int]:
        shape = tuple(int(s) for s in shape)
        want = len(self) if rows is None else rows.numel()
        if not shape or shape[0] != want:
            raise ValueError(f"a per-sample draw needs {want} leading rows (one per stream), "
                             f"got shape {shape}")
        m = math.prod(shape[1:])
        nblocks = -(-m // per_block)
        seeds = self.seeds if rows is None else self.seeds[rows]
        start = self.blocks if rows is None else self.blocks[rows]
        counter = start[:, None] + torch.arange(nblocks, dtype=torch.int64, device=self.device)
        words = philox4x32(seeds[:, None], counter)
        if rows is None:
            self.blocks += nblocks
        else:
            self.blocks.index_add_(0, rows, torch.full_like(rows, nblocks, dtype=torch.int64))
        return words, m

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
              rows: Tensor | None = None) -> Tensor:
        """Standard normals of `shape` (leading dim: one row per stream, or per `rows`)."""
        (w0, w1, w2, w3), m = self._words(shape, 4, rows)
        r_a = torch.sqrt(-2.0 * torch.log(_uniform32(w0)))
        r_b = torch.sqrt(-2.0 * torch.log(_uniform32(w2)))
        th_a, th_b = 2 * math.pi * _uniform32(w1), 2 * math.pi * _uniform32(w3)
        z = torch.stack([r_a * torch.cos(th_a), r_a * torch.sin(th_a),
                         r_b * torch.cos(th_b), r_b * torch.sin(th_b)], dim=-1)
        return z.reshape(z.shape[0], -1)[:, :m].to(dtype).reshape(shape)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
             rows: Tensor | None = None) -> Tensor:
        """Uniforms on (0, 1) of `shape`: 53 random bits each, from two words."""
        (w0, w1, w2, w3), m = self._words(shape, 2, rows)
        u = torch.stack([(w0 >> 5) * 2**26 + (w1 >> 6), (w2 >> 5) * 2**26 + (w3 >> 6)], -1)
        u = (u.to(torch.float64) + 0.5) * 2.0**-53
        u = u.reshape(u.shape[0], -1)[:, :m].to(dtype)
        # A float32 draw may round up to 1; keep the open interval.
        u = u.clamp_(max=1.0 - torch.finfo(dtype).eps / 2)
        return u.reshape(shape)


def check_seed(seed: object, name: str = "seed") -> int:
    """`seed` as an int in [0, 2^63): a clear error for floats, bools, strings and negatives."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        if isinstance(seed, Tensor) and seed.dim() == 0 and not seed.dtype.is_floating_point:
            seed = int(seed)
        else:
            raise ValueError(f"{name} must be an integer >= 0, got {seed!r} "
                             f"({type(seed).__name__})")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2^63), got {seed}")
    return seed


def _draw(kind: str, shape: int | tuple[int, ...],
          generator: torch.Generator | SampleStreams | None, dtype: torch.dtype,
          device: torch.device | str | None) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if isinstance(generator, SampleStreams):
        return getattr(generator, kind)(shape, dtype).to(device)
    return getattr(torch, kind)(shape, generator=generator, dtype=dtype, device=device)


def randn(shape: int | tuple[int, ...], generator: torch.Generator | SampleStreams | None,
          dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """Standard normals from either kind of generator (SampleStreams: one row per stream)."""
    return _draw("randn", shape, generator, dtype, device)


def rand(shape: int | tuple[int, ...], generator: torch.Generator | SampleStreams | None,
         dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """Uniforms on [0, 1) (torch.Generator) or (0, 1) (SampleStreams)."""
    return _draw("rand", shape, generator, dtype, device)


def population_generator(generator: torch.Generator | SampleStreams | None
                         ) -> torch.Generator | None:
    """A torch.Generator for draws that belong to the whole batch (resampling a particle
    population): the generator itself, or for SampleStreams one seeded from its seeds (so
    a population's draws depend on its members' seeds and on nothing else)."""
    if not isinstance(generator, SampleStreams):
        return generator
    words = philox4x32(generator.seeds, torch.full_like(generator.seeds, -1))
    mixed = int(((words[0] << 31) ^ words[1]).sum() & MAX_SEED)
    return torch.Generator(generator.device).manual_seed(mixed)


def streams_for(generator: torch.Generator | SampleStreams | None, n: int
                ) -> SampleStreams | None:
    """`generator` when it holds n streams; None for a torch.Generator or None."""
    if isinstance(generator, SampleStreams):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} per-sample seeds for {n} samples")
        return generator
    return None
