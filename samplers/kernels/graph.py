"""CUDA-graph replay of the fixed-step samplers ("em", "pc", "heun").

A captured solve replays every kernel of the network and of the fused updates with one launch
per graph: no Python, no dispatcher. The solver function itself is run once under capture,
driven by a recording `Loop`: either the whole solve is one graph, or (long loops of large
networks, over `NODE_LIMIT` kernels) three graphs are cut at the loop's step boundaries — the
set-up with the first step, one generic step replayed N - 1 times, and the finish. The generic
step works because the kernel path reads its row, time and noise offset from the device cursor
of `Steps`. Graphs are cached by (method, options, shape, dtype, device, score), at most
MAX_GRAPHS of them and never beyond the score's lifetime (the cache holds it weakly), until
`clear_graphs()`. The solvers do not know any of this: they iterate `loop.steps(st)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from samplers.kernels.compile import clear_compiled
from samplers.kernels.dispatch import Steps
from samplers.loop import Loop
from samplers.plans import ScoreLRU
from samplers.result import CountingScore
from scorekit.processes import SDE, Score

CAPTURABLE = ("em", "pc", "heun")
MAX_GRAPHS = 8  # cached captures (each holds its graphs' memory pool)
NODE_LIMIT = 20_000  # kernels in one graph above which the loop is captured per step
WARMUP = 3
GRAPH_MODES = ("auto", "loop", "step")


class _Calls:
    """The raw score, counting calls (captured calls are charged per replay, not here). It is
    called only while capturing; the cached entry keeps no strong reference to the score."""

    def __init__(self, score: Score):
        self.score, self.n = score, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.n += 1
        return self.score(x, t)


class _Warmup(Loop):
    """Runs only the first `n` steps of a solve (kernel compilation, workspaces, profiling)
    and records the solve's step count."""

    def __init__(self, n: int = 1):
        super().__init__()
        self.n, self.count = n, 0

    def steps(self, st: Steps) -> Iterator[int]:
        self.count = st.count
        yield from range(min(self.n, st.count))


class _Recorder(Loop):
    """Drives a solve while its kernels are captured: whole, or cut at the step boundaries."""

    def __init__(self, calls: _Calls, pool: Any, per_step: bool):
        super().__init__()
        self.calls, self.pool, self.per_step = calls, pool, per_step
        self.graphs: list[list] = []  # [graph, replays per run, score calls in it]
        self.solves: list[Steps] = []

    def begin(self, replays: int) -> None:
        if self.graphs:
            self.graphs[-1][0].capture_end()
            self.graphs[-1][2] = self.calls.n
        self.calls.n = 0
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self.pool)
        self.graphs.append([graph, replays, 0])

    def end(self) -> None:
        self.graphs[-1][0].capture_end()
        self.graphs[-1][2] = self.calls.n

    def steps(self, st: Steps) -> Iterator[int]:
        self.solves.append(st)
        if not self.per_step:
            yield from range(st.count)
            return
        yield 0
        if st.count > 1:
            self.begin(st.count - 1)
            yield 1  # on the kernel path any index: row and time come from the cursor
        self.begin(1)


@dataclass
class _Entry:
    recorder: _Recorder
    out: Tensor
    x_in: Tensor
    info: dict = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(replays * calls for _, replays, calls in self.recorder.graphs)


_CACHE = ScoreLRU(MAX_GRAPHS)


def clear_graphs() -> None:
    """Drop every cached CUDA graph (and its memory pool) and every compiled score."""
    _CACHE.clear()
    clear_compiled()


def check_capture(method: str, x: Tensor, options: dict[str, Any]) -> None:
    """Raise ValueError unless `method` on `x` can be captured."""
    if not x.is_cuda:
        why = (f"needs CUDA (CUDA graphs); the samples are on {x.device}. Sample without "
               f"capture on this device")
    elif method not in CAPTURABLE:
        why = f"takes the fixed-step methods {sorted(CAPTURABLE)}, got {method!r}"
    elif options.get("use_triton") is False:
        why = "replays the Triton kernels; use_triton=False has none"
    else:
        return
    raise ValueError(f"capture='graph' {why}")


