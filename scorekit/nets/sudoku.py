"""Score network for 9x9 Sudoku boards under Dirichlet diffusion: a transformer over the 81 cells.

Output parameterisation: the posterior P(x0_i = c | x_t) of every cell. Because the noising acts
on each cell independently, the exact score of cell i is sum_c P(x0_i = c | x_t) grad log
q(x_t,i | e_c), and P(x0_i = c | x_t) ∝ q(x_t,i | e_c) P(x0_i = c | other cells). The network
therefore adds logits to each cell's exact log-likelihoods `log q(x_t,i | e_c)` (from the
process tables): with zero output it is the exact score of independent uniform cells, and it only
has to learn what the other cells say. Cells get row / column / box embeddings; the blocks are
pre-norm transformer blocks whose token mixing is either attention with learned per-head biases
for the Sudoku relations (same row, column, box; `mixer="attention"`) or exact message passing
along the 27 units (`mixer="units"`: each cell receives the mean of its row, column and box
peers' projected features), which costs O(81) instead of O(81^2) per channel.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from scorekit.data.sudoku import UNITS
from scorekit.processes.dirichlet import JacobiDiffusion, gv_to_gx

MIXERS = ("attention", "units")
_EVIDENCE_FLOOR = -20.0  # log-probability floor of the evidence features (keeps inputs O(1))


def _relations() -> Tensor:
    """(4, 81, 81) indicators: same cell, same row, same column, same box."""
    rel = torch.zeros(4, 81, 81)
    rel[0] = torch.eye(81)
    for kind, units in ((1, UNITS[:9]), (2, UNITS[9:18]), (3, UNITS[18:])):
        for unit in units:
            idx = torch.tensor(unit)
            rel[kind, idx[:, None], idx[None, :]] = 1.0
    return rel


class _Block(nn.Module):
    """Pre-norm transformer block; attention logits get a relation bias (H, 81, 81)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))
        self.time = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor, bias: Tensor) -> Tensor:
        h = h + self.time(temb)[:, None]
        q, k, v = rearrange(self.qkv(self.norm1(h)), "b n (s h d) -> s b h n d", s=3,
                            h=self.heads)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        h = h + self.proj(rearrange(att, "b h n d -> b n (h d)"))
        return h + self.mlp(self.norm2(h))


def _unit_sums(u: Tensor) -> Tensor:
    """Sum over each cell's row, column and box, minus the cell itself: (B, 81, 3, W) from
    u (B, 81, 3, W) whose three slices feed the three unit kinds."""
    g = rearrange(u, "b (r c) k w -> b r c k w", r=9)
    rows = g[..., 0, :].sum(2, keepdim=True).expand(-1, -1, 9, -1)
    cols = g[..., 1, :].sum(1, keepdim=True).expand(-1, 9, -1, -1)
    box = rearrange(g[..., 2, :], "b (R i) (C j) w -> b R C (i j) w", i=3, j=3).sum(3)
    boxes = box.repeat_interleave(3, 1).repeat_interleave(3, 2)
    total = rearrange(torch.stack([rows, cols, boxes], 3), "b r c k w -> b (r c) k w")
    return total - u


class _UnitBlock(nn.Module):
    """Pre-norm block whose token mixing is exact message passing along the Sudoku units:
    each cell receives the sums of projected features of its row, column and box peers."""

    def __init__(self, width: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.inp = nn.Linear(width, 3 * width)
        self.out = nn.Linear(3 * width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))
        self.time = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor, bias: Tensor | None = None) -> Tensor:
        h = h + self.time(temb)[:, None]
        u = rearrange(self.inp(self.norm1(h)), "b n (k w) -> b n k w", k=3)
        msg = F.gelu(_unit_sums(u) / 8)   # 8 peers per unit: a mean
        h = h + self.out(rearrange(msg, "b n k w -> b n (k w)"))
        return h + self.mlp(self.norm2(h))


