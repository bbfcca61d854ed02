"""Exact log-likelihood through the probability-flow ODE (instantaneous change of variables).

Integrate (x, delta) from eps to T with dx/dt = v(x, t), d delta/dt = div v(x, t); then
log p_eps(x) = log p_T(x_T) + delta(T) (Chen et al. 2018; Song et al. 2021, Appendix D.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from samplers.inputs import check_batch, nonfinite_rows
from samplers.ode import ProbabilityFlow, check_solver
from scorekit.processes import SDE, Score


class _AugmentedFlow(nn.Module):
    """Right-hand side of the (x, delta) system; counts forward and vector-Jacobian calls and
    raises FloatingPointError at the first evaluation whose score, drift or divergence is NaN/inf
    (a NaN otherwise makes the adaptive solver shrink dt until torchdiffeq's "underflow in dt")."""

    def __init__(self, score: Score, sde: SDE, probes: Tensor | None):
        super().__init__()
        self._user_score = score
        self.flow = ProbabilityFlow(self._score, sde)
        self.probes = probes  # (K, B, *D) fixed for the whole solve, or None for exact trace
        self.nfe = 0
        self.vjp_calls = 0
        self.last_t = float("nan")  # the (clamped) time of the latest score evaluation
        self._s: Tensor | None = None

    def _score(self, x: Tensor, t: Tensor) -> Tensor:
        s = self._user_score(x, t)
        self._s, self.last_t = s.detach(), float(t[0])
        return s

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = self.flow.velocity(t, x)
            self.nfe += 1
            div = self._divergence(v, x)
        v, div = v.detach(), div.detach()
        if not bool(torch.isfinite(v).all() & torch.isfinite(div).all()):
            self._raise_non_finite(v, div)
        return v, div

    def _raise_non_finite(self, v: Tensor, div: Tensor) -> None:
        for what, val in (("the score", self._s), ("the probability-flow drift", v),
                          ("the drift's divergence", div)):
            count, first = nonfinite_rows(val)
            if count:
                raise FloatingPointError(
                    f"{what} is non-finite (NaN/inf) at t={self.last_t:.6g} for {count} of "
                    f"{val.shape[0]} rows (first: row {first}), at score evaluation {self.nfe}; "
                    f"log_likelihood needs a finite score on [eps, T]")

    def _divergence(self, v: Tensor, x: Tensor) -> Tensor:
        b = x.shape[0]
        if self.probes is None:  # exact trace: one VJP per dimension
            vf = v.reshape(b, -1)
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            for i in range(vf.shape[1]):
                (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
                div = div + g.reshape(b, -1)[:, i]
                self.vjp_calls += 1
            return div
        div = torch.zeros(b, dtype=x.dtype, device=x.device)
        for k, eps in enumerate(self.probes):  # Hutchinson: E[eps^T J eps] = tr J
            (g,) = torch.autograd.grad(v, x, eps, retain_graph=k < len(self.probes) - 1)
            div = div + (g * eps).reshape(b, -1).sum(1)
            self.vjp_calls += 1
        return div / len(self.probes)


def log_likelihood(score: Score, sde: SDE, x: Tensor, exact_trace: bool | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5, solver: str = "dopri5",
                   n_probes: int = 1, probe: str = "rademacher",
                   prior_logp: Callable[[Tensor], Tensor] | None = None,
                   generator: torch.Generator | None = None, return_info: bool = False
                   ) -> Tensor | tuple[Tensor, dict]:
    """log p_eps(x) in nats per sample, (B,), for x: (B, *D) at t = eps.

    exact_trace defaults to True for d <= 64 (d VJPs per evaluation), else Hutchinson with
    `n_probes` fixed Rademacher (or Gaussian) probes per sample. `prior_logp` replaces the
    nominal prior (tests pass the exact p_T). Assumes the score treats samples independently.
    """
    from torchdiffeq import odeint

    check_batch(x)
    check_solver(solver, rtol, atol)
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    d = x[0].numel()
    exact = d <= 64 if exact_trace is None else exact_trace
    probes = None
    if not exact:
        shape = (n_probes, *x.shape)
        if probe == "rademacher":
            r = torch.randint(0, 2, shape, generator=generator, device=x.device)
            probes = (2 * r - 1).to(x.dtype)
        else:
            probes = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    func = _AugmentedFlow(score, sde, probes)
    ts = torch.tensor([sde.eps, sde.T], dtype=x.dtype, device=x.device)
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    try:
        x_t, delta = odeint(func, (x, delta0), ts, method=solver, rtol=rtol, atol=atol)
    except AssertionError as err:
        if not str(err).startswith("underflow in dt"):
            raise
        raise FloatingPointError(
            f"the ODE solver's step size underflowed ({err}) near t={func.last_t:.6g} after "
            f"{func.nfe} score evaluations: the score is stiff or non-finite there; check it, "
            f"or raise rtol/atol (now rtol={rtol}, atol={atol})") from err
    logp = (prior_logp or sde.prior_logp)(x_t[-1]) + delta[-1]
    if return_info:
        return logp, {"nfe": func.nfe, "vjp_calls": func.vjp_calls, "exact_trace": exact,
                      "x_T": x_t[-1]}
    return logp


def bits_per_dim(nll: Tensor, num_dims: int, data_range: int = 256,
                 model_scale: float = 1.0) -> Tensor:
    """Bits per dimension of K-level data from the continuous NLL (nats) of its model-space image.

    Data k in {0..K-1} is dequantised to y = (k + u) / K, u ~ U[0, 1), and the model sees
    z = model_scale * y + b. Then bpd = nll_z / (D ln 2) + log2 K - log2 model_scale: offset 8
    for [0, 1] data and 7 for [-1, 1] (model_scale=2) when K = 256.
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    if data_range < 2:
        raise ValueError(f"data_range must be >= 2, got {data_range}")
    if model_scale <= 0:
        raise ValueError(f"model_scale must be > 0, got {model_scale}")
    offset = math.log2(data_range) - math.log2(model_scale)
    return nll / (num_dims * math.log(2)) + offset
