"""Score networks. Every model maps `(x, t) -> score`; parameterisations convert in `param.py`."""

from scorekit.nets.mlp import MLP, MLPScore
from scorekit.nets.param import PARAMETERIZATIONS, ScoreModel
from scorekit.nets.sudoku import SudokuTransformer

__all__ = ["MLP", "MLPScore", "ScoreModel", "SudokuTransformer", "PARAMETERIZATIONS",
           "make_model"]

MODELS = {"mlp": MLPScore, "sudoku_transformer": SudokuTransformer}
_NO_DIM = ("sudoku_transformer",)  # fixed-shape models built from the process alone


def make_model(name: str, dim: int, sde, **params):
    """Build a score model by name ("mlp", "sudoku_transformer") for data with `dim` elements
    per sample."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    from scorekit._validate import check_kwargs

    check_kwargs(MODELS[name], params, where=f"model '{name}'", exclude=("dim", "sde", "jacobi"))
    if name in _NO_DIM:
        return MODELS[name](sde, **params)
    return MODELS[name](dim, sde, **params)
