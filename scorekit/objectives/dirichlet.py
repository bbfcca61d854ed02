"""Score matching for Dirichlet diffusion (DDSM, Avdeyev et al. 2023), in stick coordinates.

Per sample, with v_t ~ q(. | x0) drawn exactly and s_v the transition score of the sticks:
    L = sum_{cells, sticks} v (1 - v) (s_hat_v - s_v)^2 / w(t),
v (1 - v) being the diffusion coefficient without the speed (the analogue of g^2 weighting) and
w(t) the mean of v (1 - v) s_v^2 at t (normalised to mean 1 on the time grid). With
`importance_sampling` (DDSM's choice) t is drawn on the process's time grid with probability
∝ w(t), so the estimator targets the uniform-t average of the speed-weighted loss; without it t
is uniform on the grid and every time level contributes O(1).

Posterior-parameterised models (with `posterior_logits(x, t)`, e.g. `SudokuTransformer`) give
the score sum_c P(c | x_t) grad log q(x_t | e_c) from the same tables as the target, and may add
`ce_weight` x the cross-entropy of those logits against x0 (an auxiliary term, as the hybrid
losses of discrete diffusion; 0 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from scorekit.processes.dirichlet import JacobiDiffusion, gx_to_gv, stick_breaking

Score = Callable[..., Tensor]


def stick_score(model: Score, x: Tensor, t: Tensor, **kwargs) -> Tensor:
    """Model score in stick coordinates: its own `stick_score` if it has one, else the x-space
    score converted by `gx_to_gv`; x: (B, *D, K) -> (B, *D, K-1)."""
    fn = getattr(model, "stick_score", None)
    if fn is not None:
        return fn(x, t, **kwargs)
    return gx_to_gv(model(x, t, **kwargs), x)


class DirichletDSM:
    """`loss_fn(model, x0, known=None)`: scalar DDSM loss for one-hot x0 (B, *D, K).

    `known` (B, *D) bool marks conditioning cells (inpainting): they are held at their vertex,
    excluded from the loss, and passed to the model as `model(x, t, known=known)`. reduction
    "sum" sums over cells and sticks, "mean" averages over the unknown ones.
    """

    def __init__(self, jacobi: JacobiDiffusion, importance_sampling: bool = True,
                 reduction: str = "sum", ce_weight: float = 0.0):
        if not isinstance(jacobi, JacobiDiffusion):
            raise TypeError(f"DirichletDSM needs a JacobiDiffusion, got {type(jacobi).__name__}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.sde = self.jacobi = jacobi
        self.importance_sampling = bool(importance_sampling)
        self.reduction = reduction
        if not ce_weight >= 0:
            raise ValueError(f"ce_weight must be >= 0, got {ce_weight!r}")
        self.ce_weight = float(ce_weight)

    def sample_index(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """Time-grid indices (n,): ∝ w(t) with importance sampling, else uniform."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if self.importance_sampling:
            idx = torch.multinomial(self.jacobi.loss_weight.to(gen_device), n, replacement=True,
                                    generator=generator)
        else:
            idx = torch.randint(self.jacobi.n_time, (n,), generator=generator, device=gen_device)
        return idx.to(device) if device is not None else idx

    def per_sample(self, model: Score, x0: Tensor, t_index: Tensor | None = None,
                   known: Tensor | None = None, generator: torch.Generator | None = None
                   ) -> Tensor:
        """Per-sample losses (B,); `t_index` (B,) fixes the time-grid indices."""
        jac = self.jacobi
        if x0.dim() < 2 or x0.shape[-1] != jac.K:
            raise ValueError(f"x0 must be one-hot (B, *D, K={jac.K}), got {tuple(x0.shape)}")
        if known is not None and tuple(known.shape) != tuple(x0.shape[:-1]):
            raise ValueError(f"known must have shape {tuple(x0.shape[:-1])}, got "
                             f"{tuple(known.shape)}")
        if t_index is None:
            t_index = self.sample_index(x0.shape[0], generator)
        t_index = t_index.cpu()
        t = jac.times[t_index].to(device=x0.device, dtype=x0.dtype)
        v = jac.noise_v(x0, t, generator=generator)
        kwargs = {}
        if known is not None:
            v = torch.where(known[..., None], jac.vertex_sticks(x0, v.dtype), v)
            kwargs["known"] = known
        x = stick_breaking(v)
        cat = x0.argmax(-1)
        _, scores = jac.category_terms(x, t)
        target = torch.gather(scores, -2, cat[..., None, None].expand(*cat.shape, 1, jac.K - 1))
        logits_fn = getattr(model, "posterior_logits", None)
        if logits_fn is not None:   # posterior-parameterised: score = E[transition score]
            logits = logits_fn(x, t, **kwargs)
            pred = (torch.softmax(logits, -1)[..., None] * scores).sum(-2)
        elif self.ce_weight > 0:
            raise ValueError("ce_weight > 0 needs a model with posterior_logits(x, t)")
        else:
            pred = stick_score(model, x, t, **kwargs)
        sq = (v * (1 - v) * (pred - target[..., 0, :]) ** 2).sum(-1)   # (B, *D)
        if known is not None:
            sq = torch.where(known, torch.zeros_like(sq), sq)
        sq = sq.flatten(1).sum(1)
        if self.reduction == "mean":
            count = (x0.shape[1:-1].numel() if known is None
                     else (~known).flatten(1).sum(1).clamp_min(1).to(sq.dtype))
            sq = sq / (count * (jac.K - 1))
        w = jac.loss_weight[t_index].to(device=x0.device, dtype=x0.dtype)
        loss = sq / w
        if self.ce_weight > 0:
            ce = torch.nn.functional.cross_entropy(logits.movedim(-1, 1), cat, reduction="none")
            if known is not None:
                ce = torch.where(known, torch.zeros_like(ce), ce)
            ce = ce.flatten(1).sum(1)
            if self.reduction == "mean":
                ce = ce / count
            loss = loss + self.ce_weight * ce
        return loss

    def __call__(self, model: Score, x0: Tensor, t_index: Tensor | None = None,
                 known: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> Tensor:
        """Scalar loss: mean over the batch of `per_sample`."""
        return self.per_sample(model, x0, t_index, known, generator).mean()
