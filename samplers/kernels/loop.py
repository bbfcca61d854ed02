"""A fixed-step solve as data plus three phases, so it runs eagerly or replays as a CUDA graph."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from samplers.kernels.dispatch import Steps


class Loop:
    """One fixed-step solve: `prologue()`, then `step(i)` for i < steps.count, then `finish()`.

    `x` holds the input (B, *D) and, for the solvers that update it in place, the state. On
    the kernel path `step` reads everything that changes between steps from the device
    (`steps.cursor`), so one captured `step` replays as any step.
    """

    steps: Steps
    x: Tensor
    info: dict[str, Any]

    def prologue(self) -> None:
        """Work before the first step (e.g. a change of variables)."""

    def step(self, i: int) -> None:
        """Step i of the grid."""
        raise NotImplementedError

    def finish(self) -> Tensor:
        """The result after the last step (denoised if asked)."""
        raise NotImplementedError

    def run(self) -> tuple[Tensor, dict[str, Any]]:
        """The whole solve, eagerly: (samples (B, *D), info)."""
        self.prologue()
        for i in range(self.steps.count):
            self.step(i)
        return self.finish(), self.info
