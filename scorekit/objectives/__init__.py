"""Training objectives, one per module; each is a callable `loss_fn(model, x0) -> scalar`.

- `dsm`: denoising score matching (sigma^2, likelihood and EDM weightings).
- `tsm`: target score matching, for data whose clean score is known.
- `local_dsm`: short-step DSM for processes with a non-linear drift.
- `reflected`: DSM with the heat-kernel score of a reflected process.
- `dirichlet`: DSM of Dirichlet diffusion on the simplex.
"""

from scorekit.objectives.dirichlet import DirichletDSM
from scorekit.objectives.dsm import DSM, WEIGHTINGS
from scorekit.objectives.local_dsm import KERNELS, LocalDSM
from scorekit.objectives.reflected import REFLECTED_WEIGHTINGS, ReflectedDSM
from scorekit.objectives.tsm import MIXINGS, TSM

__all__ = ["DSM", "TSM", "LocalDSM", "ReflectedDSM", "DirichletDSM", "WEIGHTINGS", "MIXINGS",
           "KERNELS", "REFLECTED_WEIGHTINGS", "OBJECTIVES", "make_objective"]

OBJECTIVES = {"dsm": DSM, "tsm": TSM, "local_dsm": LocalDSM, "reflected_dsm": ReflectedDSM,
              "dirichlet_dsm": DirichletDSM}


def make_objective(name: str, sde, data_score=None, **params):
    """Build an objective by name ("dsm", "tsm", "local_dsm", "reflected_dsm", "dirichlet_dsm")
    for the given process.

    `data_score(x0) = grad log p0(x0)` is passed to objectives that need it (TSM) and ignored
    by the others.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
    from scorekit._validate import check_kwargs

    cls = OBJECTIVES[name]
    check_kwargs(cls, params, where=f"objective '{name}'", exclude=("sde", "data_score"))
    if getattr(cls, "needs_data_score", False):
        if data_score is None:
            raise ValueError(f"objective {name!r} needs the clean data score grad log p0; use "
                             "a dataset with a known score (Dataset.has_clean_score)")
        return cls(sde, data_score, **params)
    return cls(sde, **params)
