"""The reflected process under its original import path (`scorekit.reflected.ReflectedSDE`).

The code lives in `scorekit.processes.reflected`; this module only re-exports it.
"""

from scorekit.processes.reflected import (
    KERNEL_METHODS,
    REFLECTED_SDES,
    ReflectedSDE,
    fold,
    heat_kernel_logp,
    heat_kernel_score,
    n_cosine_terms,
    n_images,
)

__all__ = ["ReflectedSDE", "fold", "heat_kernel_logp", "heat_kernel_score", "n_images",
           "n_cosine_terms", "KERNEL_METHODS", "REFLECTED_SDES"]
