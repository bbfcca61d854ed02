"""Brownian increments with memory for adaptive SDE solvers ("rejection sampling with memory",
Rackauckas & Nie 2017).

Redrawing the noise after a rejected step conditions the path on the step being accepted; in
low dimension this biases GGF's output law by O(1), whatever the tolerance. Keeping every
revealed increment and splitting it with the Brownian bridge instead makes all attempts see
one Brownian path, so the tolerance alone controls the error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from scorekit.processes import per_sample


class Draw(NamedTuple):
    """An increment over [0, h] and what accepting it does to the stack (per row)."""

    dw: Tensor  # (b, *D)
    n_used: Tensor  # (b,) slots wholly inside [0, h]
    has_cut: Tensor  # (b,) a slot straddles h
    rest_len: Tensor  # (b,) f64, unused length of the straddling slot
    rest_w: Tensor  # (b, *D), its unused increment


class BrownianStack:
    """Per-sample stack of known future increments, in a ring buffer of `depth` slots: logical
    slot j of sample i (j = 0 is the nearest future interval) lives at (head_i + j) mod depth,
    with length L (0 = empty) and increment W (shape *D)."""

    def __init__(self, shape: tuple[int, ...], depth: int, dtype: torch.dtype,
                 device: torch.device):
        self.L = torch.zeros(shape[0], depth, dtype=torch.float64, device=device)
        self.W = torch.zeros(shape[0], depth, *shape[1:], dtype=dtype, device=device)
        self.head = torch.zeros(shape[0], dtype=torch.int64, device=device)
        self.merges = torch.zeros((), dtype=torch.int64, device=device)

    def draw(self, rows: Tensor, h: Tensor, xi: Tensor) -> Draw:
        """Increment over the next h (rows: (b,), h: (b,) f64, xi: (b, *D) standard normal)."""
        k = self.L.shape[1]
        order = (self.head[rows, None] + torch.arange(k, device=h.device)) % k
        L = torch.gather(self.L[rows], 1, order)  # logical order
        hk = h[:, None]
        end = L.cumsum(1)
        start = end - L
        # `used` is a prefix (end is non-decreasing); it may include empty slots, whose stale W
        # must not count, hence the L > 0 in the sum.
        used = end <= hk
        cut = (start < hk) & (end > hk)
        has_cut = cut.any(1)
        used_phys = torch.zeros_like(used).scatter_(1, order, used & (L > 0)).to(xi.dtype)
        W = self.W[rows]
        w_used = (W * per_sample(used_phys, W)).sum(1)
        w_cut = W[torch.arange(len(rows), device=W.device),
                  torch.gather(order, 1, cut.long().argmax(1, keepdim=True))[:, 0]]
        l_cut = (L * cut).sum(1)
        p = ((hk - start) * cut).sum(1)
        safe = torch.where(has_cut, l_cut, torch.ones_like(l_cut))
        # Bridge: W(p) | W(l) ~ N(p/l W(l), p (l - p)/l); past the stack's end, fresh noise.
        frac = torch.where(has_cut, p / safe, torch.zeros_like(p))
        var = torch.where(has_cut, p * (l_cut - p) / safe, h - (L * used).sum(1)).clamp_min(0)
        part = (per_sample(frac.to(xi.dtype), xi) * w_cut
                + per_sample(var.sqrt().to(xi.dtype), xi) * xi)
        return Draw(w_used + part, used.sum(1), has_cut, (l_cut - p).clamp_min(0), w_cut - part)

    def commit(self, rows: Tensor, accepted: Tensor, h: Tensor, d: Draw) -> None:
        """Pop what the attempt used; a rejected attempt pushes its increment back in front."""
        k = self.L.shape[1]
        L, W = self.L[rows], self.W
        head = self.head[rows]
        logical = (torch.arange(k, device=L.device) - head[:, None]) % k
        L = torch.where(logical < d.n_used[:, None], torch.zeros_like(L), L)
        head = (head + d.n_used) % k
        ar = torch.arange(len(rows), device=L.device)

        def put(slot: Tensor, mask: Tensor, length: Tensor, w: Tensor) -> None:
            L[ar, slot] = torch.where(mask, length, L[ar, slot])
            W[rows, slot] = torch.where(per_sample(mask, w), w, W[rows, slot])

        # The straddling slot becomes the new front, holding its unused remainder.
        put(head, d.has_cut, d.rest_len, d.rest_w)
        rej = ~accepted
        front, prev = (head - 1) % k, (head - 2) % k
        # Full ring: merge the farthest slot into the one before (their sum stays exact).
        over = rej & (L[ar, front] > 0)
        self.merges += over.sum()
        put(prev, over, L[ar, prev] + L[ar, front], W[rows, prev] + W[rows, front])
        put(front, rej, h, d.dw)
        self.head.index_copy_(0, rows, torch.where(rej, front, head))
        self.L.index_copy_(0, rows, L)
