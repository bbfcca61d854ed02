"""What the multistep probability-flow solvers (DPM-Solver++, UniPC) share.

They step in EDM's rescaled variables x~ = x / alpha_t along lambda_t = log(alpha_t / sigma_t)
= -log s_t (s = sigma / alpha), where every linear process has the same exponential-integrator
solution x~(lambda') = (s' / s) x~(lambda) + integral of e^(-u) D du (Lu et al. 2022b, eq. 9),
D the data prediction (Tweedie's mean) of the score. `steps` counts score evaluations: a grid of
steps - 1 intervals from t_start (default T) to eps, one evaluation at each of its first
steps - 1 points, and the last one at eps, which is the final denoise (Tweedie's mean; the
step to noise level zero of k-diffusion's samplers).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from samplers.grids import TimeGrid
from samplers.loop import Loop
from samplers.steps import check_choice, lambda_table
from scorekit.processes import Process, Score, compute_dtype
from scorekit.processes.predictions import x0_from_score

__all__ = ["Path", "setup", "finish_path", "auto_order"]


def auto_order(order: int | None, evaluations: int, high_from: int) -> int:
    """The order to use: `order`, or 2 below `high_from` evaluations and 3 from it (below it
    the steps are too long for the third-order terms' extrapolation: measured on the
    frontier suite, benchmarks/sampler_frontier.py)."""
    if order is None:
        return 3 if evaluations >= high_from else 2
    return order


@dataclass
class Path:
    """The grid of one solve: times ts (N+1,) float64 and per point alpha, sigma, s, lambda
    (host floats); `t(i)` is grid time i for every sample."""

    process: Process
    ts: Tensor
    alpha: list[float]
    sigma: list[float]
    level: list[float]
    lam: list[float]
    t_vec: Tensor
    grid: str

    @property
    def n(self) -> int:
        """Number of intervals."""
        return len(self.alpha) - 1

    def t(self, i: int, batch: int) -> Tensor:
        return self.t_vec[i].expand(batch)

    def h(self, i: int) -> float:
        """lambda_{i+1} - lambda_i > 0."""
        return self.lam[i + 1] - self.lam[i]

    def denoised(self, score: Score, x_tilde: Tensor, i: int, loop: Loop) -> Tensor:
        """D_i = E[x0 | x] at grid point i, x = alpha_i x~ (one evaluation, reported)."""
        t = self.t(i, x_tilde.shape[0])
        x = x_tilde * self.alpha[i]
        s = score(x, t)
        loop.report(i, t, x, s, self.process)
        return x0_from_score(x, s, self.alpha[i], self.sigma[i])


def setup(sde, x: Tensor, steps: int | None, grid, t_start: float | None, default: int,
          denoise: str, name: str) -> Path:
    """Validate the common options and build the solve's path (`steps` evaluations)."""
    check_choice(denoise, ("tweedie", "none"), "denoise")
    process, grid = Process(sde), TimeGrid.of(grid)
    n = grid.steps(None if steps is None else steps - 1, default - 1)
    if n < 1:
        raise ValueError(f"{name} needs steps >= 2 (score evaluations from T to eps, the last "
                         f"the final denoise), got {n + 1}")
    ts = grid.build(process, n, t_start)
    alpha, sigma, level, lam = lambda_table(process, ts)
    return Path(process, ts, alpha, sigma, level, lam,
                ts.to(device=x.device, dtype=compute_dtype(x.dtype)), grid.name)


def finish_path(score: Score, path: Path, x_tilde: Tensor, denoise: str, loop: Loop) -> Tensor:
    """The end of a solve at eps: Tweedie's mean there (one evaluation), or the state."""
    if denoise == "tweedie":
        return path.denoised(score, x_tilde, path.n, loop)
    return x_tilde * path.alpha[-1]
