"""Fused elementwise updates of the fixed-step solvers, one function per update.

Each function runs either as a Triton kernel (one pass over the state, noise drawn in-kernel
from Philox) or as in-place PyTorch ops (the same RNG stream as the samplers have always
drawn). The choice is automatic: CUDA tensors with triton importable take the kernel, CPU
tensors (or `use_triton=False`) the PyTorch path. triton is imported only on the kernel path,
so `import samplers` never loads it.

    steps = Steps(table, ts, x, generator=g)     # table: (N, k) float64, one row per step
    for i in range(N):
        s = score(x, steps.time(i))
        em_update(x, s, steps, i)                # x <- k1 x + k2 s + k3 z, in place
"""

from __future__ import annotations

from samplers.kernels.dispatch import Steps, triton_available, use_fused
from samplers.kernels.updates import (
    em_update,
    ggf_error,
    heun_correct,
    heun_predict,
    langevin_update,
)

__all__ = ["Steps", "em_update", "langevin_update", "heun_predict", "heun_correct",
           "ggf_error", "use_fused", "triton_available"]
