"""Training objectives. Each is a callable `loss_fn(model, x0) -> scalar`."""

from scorekit.objectives.dsm import DSM, WEIGHTINGS

__all__ = ["DSM", "WEIGHTINGS", "make_objective"]

OBJECTIVES = {"dsm": DSM}


def make_objective(name: str, sde, **params):
    """Build an objective by name ("dsm") for the given process."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
    from scorekit._validate import check_kwargs

    check_kwargs(OBJECTIVES[name], params, where=f"objective '{name}'", exclude=("sde",))
    return OBJECTIVES[name](sde, **params)