class SudokuTransformer(nn.Module):
    """`model(x, t, known=None)` -> tangent x-score (B, 81, 9); x: (B, 81, 9) on the simplex.

    `known` (B, 81) bool marks givens (their x is the one-hot digit); `posterior_logits` and
    `stick_score` expose the posterior and the stick-coordinate score.
    """

    def __init__(self, jacobi: JacobiDiffusion, width: int = 128, depth: int = 6,
                 heads: int = 8, mlp_ratio: int = 2, time_features: int = 32,
                 mixer: str = "attention"):
        super().__init__()
        if not isinstance(jacobi, JacobiDiffusion) or jacobi.K != 9:
            raise ValueError(f"SudokuTransformer needs a JacobiDiffusion with 9 categories, got "
                             f"{jacobi!r}")
        for name, val in (("width", width), ("depth", depth), ("heads", heads),
                          ("mlp_ratio", mlp_ratio), ("time_features", time_features)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {val!r}")
        if width % heads:
            raise ValueError(f"width={width} must be a multiple of heads={heads}")
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; valid: {list(MIXERS)}")
        self.mixer = mixer
        self.jacobi = jacobi
        self.register_buffer("relations", _relations(), persistent=False)
        # Head h starts attending to one constraint group (row, column, box in turn).
        init = torch.zeros(depth if mixer == "attention" else 0, heads, 4)
        init[:, torch.arange(heads), torch.arange(heads) % 3 + 1] = 3.0
        self.rel_bias = nn.Parameter(init)
        cell = torch.arange(81)
        self.register_buffer("cell_rcb", torch.stack([cell // 9, cell % 9,
                                                      3 * (cell // 27) + (cell % 9) // 3]),
                             persistent=False)
        self.pos = nn.Parameter(torch.randn(3, 9, width) * 0.02)   # row, column, box
        self.register_buffer("freqs", torch.arange(1, time_features // 2 + 1).float(),
                             persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(time_features, width), nn.SiLU(),
                                      nn.Linear(width, width))
        self.embed = nn.Linear(28, width)
        block = (lambda: _Block(width, heads, mlp_ratio)) if mixer == "attention" \
            else (lambda: _UnitBlock(width, mlp_ratio))
        self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 9)
        nn.init.zeros_(self.head.weight)   # start at the exact score of independent cells
        nn.init.zeros_(self.head.bias)

    def _time_embedding(self, t: Tensor) -> Tensor:
        # log t spans the useful range (1e-3 .. T) evenly; frequencies 1..F/2 over ~8 units.
        arg = math.pi * torch.log(t.float())[:, None] * self.freqs / 8
        return self.time_mlp(torch.cat([arg.cos(), arg.sin()], dim=1))

    def _terms(self, x: Tensor, t: Tensor, known: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, per-category stick scores, known mask)."""
        if x.dim() != 3 or tuple(x.shape[1:]) != (81, 9):
            raise ValueError(f"x must have shape (B, 81, 9), got {tuple(x.shape)}")
        known = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device) if known is None \
            else known
        loglik, scores = self.jacobi.category_terms(x, t)
        dtype = self.head.weight.dtype
        evidence = torch.log_softmax(loglik, -1)
        given = F.one_hot(x.argmax(-1), 9).to(dtype) * known[..., None]
        unknown = (~known)[..., None].to(dtype)
        feats = torch.cat([unknown * (evidence.clamp_min(_EVIDENCE_FLOOR) / 4).to(dtype),
                           unknown * evidence.exp().to(dtype), given,
                           known[..., None].to(dtype)], dim=-1)
        h = self.embed(feats) + self.pos[0][self.cell_rcb[0]] + self.pos[1][self.cell_rcb[1]] \
            + self.pos[2][self.cell_rcb[2]]
        temb = self._time_embedding(t)
        bias = torch.einsum("lhr,rij->lhij", self.rel_bias, self.relations)
        for i, block in enumerate(self.blocks):
            h = block(h, temb, bias[i] if self.mixer == "attention" else None)
        delta = self.head(self.norm(h)).to(loglik.dtype)
        logits = torch.where(known[..., None], given.to(loglik.dtype) * 1e4, loglik + delta)
        return logits, scores, known

    def posterior_logits(self, x: Tensor, t: Tensor, known: Tensor | None = None) -> Tensor:
        """Logits of P(x0 = e_c | x_t) per cell; (B, 81, 9)."""
        return self._terms(x, t, known)[0]

    def stick_score(self, x: Tensor, t: Tensor, known: Tensor | None = None) -> Tensor:
        """Score in stick coordinates (B, 81, 8); zero at the givens."""
        logits, scores, known = self._terms(x, t, known)
        gv = (torch.softmax(logits, -1)[..., None] * scores).sum(-2)
        return torch.where(known[..., None], torch.zeros_like(gv), gv)

    def forward(self, x: Tensor, t: Tensor, known: Tensor | None = None) -> Tensor:
        """Tangent x-space score (B, 81, 9)."""
        return gv_to_gx(self.stick_score(x, t, known), x)
