"""The fused updates: one public function each, Triton kernel or PyTorch ops behind it.

The PyTorch path performs the samplers' operations in place; the EM update uses
multiply-adds (`add_(alpha=)`), so it rounds once per term where separate ops round twice
(differences of an ulp per step). `noise=` replaces the drawn noise on either path (used to
compare the two).
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.kernels.dispatch import Steps, use_fused
from samplers.steps import langevin_move, step_from_norms


def _kernels():
    # Imported on the kernel path only: `import samplers` must not load triton.
    from samplers.kernels import triton_ops

    return triton_ops


def _detached(s: Tensor, x: Tensor) -> Tensor:
    # A score that returns (a view of) its input would see x change under it below.
    if s.data_ptr() == x.data_ptr():
        return s.clone()
    return s


def em_update(x: Tensor, s: Tensor, steps: Steps, i: int, col: int = 0,
              noise: Tensor | None = None, mean: Tensor | None = None) -> Tensor:
    """x <- k1 x + k2 s + k3 z in place, (k1, k2, k3) = columns col..col+2 of step i's row.

    x, s, noise, mean: (B, *D). `mean`, when given, receives k1 x + k2 s (the noise-free
    update). The kernel path draws z from Philox at the cursor's offset and advances the
    cursor by one step. Returns x.
    """
    if steps.fused:
        _kernels().em(x, s, steps, col, noise, mean)
        steps.advance()
        return x
    k1, k2, k3 = steps.rows[i][col:col + 3]
    s = _detached(s, x)
    # Three in-place ops, no temporaries: add(alpha=) is one fused multiply-add per element.
    x.mul_(k1).add_(s, alpha=k2)
    if mean is not None:
        mean.copy_(x)
    return x.add_(steps.draw(x) if noise is None else noise, alpha=k3)


def langevin_update(x: Tensor, s: Tensor, steps: Steps, i: int, col: int, snr: float,
                    snr_norm: str, max_step: float | None = None,
                    noise: Tensor | None = None) -> Tensor:
    """Langevin corrector x <- x + e s + sqrt(2 e) z in place, e = a * 2 (snr |z|/|s|)^2 per
    sample (capped at `max_step`), a = column `col` of step i's row; x, s: (B, *D).

    The kernel path computes both norms in one pass, regenerates the same Philox noise for the
    update and advances the cursor's noise offset only (the step's row stays). Returns x.
    """
    if steps.fused:
        ops = _kernels()
        norms = ops.row_sq_norms(s, steps, noise)
        e = steps.coefficient(col) * step_from_norms(norms[:, 0].sqrt(), norms[:, 1].sqrt(),
                                                      snr, snr_norm, 1, x.dtype)
        if max_step is not None:
            e = e.clamp(max=max_step)
        ops.langevin(x, s, e, steps, noise)
        steps.advance(row=False)
        return x
    s = _detached(s, x)
    z = steps.draw(x) if noise is None else noise
    return langevin_move(x, s, z, steps.rows[i][col], snr, snr_norm, max_step)


def heun_predict(xs: Tensor, s1: Tensor, steps: Steps, i: int) -> tuple[Tensor, Tensor]:
    """First Heun stage in EDM's rescaled variables: d1 = -sigma_i s1 and the next score
    input alpha_{i+1} (xs + ds d1). Row i: (-sigma_i, ds, alpha_{i+1}, -sigma_{i+1}, ds/2).
    Returns (d1, x_in), both (B, *D)."""
    if steps.fused:
        return _kernels().heun_predict(xs, s1, steps)
    neg_sigma, ds, alpha_next = steps.rows[i][:3]
    d1 = neg_sigma * s1
    return d1, (xs + ds * d1) * alpha_next


def heun_correct(xs: Tensor, d1: Tensor, s2: Tensor, steps: Steps, i: int) -> Tensor:
    """Second Heun stage: xs <- xs + ds/2 (d1 - sigma_{i+1} s2) in place; returns the next
    score input alpha_{i+1} xs, (B, *D). The kernel path advances the cursor's row."""
    if steps.fused:
        x_in = _kernels().heun_correct(xs, d1, s2, steps)
        steps.advance(noise=False)
        return x_in
    _, _, alpha_next, neg_sigma_next, half_ds = steps.rows[i]
    d2 = neg_sigma_next * s2
    xs.add_(half_ds * (d1 + d2))
    return xs * alpha_next


def ggf_error(x_heun: Tensor, x_em: Tensor, x_prev: Tensor, abs_tol: float, rel_tol: float,
              use_prev: bool = True, use_triton: bool | None = None) -> Tensor:
    """Per-sample RMS of (x_heun - x_em) / delta with delta = max(abs_tol, rel_tol *
    max(|x_em|, |x_prev|)) (|x_em| alone without use_prev); inputs (b, *D) -> (b,).
    A step is accepted where the result is <= 1."""
    if use_fused(x_heun, use_triton):
        return _kernels().ggf_error(x_heun, x_em, x_prev, abs_tol, rel_tol, use_prev)
    scale = torch.maximum(x_em.abs(), x_prev.abs()) if use_prev else x_em.abs()
    delta = (rel_tol * scale).clamp_min(abs_tol)
    return ((x_heun - x_em) / delta).flatten(1).pow(2).mean(1).sqrt()
