"""Triton kernels of the fused updates and their launchers (imported on the kernel path only).

Every kernel reads its coefficients from the device table at the cursor's row and its noise
from Philox at (row seed, cursor block + column // 4), so one launch is one pass over the state
and a loop of launches is CUDA-graph capturable. Arithmetic runs in float32 (float64 for
float64 storage); stores cast back to the storage dtype.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from samplers.kernels.dispatch import Steps
from scorekit.processes import compute_dtype

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _noise(z_ptr, idx, mask, seed_ptr, cursor_ptr, d, HAS_NOISE: tl.constexpr):
    # Element j of row r: slot j % 4 of Philox block (cursor + j // 4) under seed r, turned
    # into a normal as scorekit.rng.SampleStreams does (Box-Muller on word pairs (0,1), (2,3)).
    if HAS_NOISE:
        z = tl.load(z_ptr + idx, mask=mask, other=0.0)
    else:
        row, j = idx // d, idx % d
        seed = tl.load(seed_ptr + row, mask=mask, other=0)
        w0, w1, w2, w3 = tl.randint4x(seed, tl.load(cursor_ptr + 1) + j // 4)
        slot = j % 4
        wa = tl.where(slot < 2, w0, w2).to(tl.float32)
        wb = tl.where(slot < 2, w1, w3).to(tl.float32)
        r = tl.sqrt(-2.0 * tl.log((wa + 0.5) * 2.3283064365386963e-10))
        th = 6.283185307179586 * ((wb + 0.5) * 2.3283064365386963e-10)
        z = tl.where(slot % 2 == 0, r * tl.cos(th), r * tl.sin(th))
    return z


@triton.jit
def _block(n, BLOCK: tl.constexpr):
    # Flat indices and mask of this program's block of an n-element array.
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return idx, idx < n


@triton.jit
def _rows(ROWS: tl.constexpr):
    # The rows this program reduces over.
    return tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)


@triton.jit
def _row_tile(rows, j, b, d, COLS: tl.constexpr):
    # Flat indices and mask of columns j..j+COLS of the given rows of a (b, d) array.
    cols = j + tl.arange(0, COLS)
    return rows[:, None] * d + cols[None, :], (rows < b)[:, None] & (cols < d)[None, :]


@triton.jit
def _em_kernel(x_ptr, s_ptr, z_ptr, mean_ptr, coef_ptr, cursor_ptr, seed_ptr, n, d, ncol,
               COL: tl.constexpr, HAS_NOISE: tl.constexpr, WRITE_MEAN: tl.constexpr,
               BLOCK: tl.constexpr):
    idx, mask = _block(n, BLOCK)
    row = coef_ptr + tl.load(cursor_ptr) * ncol + COL
    k1, k2, k3 = tl.load(row), tl.load(row + 1), tl.load(row + 2)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(k1.dtype)
    s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(k1.dtype)
    z = _noise(z_ptr, idx, mask, seed_ptr, cursor_ptr, d, HAS_NOISE).to(k1.dtype)
    mean = k1 * x + k2 * s
    tl.store(x_ptr + idx, (mean + k3 * z).to(x_ptr.dtype.element_ty), mask=mask)
    if WRITE_MEAN:
        tl.store(mean_ptr + idx, mean.to(mean_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_sq_norms_kernel(s_ptr, z_ptr, out_ptr, cursor_ptr, seed_ptr, b, d,
                         HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    rows = _rows(ROWS)
    acc_s = tl.zeros([ROWS, COLS], dtype=out_ptr.dtype.element_ty)
    acc_z = tl.zeros([ROWS, COLS], dtype=out_ptr.dtype.element_ty)
    for j in range(0, d, COLS):
        idx, mask = _row_tile(rows, j, b, d, COLS)
        s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(acc_s.dtype)
        z = _noise(z_ptr, idx, mask, seed_ptr, cursor_ptr, d, HAS_NOISE).to(acc_z.dtype)
        acc_s += s * s
        acc_z += tl.where(mask, z * z, 0.0)
    tl.store(out_ptr + 2 * rows, tl.sum(acc_s, axis=1), mask=rows < b)
    tl.store(out_ptr + 2 * rows + 1, tl.sum(acc_z, axis=1), mask=rows < b)


@triton.jit
def _langevin_kernel(x_ptr, s_ptr, z_ptr, e_ptr, cursor_ptr, seed_ptr, n, d,
                     HAS_NOISE: tl.constexpr, BLOCK: tl.constexpr):
    idx, mask = _block(n, BLOCK)
    e = tl.load(e_ptr + idx // d, mask=mask, other=0.0)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(e.dtype)
    s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(e.dtype)
    z = _noise(z_ptr, idx, mask, seed_ptr, cursor_ptr, d, HAS_NOISE).to(e.dtype)
    out = x + e * s + tl.sqrt(2.0 * e) * z
    tl.store(x_ptr + idx, out.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _heun_predict_kernel(xs_ptr, s_ptr, d_ptr, xin_ptr, coef_ptr, cursor_ptr, n, ncol,
                         BLOCK: tl.constexpr):
    idx, mask = _block(n, BLOCK)
    row = coef_ptr + tl.load(cursor_ptr) * ncol
    neg_sigma, ds, alpha_next = tl.load(row), tl.load(row + 1), tl.load(row + 2)
    xs = tl.load(xs_ptr + idx, mask=mask, other=0.0).to(ds.dtype)
    d = neg_sigma * tl.load(s_ptr + idx, mask=mask, other=0.0).to(ds.dtype)
    tl.store(d_ptr + idx, d.to(d_ptr.dtype.element_ty), mask=mask)
    tl.store(xin_ptr + idx, ((xs + ds * d) * alpha_next).to(xin_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _heun_correct_kernel(xs_ptr, d_ptr, s_ptr, xin_ptr, coef_ptr, cursor_ptr, n, ncol,
                         BLOCK: tl.constexpr):
    idx, mask = _block(n, BLOCK)
    row = coef_ptr + tl.load(cursor_ptr) * ncol
    alpha_next, neg_sigma_next, half_ds = tl.load(row + 2), tl.load(row + 3), tl.load(row + 4)
    xs = tl.load(xs_ptr + idx, mask=mask, other=0.0).to(half_ds.dtype)
    d1 = tl.load(d_ptr + idx, mask=mask, other=0.0).to(half_ds.dtype)
    d2 = neg_sigma_next * tl.load(s_ptr + idx, mask=mask, other=0.0).to(half_ds.dtype)
    xs = xs + half_ds * (d1 + d2)
    tl.store(xs_ptr + idx, xs.to(xs_ptr.dtype.element_ty), mask=mask)
    tl.store(xin_ptr + idx, (xs * alpha_next).to(xin_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ggf_error_kernel(xh_ptr, xe_ptr, xp_ptr, out_ptr, tol_ptr, b, d,
                      USE_PREV: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    rows = _rows(ROWS)
    abs_tol, rel_tol = tl.load(tol_ptr), tl.load(tol_ptr + 1)
    acc = tl.zeros([ROWS, COLS], dtype=out_ptr.dtype.element_ty)
    for j in range(0, d, COLS):
        idx, mask = _row_tile(rows, j, b, d, COLS)
        xh = tl.load(xh_ptr + idx, mask=mask, other=0.0).to(acc.dtype)
        xe = tl.load(xe_ptr + idx, mask=mask, other=0.0).to(acc.dtype)
        scale = tl.abs(xe)
        if USE_PREV:
            scale = tl.maximum(scale, tl.abs(tl.load(xp_ptr + idx, mask=mask, other=0.0)
                                             .to(acc.dtype)))
        e = (xh - xe) / tl.maximum(rel_tol * scale, abs_tol)
        acc += tl.where(mask, e * e, 0.0)
    tl.store(out_ptr + rows, tl.sqrt(tl.sum(acc, axis=1) / d), mask=rows < b)


@functools.lru_cache(maxsize=64)
def tolerances(abs_tol: float, rel_tol: float, dtype: torch.dtype, device: torch.device
               ) -> Tensor:
    """(abs_tol, rel_tol) as a device tensor, copied once per setting (a Python float argument
    would reach the kernel as float32; a copy per step would be a pageable host transfer).
    Never written to."""
    return torch.tensor([abs_tol, rel_tol], dtype=dtype).to(device)


def _tiles(b: int, d: int) -> tuple[tuple[int], int, int]:
    """(grid, ROWS, COLS) for row reductions: tiles of ~BLOCK elements, several short rows
    per program (one program per 2-element row would leave the GPU idle)."""
    cols = min(BLOCK, triton.next_power_of_2(d))
    rows = max(1, BLOCK // cols)
    return (triton.cdiv(b, rows),), rows, cols


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _flat(t: Tensor | None, like: Tensor) -> Tensor:
    # Kernels index flat contiguous memory; a dummy pointer stands in for an absent tensor.
    return like if t is None else t.contiguous()


def em(x: Tensor, s: Tensor, steps: Steps, col: int, noise: Tensor | None,
       mean: Tensor | None) -> None:
    """Launch the EM/ancestral update on contiguous x (in place)."""
    n = x.numel()
    _em_kernel[_grid(n)](x, _flat(s, x), _flat(noise, x), _flat(mean, x), steps.coef,
                         steps.cursor, steps.seed, n, steps.row_numel, steps.coef.shape[1],
                         COL=col,
                         HAS_NOISE=noise is not None, WRITE_MEAN=mean is not None,
                         BLOCK=BLOCK, num_warps=NUM_WARPS)


def row_sq_norms(s: Tensor, steps: Steps, noise: Tensor | None) -> Tensor:
    """(B, 2): per sample sum of s^2 and of z^2 (z: the noise the next update draws)."""
    b, d = s.shape[0], s.numel() // s.shape[0]
    out = torch.empty(b, 2, dtype=compute_dtype(s.dtype), device=s.device)
    s = s.contiguous()
    grid, rows, cols = _tiles(b, d)
    _row_sq_norms_kernel[grid](s, _flat(noise, s), out, steps.cursor, steps.seed, b, d,
                               HAS_NOISE=noise is not None, ROWS=rows, COLS=cols,
                               num_warps=NUM_WARPS)
    return out


def langevin(x: Tensor, s: Tensor, e: Tensor, steps: Steps, noise: Tensor | None) -> None:
    """Launch x <- x + e s + sqrt(2 e) z (in place), e: (B,) per-sample step sizes."""
    n = x.numel()
    e = e.to(compute_dtype(x.dtype)).contiguous()
    _langevin_kernel[_grid(n)](x, _flat(s, x), _flat(noise, x), e, steps.cursor, steps.seed,
                               n, n // x.shape[0], HAS_NOISE=noise is not None, BLOCK=BLOCK,
                               num_warps=NUM_WARPS)


def heun_predict(xs: Tensor, s1: Tensor, steps: Steps) -> tuple[Tensor, Tensor]:
    """Launch the first Heun stage; returns (d1, x_in) in the solve's scratch buffers."""
    n = xs.numel()
    d1, x_in = steps.buffer("heun_d1", xs), steps.buffer("heun_in", xs)
    _heun_predict_kernel[_grid(n)](xs, _flat(s1, xs), d1, x_in, steps.coef, steps.cursor, n,
                                   steps.coef.shape[1], BLOCK=BLOCK, num_warps=NUM_WARPS)
    return d1, x_in


