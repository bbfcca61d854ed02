"""How a solver's steps are driven: the per-step callback, the progress bar, early stopping.

Every method takes `loop: Loop` and calls `loop.report(i, t, x, ...)` once per step, right
after the step's (first) score evaluation, with the state x (B, *D) at the time t (B,) the score
saw and the posterior-mean estimate x0_hat that evaluation gives (k-diffusion's callback
convention: `x` before the update, `denoised`). Fixed-step solvers iterate with
`for i in loop.steps(st)`, which also lets the CUDA-graph runner (`samplers.kernels.graph`)
record the loop instead of running it; solvers never see that difference.

The user's `callback(i, t, x, x0_hat)` gets copies (it may keep them); returning True stops
sampling after that step, and `samplers.sample` then returns that step's x0_hat (`info`
records `stopped_at_step`). x0_hat is None where a method has no posterior mean (Dirichlet
and non-linear processes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor

from scorekit.processes import Process
from scorekit.processes.predictions import x0_from_score

__all__ = ["Loop", "StopSampling", "Callback"]

Callback = Callable[[int, Tensor, Tensor, "Tensor | None"], Any]


class StopSampling(Exception):
    """Raised by `Loop.report` when the callback asks to stop: step `step`, estimate `x0`."""

    def __init__(self, step: int, x0: Tensor):
        super().__init__(f"sampling stopped by the callback after step {step}")
        self.step, self.x0 = step, x0


class Loop:
    """Eager driver of one solve: `callback` after each step, a tqdm bar with `progress`.

    Fixed-step solvers: `for i in loop.steps(st)` (st: `samplers.kernels.Steps`). Adaptive
    ones advance the bar with `loop.advance(fraction)` (of the time interval done, in [0, 1]).
    """

    def __init__(self, callback: Callback | None = None, progress: bool = False,
                 desc: str = "sampling"):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable(i, t, x, x0_hat), got {callback!r}")
        self.callback, self.progress, self.desc = callback, bool(progress), desc
        self._bar = None
        self._done = 0.0

    @property
    def active(self) -> bool:
        """Whether reports are wanted (a solver may skip computing x0_hat otherwise)."""
        return self.callback is not None

    def steps(self, st: Any) -> Iterator[int]:
        """The step indices 0 .. st.count - 1 of a fixed-step solve on `samplers.kernels.Steps`
        (which the CUDA-graph runner records instead of running)."""
        return self.range(st.count)

    def range(self, n: int) -> Iterator[int]:
        """The step indices 0 .. n - 1 of a fixed-step loop, advancing the bar."""
        self._open(n)
        for i in range(n):
            yield i
            if self._bar is not None:
                self._bar.update(1)
        self.close()

    def report(self, i: int, t: Tensor, x: Tensor, s: Tensor | None = None,
               process: Process | None = None, x0: Tensor | None = None) -> None:
        """Step i evaluated the score at x (B, *D), time t (B,). The estimate is `x0`, or
        Tweedie's mean from the score value `s` under `process` (computed only when there is a
        callback), or None."""
        if self.callback is None:
            return
        if x0 is None and s is not None:
            x0 = x0_from_score(x, s, *process.marginal(t))
        x0 = None if x0 is None else x0.detach().clone()
        if self.callback(i, t.detach().clone(), x.detach().clone(), x0) is True:
            self.close()
            raise StopSampling(i, x.detach().clone() if x0 is None else x0)

    def advance(self, fraction: float) -> None:
        """Adaptive solvers: the bar shows `fraction` (0..1) of the interval as done."""
        if not self.progress:
            return
        self._open(None)
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction > self._done:
            self._bar.update(fraction - self._done)
            self._done = fraction

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _open(self, total: int | None) -> None:
        if not self.progress or self._bar is not None:
            return
        from tqdm.auto import tqdm

        if total is None:
            self._bar = tqdm(total=1.0, desc=self.desc, unit="of T", leave=False,
                             bar_format="{l_bar}{bar}| {n:.0%} [{elapsed}<{remaining}]")
        else:
            self._bar = tqdm(total=total, desc=self.desc, unit="step", leave=False)


EAGER = Loop()
"""The default driver: no callback, no bar (shared: it holds no per-solve state)."""
