"""`torch.compile` of the score (`samplers.sample(..., compile=True)`), cached per score."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from scorekit.processes import Score

__all__ = ["CompiledScore", "compile_score", "clear_compiled"]

_COMPILED: dict[tuple, CompiledScore] = {}


def clear_compiled() -> None:
    """Drop every cached compiled score."""
    _COMPILED.clear()


class CompiledScore:
    """`torch.compile` of a score with a fallback: if a compiled call fails (e.g. no C++
    compiler for inductor on CPU, a graph break under fullgraph=True), warn once and call the
    score eagerly from then on (an error of the score itself then surfaces from that call)."""

    def __init__(self, score: Score, **kwargs: Any):
        self.score, self.kwargs = score, kwargs
        self.compiled: Score | None = torch.compile(score, **kwargs)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x, t)
            except Exception as err:  # noqa: BLE001 - any compile failure falls back to eager
                first = str(err).splitlines()[0] if str(err) else ""
                warnings.warn(f"torch.compile of the score failed ({type(err).__name__}: "
                              f"{first}); sampling with the eager score", RuntimeWarning,
                              stacklevel=2)
                self.compiled = None
        return self.score(x, t)


def compile_score(score: Score, options: bool | dict[str, Any], device: torch.device,
                  captured: bool) -> Score:
    """The score compiled with torch.compile, cached per score and options.

    `options` (a dict) goes to torch.compile (e.g. {"backend": "aot_eager"}). The inductor
    mode defaults to "max-autotune-no-cudagraphs" under our own graph capture (never two graph
    mechanisms at once), "reduce-overhead" on CUDA otherwise, "default" on CPU.
    """
    kwargs = dict(options) if isinstance(options, dict) else {}
    if kwargs.get("backend", "inductor") == "inductor" and "mode" not in kwargs:
        kwargs["mode"] = ("max-autotune-no-cudagraphs" if captured else
                          "reduce-overhead" if device.type == "cuda" else "default")
    kwargs.setdefault("fullgraph", True)
    kwargs.setdefault("dynamic", False)
    key = (id(score), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    cached = _COMPILED.get(key)
    if cached is None or cached.score is not score:
        cached = _COMPILED[key] = CompiledScore(score, **kwargs)
    return cached
