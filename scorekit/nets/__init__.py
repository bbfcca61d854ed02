"""Score networks. Every model maps `(x, t) -> score`; parameterisations convert in `param.py`."""

from scorekit.nets.mlp import MLP, MLPScore
from scorekit.nets.param import PARAMETERIZATIONS, ScoreModel

__all__ = ["MLP", "MLPScore", "ScoreModel", "PARAMETERIZATIONS", "make_model"]

MODELS = {"mlp": MLPScore}


def make_model(name: str, dim: int, sde, **params) -> ScoreModel:
    """Build a score model by name ("mlp") for data with `dim` elements per sample."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    from scorekit._validate import check_kwargs

    check_kwargs(MODELS[name], params, where=f"model '{name}'", exclude=("dim", "sde"))
    return MODELS[name](dim, sde, **params)
