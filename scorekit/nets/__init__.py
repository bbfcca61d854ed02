"""Score networks; every model maps `(x, t) -> score`.

- `param`: `ScoreModel`, the one place a backbone's output (score, eps, x0, EDM) becomes a score.
- `precond`: EDM's preconditioning; `mlp`: MLPs for points and small vectors; `unet`: the
  diffusers UNet for images; `sudoku`: the Sudoku transformer of the Dirichlet solver.
"""

from scorekit.nets.mlp import MLP, MLPScore
from scorekit.nets.param import PARAMETERIZATIONS, ScoreModel
from scorekit.nets.precond import EDMPrecond
from scorekit.nets.sudoku import SudokuTransformer
from scorekit.nets.unet import UNet, UNetScore

__all__ = ["MLP", "MLPScore", "ScoreModel", "PARAMETERIZATIONS", "make_model", "EDMPrecond", "UNet",
           "UNetScore", "SudokuTransformer"]

MODELS = {"mlp": MLPScore, "unet": UNetScore, "sudoku_transformer": SudokuTransformer}
_NO_DIM = ("sudoku_transformer",)  # fixed-shape models built from the process alone


def make_model(name: str, dim: int, sde, sample_shape: tuple[int, ...] | None = None,
               **params):
    """Build a score model by name ("mlp", "unet", "sudoku_transformer") for data with `dim`
    elements per sample; `sample_shape` (e.g. (C, H, W)) reaches the models that take it (the
    UNet needs it)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    from scorekit._validate import accepted_kwargs, check_kwargs

    check_kwargs(MODELS[name], params, where=f"model '{name}'",
                 exclude=("dim", "sde", "sample_shape", "jacobi"))
    if name in _NO_DIM:
        return MODELS[name](sde, **params)
    if sample_shape is not None and "sample_shape" in (accepted_kwargs(MODELS[name]) or ()):
        params["sample_shape"] = tuple(sample_shape)
    return MODELS[name](dim, sde, **params)
