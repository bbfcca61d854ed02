"""The forward processes under their original import path (`from scorekit.sde import VPSDE`).

The code lives in `scorekit.processes`; this module only re-exports it.
"""

from scorekit.processes import (
    EDMSDE,
    SDE,
    SDES,
    VESDE,
    VPSDE,
    DoubleWellSDE,
    NonlinearSDE,
    Process,
    SubVPSDE,
    make_sde,
)

__all__ = ["SDE", "Process", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "SDES", "make_sde",
           "NonlinearSDE", "DoubleWellSDE"]
