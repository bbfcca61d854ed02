"""Fused elementwise updates of the fixed-step solvers, and the CUDA-graph runner.

Solvers call one update function per step; behind it the update runs either as a Triton
kernel (one pass over the state, noise drawn in-kernel from Philox, coefficients read at a
device cursor so the loop is CUDA-graph capturable) or as in-place PyTorch ops (the same RNG
stream as the samplers have always drawn). The choice is automatic: CUDA tensors with triton
importable take the kernel, CPU tensors (or `use_triton=False`) the PyTorch path. triton is
imported only on the kernel path, so `import samplers` never loads it.

    st = Steps(table, ts, x, generator=g)        # table: (N, k) float64, one row per step
    for i in range(st.count):
        s = score(x, st.time(i))
        em_update(x, s, st, i)                   # x <- k1 x + k2 s + k3 z, in place

`graph` replays a whole solve as CUDA graphs (`samplers.sample(..., capture="graph")`).
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
