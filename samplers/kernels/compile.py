"""`torch.compile` of the score (`samplers.sample(..., compile=True)`), cached per score.

Inductor's mode "reduce-overhead" is refused: its CUDA graphs hand out outputs that the next
call overwrites, and samplers keep a score's output across calls (FKC's Metropolis move keeps
the scores of both states; Heun keeps the first stage's slope). CUDA graphs come from
`capture="graph"` instead, which records the whole solve.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from samplers.plans import ScoreLRU
from scorekit.processes import Score

__all__ = ["CompiledScore", "compile_score", "clear_compiled", "MAX_COMPILED"]

MAX_COMPILED = 8  # compiled scores kept (each holds its score and compiled code)
_COMPILED = ScoreLRU(MAX_COMPILED)


def clear_compiled() -> None:
    """Drop every cached compiled score."""
    _COMPILED.clear()


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this could not be compiled" (dynamo, inductor, the backend), as
    opposed to errors of the score itself or of a CUDA graph capture, which propagate."""
    errors: list[type[BaseException]] = []
    for module, name in (("torch._dynamo.exc", "TorchDynamoException"),
                         ("torch._inductor.exc", "InductorError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


class CompiledScore:
    """`torch.compile` of a score with a fallback: if compiling fails (e.g. no C++ compiler for
    inductor on CPU, a graph break under fullgraph=True), warn once and call the score eagerly
    from then on (an error of the score itself then surfaces from that call). Errors raised
    while the compiled code runs are not compile failures and propagate."""

    def __init__(self, score: Score, **kwargs: Any):
        self.score, self.kwargs = score, kwargs
        self.compiled: Score | None = torch.compile(score, **kwargs)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x, t)
            except _compile_errors() as err:
                first = str(err).splitlines()[0] if str(err) else ""
                warnings.warn(f"torch.compile of the score failed ({type(err).__name__}: "
                              f"{first}); sampling with the eager score", RuntimeWarning,
                              stacklevel=2)
                self.compiled = None
        return self.score(x, t)


def compile_options(options: bool | dict[str, Any], captured: bool,
                    varying_batch: bool = False) -> dict[str, Any]:
    """The torch.compile options for `compile=options`: inductor's mode "max-autotune-no-
    cudagraphs" under our own graph capture and "default" otherwise ("reduce-overhead" is
    refused: module docstring); fullgraph; static shapes, except for methods whose batch
    shrinks as samples finish (`varying_batch`: ggf), which get automatic dynamic shapes
    rather than a recompilation per batch size."""
    kwargs = dict(options) if isinstance(options, dict) else {}
    if kwargs.get("mode") == "reduce-overhead":
        raise ValueError("compile mode 'reduce-overhead' (torch.compile's own CUDA graphs) "
                         "overwrites a score's output at the next call, which the samplers "
                         "keep; use capture='graph' for CUDA graphs")
    if kwargs.get("backend", "inductor") == "inductor" and "mode" not in kwargs:
        kwargs["mode"] = "max-autotune-no-cudagraphs" if captured else "default"
    kwargs.setdefault("fullgraph", True)
    kwargs.setdefault("dynamic", None if varying_batch else False)
    return kwargs


def compile_score(score: Score, options: bool | dict[str, Any], captured: bool,
                  varying_batch: bool = False) -> Score:
    """The score compiled with torch.compile (`compile_options`), cached per score and
    options (at most MAX_COMPILED)."""
    kwargs = compile_options(options, captured, varying_batch)
    settings = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    cached = _COMPILED.get(score, settings)
    if cached is None:
        cached = CompiledScore(score, **kwargs)
        _COMPILED.put(score, settings, cached)
    return cached