def heun_correct(xs: Tensor, d1: Tensor, s2: Tensor, steps: Steps) -> Tensor:
    """Launch the second Heun stage (xs in place); returns the next score input."""
    n = xs.numel()
    x_in = steps.buffer("heun_in", xs)
    _heun_correct_kernel[_grid(n)](xs, d1, _flat(s2, xs), x_in, steps.coef, steps.cursor, n,
                                   steps.coef.shape[1], BLOCK=BLOCK, num_warps=NUM_WARPS)
    return x_in


def ggf_error(x_heun: Tensor, x_em: Tensor, x_prev: Tensor, abs_tol: float, rel_tol: float,
              use_prev: bool) -> Tensor:
    """Launch the per-sample scaled RMS error of an embedded Euler/Heun pair, (b,)."""
    b, dtype = x_heun.shape[0], compute_dtype(x_heun.dtype)
    out = torch.empty(b, dtype=dtype, device=x_heun.device)
    tol = tolerances(abs_tol, rel_tol, dtype, x_heun.device)
    x_heun = x_heun.contiguous()
    d = x_heun.numel() // b
    grid, rows, cols = _tiles(b, d)
    _ggf_error_kernel[grid](x_heun, _flat(x_em, x_heun), _flat(x_prev, x_heun), out, tol, b, d,
                            USE_PREV=use_prev, ROWS=rows, COLS=cols, num_warps=NUM_WARPS)
    return out.to(x_heun.dtype)
