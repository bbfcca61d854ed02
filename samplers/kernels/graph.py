"""CUDA-graph replay of the fixed-step samplers, and `torch.compile` of the score.

A captured solve replays every kernel of the network and of the fused updates with one
launch per graph: no Python, no dispatcher. Either the whole loop is one graph, or (long
loops of large networks, over `NODE_LIMIT` kernels) the first step, one generic step replayed
N - 1 times, and the finish are three graphs; the generic step works because the kernel path
reads its row, time and noise offset from the device cursor. Graphs are cached by
(method, options, shape, dtype, device, score) until `clear_graphs()`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from samplers.base import CountingScore, Score
from samplers.kernels.loop import Loop
from samplers.ode import heun_program
from samplers.sde_solvers import em_program, pc_program
from scorekit.sde import SDE

PROGRAMS = {"em": em_program, "pc": pc_program, "heun": heun_program}
NODE_LIMIT = 20_000  # kernels in one graph above which the loop is captured per step
WARMUP = 3
GRAPH_MODES = ("auto", "loop", "step")


class _Calls:
    """The raw score, counting calls (captured calls are charged per replay, not here)."""

    def __init__(self, score: Score):
        self.score, self.n = score, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.n += 1
        return self.score(x, t)


@dataclass
class _Entry:
    score: Score
    loop: Loop
    graphs: list[tuple[torch.cuda.CUDAGraph, int]]  # (graph, replays per run)
    out: Tensor
    calls: int  # score calls per run
    per_step: bool


_CACHE: dict[tuple, _Entry] = {}
_COMPILED: dict[tuple, Score] = {}


def clear_graphs() -> None:
    """Drop every cached CUDA graph (and its memory pool) and every compiled score."""
    _CACHE.clear()
    _COMPILED.clear()


def check_capture(method: str, x: Tensor, options: dict[str, Any]) -> None:
    """Raise ValueError unless `method` on `x` can be captured."""
    if not x.is_cuda:
        raise ValueError(f"capture='graph' needs CUDA (CUDA graphs); the samples are on "
                         f"{x.device}. Sample without capture on this device")
    if method not in PROGRAMS:
        raise ValueError(f"capture='graph' takes the fixed-step methods {sorted(PROGRAMS)}, "
                         f"got {method!r}")
    if options.get("use_triton") is False:
        raise ValueError("capture='graph' replays the Triton kernels; use_triton=False has none")


def sample_graphed(counter: CountingScore, sde: SDE, x: Tensor, method: str,
                   options: dict[str, Any], generator: torch.Generator | None,
                   graph_mode: str = "auto") -> tuple[Tensor, dict]:
    """Run `method` on x: (B, *D) by replaying its cached graphs (captured on first use).

    The counter is charged the captured number of score calls per replay, so NFE stays exact;
    its finiteness guard does not run inside the graph (the caller checks the result).
    """
    check_capture(method, x, options)
    if graph_mode not in GRAPH_MODES:
        raise ValueError(f"unknown graph_mode {graph_mode!r}; valid: {list(GRAPH_MODES)}")
    key = (method, tuple(x.shape), x.dtype, str(x.device), repr(sde), graph_mode,
           tuple(sorted((k, repr(v)) for k, v in options.items())), id(counter.score))
    entry = _CACHE.get(key)
    warmup = 0.0
    if entry is None or entry.score is not counter.score:
        start = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start[0].record()
        entry = _capture(counter.score, sde, x, method, options, graph_mode)
        start[1].record()
        torch.cuda.synchronize(x.device)
        warmup = start[0].elapsed_time(start[1]) / 1e3
        _CACHE[key] = entry
    entry.loop.x.copy_(x)
    entry.loop.steps.reset(generator)
    for graph, replays in entry.graphs:
        for _ in range(replays):
            graph.replay()
    counter.counts += entry.calls
    counter.calls += entry.calls
    info = {**entry.loop.info, "capture": "graph", "graph_per_step": entry.per_step,
            "capture_time": warmup}
    return entry.out.clone(), info


def _kernels_per_step(loop: Loop) -> int | None:
    """CUDA kernels launched by one step (profiled once), None if the profiler is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            loop.step(0)
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    except Exception:  # noqa: BLE001 - any profiler failure only loses the estimate
        return None


def _capture(score: Score, sde: SDE, x: Tensor, method: str, options: dict[str, Any],
             graph_mode: str) -> _Entry:
    calls = _Calls(score)
    # Capture and warm-up draw their seeds from a scratch generator: each replay then takes
    # exactly one seed from the caller's, as an eager kernel-path solve does.
    scratch = torch.Generator(device=x.device).manual_seed(0)
    loop = PROGRAMS[method](calls, sde, x.clone(), generator=scratch, **options)
    if not loop.steps.fused:
        raise ValueError("capture='graph' needs the Triton kernels: install triton "
                         "(pip install 'scorekit[gpu]')")
    # Warm-up off the capturing stream: compiles the kernels, allocates library workspaces.
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            loop.steps.reset(scratch)
            loop.prologue()
            loop.step(0)
            loop.finish()
        per_step = graph_mode == "step"
        if graph_mode == "auto":
            kernels = _kernels_per_step(loop)
            per_step = (kernels or 0) * loop.steps.count > NODE_LIMIT
    torch.cuda.current_stream(x.device).wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    n = loop.steps.count
    phases = ([(_first, 1), (_generic, n - 1), (_finish, 1)] if per_step
              else [(_whole, 1)])
    graphs, total, out = [], 0, None
    for phase, replays in phases:
        if replays == 0:
            continue
        calls.n = 0
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            result = phase(loop)
        graphs.append((graph, replays))
        total += calls.n * replays
        out = result if result is not None else out
    return _Entry(score, loop, graphs, out, total, per_step)


def _whole(loop: Loop) -> Tensor:
    loop.prologue()
    for i in range(loop.steps.count):
        loop.step(i)
    return loop.finish()


def _first(loop: Loop) -> None:
    loop.prologue()
    loop.step(0)


def _generic(loop: Loop) -> None:
    loop.step(1)  # on the kernel path any index: row and time come from the cursor


def _finish(loop: Loop) -> Tensor:
    return loop.finish()


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