def sample_graphed(counter: CountingScore, sde: SDE, x: Tensor, method: str,
                   solve: Callable[..., tuple[Tensor, dict]], options: dict[str, Any],
                   generator: torch.Generator | None, graph_mode: str = "auto"
                   ) -> tuple[Tensor, dict]:
    """Run `solve` (the method's function) on x: (B, *D) by replaying its cached graphs
    (captured on first use).

    The counter is charged the captured number of score calls per replay, so NFE stays exact;
    its finiteness guard does not run inside the graph (the caller checks the result).
    """
    check_capture(method, x, options)
    if graph_mode not in GRAPH_MODES:
        raise ValueError(f"unknown graph_mode {graph_mode!r}; valid: {list(GRAPH_MODES)}")
    settings = (method, tuple(x.shape), x.dtype, str(x.device), repr(sde), graph_mode,
                tuple(sorted((k, repr(v)) for k, v in options.items())))
    entry = _CACHE.get(counter.score, settings)
    warmup = 0.0
    if entry is None:
        start = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start[0].record()
        entry = _capture(counter.score, sde, x, solve, options, graph_mode)
        start[1].record()
        torch.cuda.synchronize(x.device)
        warmup = start[0].elapsed_time(start[1]) / 1e3
        _CACHE.put(counter.score, settings, entry)
    entry.x_in.copy_(x)
    for st in entry.recorder.solves:  # a fresh Philox seed from the caller's generator
        st.reset(generator)
    for graph, replays, _ in entry.recorder.graphs:
        for _ in range(replays):
            graph.replay()
    counter.counts += entry.calls
    counter.calls += entry.calls
    info = {**entry.info, "capture": "graph", "graph_per_step": entry.recorder.per_step,
            "capture_time": warmup}
    return entry.out.clone(), info


def _kernels(run: Callable[[], Any]) -> int | None:
    """CUDA kernels launched by `run()` (profiled), None if the profiler is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    except Exception:  # noqa: BLE001 - any profiler failure only loses the estimate
        return None


def _capture(score: Score, sde: SDE, x: Tensor, solve: Callable[..., tuple[Tensor, dict]],
             options: dict[str, Any], graph_mode: str) -> _Entry:
    calls = _Calls(score)
    # Capture and warm-up draw their seeds from a scratch generator; each replay then takes
    # exactly one seed from the caller's, as an eager kernel-path solve does.
    scratch = torch.Generator(device=x.device).manual_seed(0)
    x_in = x.clone()

    def run(loop: Loop) -> tuple[Tensor, dict]:
        return solve(calls, sde, x_in, generator=scratch, loop=loop, **options)

    # Warm-up off the capturing stream: compiles the kernels, allocates library workspaces and
    # fills the plan cache, so that capture itself copies nothing from the host.
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            run(_Warmup(1))
        per_step = graph_mode == "step"
        if graph_mode == "auto":  # the kernels of one step: a two-step run minus a one-step run
            first = _Warmup(1)
            one, two = _kernels(lambda: run(first)), _kernels(lambda: run(_Warmup(2)))
            per_step = (one is not None and two is not None
                        and (two - one) * first.count > NODE_LIMIT)
    torch.cuda.current_stream(x.device).wait_stream(side)
    torch.cuda.synchronize(x.device)
    recorder = _Recorder(calls, torch.cuda.graph_pool_handle(), per_step)
    with torch.cuda.stream(side):
        recorder.begin(1)
        try:
            out, info = run(recorder)
        finally:
            recorder.end()
    torch.cuda.current_stream(x.device).wait_stream(side)
    if not recorder.solves or not all(st.fused for st in recorder.solves):
        raise ValueError("capture='graph' needs the Triton kernels: install triton "
                         "(pip install 'scorekit[gpu]')")
    calls.score = None  # the graphs replay without it: the cache must not keep it alive
    return _Entry(recorder, out, x_in, info)

