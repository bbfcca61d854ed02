"""Dirichlet diffusion under its original import path (`scorekit.dirichlet.JacobiDiffusion`).

The code lives in `scorekit.processes.dirichlet`; this module only re-exports it.
"""

from scorekit.processes.dirichlet import (
    JacobiDiffusion,
    gv_to_gx,
    gx_to_gv,
    stick_breaking,
    stick_breaking_inverse,
    stick_log,
    stick_logdet,
)

__all__ = ["JacobiDiffusion", "stick_breaking", "stick_breaking_inverse", "stick_log",
           "stick_logdet", "gx_to_gv", "gv_to_gx"]
