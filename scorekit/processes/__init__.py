"""Forward processes: how data is noised, and the one view samplers and objectives read it by.

- `base`: the `SDE` interface (validated public API) and `Process`, its unchecked view with
  alpha(t), sigma(t), lambda_(t), t_of_lambda, drift and diffusion; the `Score` type.
- `linear`: VP, sub-VP, VE and EDM, with Gaussian transitions.
- `predictions`: score <-> epsilon <-> x0 conversions and Tweedie's posterior mean.
- `nonlinear`: processes with a non-linear drift (the double well), no closed-form marginal.
- `reflected`: VE noise reflected at the faces of a box, with its exact heat-kernel score.
- `jacobi`, `dirichlet`: Jacobi diffusions and the Dirichlet (stick-breaking) process on the
  simplex.

`make_sde(name, **params)` builds any of them by name; the registry lives here because this is
where every process class is imported.
"""

from __future__ import annotations

from scorekit._validate import check_kwargs
from scorekit.processes.base import SDE, Process, Score, as_t, compute_dtype, per_sample
from scorekit.processes.dirichlet import JacobiDiffusion
from scorekit.processes.linear import EDMSDE, SDES, VESDE, VPSDE, SubVPSDE
from scorekit.processes.nonlinear import NONLINEAR_SDES, DoubleWellSDE, NonlinearSDE
from scorekit.processes.reflected import REFLECTED_SDES, ReflectedSDE

__all__ = ["SDE", "Process", "Score", "as_t", "per_sample", "compute_dtype", "VPSDE",
           "SubVPSDE", "VESDE", "EDMSDE", "NonlinearSDE", "DoubleWellSDE", "ReflectedSDE",
           "JacobiDiffusion", "SDES", "PROCESSES", "make_sde"]

PROCESSES: dict[str, type] = {**SDES, **NONLINEAR_SDES, **REFLECTED_SDES,
                              "jacobi": JacobiDiffusion}


def make_sde(name: str, **params) -> SDE | JacobiDiffusion:
    """Build a process by name ("vp", "subvp", "ve", "edm", "double_well", "reflected" or
    "jacobi") with keyword parameters; unknown names and parameters raise ValueError."""
    if name not in PROCESSES:
        others = sorted(set(PROCESSES) - set(SDES))
        raise ValueError(f"unknown sde {name!r}; valid: {sorted(SDES) + others}")
    cls = PROCESSES[name]
    check_kwargs(cls, params, where=f"sde '{name}'")
    return cls(**params)
