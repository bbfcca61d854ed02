"""Benchmark repetitions draw disjoint per-sample streams. `seed=s` gives sample i the stream
s + i, so repetitions seeded 0, 1, 2 would share all but one sample each and their spread would
understate the sampling noise (it did: FD differed in the third digit between seeds)."""

from collections import defaultdict
from types import SimpleNamespace

import torch

from benchmarks import fd_nfe, learned_nfe, reflected_digits


class _Recorder:
    """A trainer stand-in that records the (seed, n) of every sample call."""

    def __init__(self, shape: tuple[int, ...] = (1, 2, 2)):
        g = torch.Generator().manual_seed(0)
        self.data = SimpleNamespace(test=torch.randn(40, *shape, generator=g) * 0.3,
                                    train=torch.randn(40, *shape, generator=g) * 0.3,
                                    value_range=(-1.0, 1.0), sample_shape=shape)
        self.calls: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def sample(self, n, section, seed):
        self.calls[repr(sorted(section.items()))].append((seed, n))
        g = torch.Generator().manual_seed(sum(len(c) for c in self.calls.values()))
        x = torch.randn(n, *self.data.sample_shape, generator=g) * 0.3
        return SimpleNamespace(x=x, nfe=2.0, nfe_per_sample=torch.full((n,), 2),
                               info={"method": section["method"]})


def _check_disjoint(calls: dict, repetitions: int) -> None:
    assert calls
    for setting, spans in calls.items():
        assert len(spans) == repetitions, setting
        ranges = sorted((s, s + n) for s, n in spans)
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            assert end <= start, f"{setting}: streams {ranges} overlap"


def test_learned_nfe_repetitions_disjoint():
    tr = _Recorder()
    learned_nfe.run(tr, ["em"], n=16, seeds=3, quick=True)
    _check_disjoint(tr.calls, 3)


def test_reflected_digits_repetitions_disjoint():
    tr = _Recorder()
    test = reflected_digits.to_pm1(tr.data.test, tr.data.value_range)
    for seed in range(3):
        reflected_digits.evaluate("vp", tr, 10, 16, seed, test)
    _check_disjoint(tr.calls, 3)


def test_fd_nfe_repetitions_disjoint():
    from scorekit.evaluation.features import FeatureExtractor

    tr = _Recorder()
    score = fd_nfe._Scorer(tr, FeatureExtractor("raw"))
    for seed in range(3):
        score({"method": "em", "steps": 4}, 16, seed)
    _check_disjoint(tr.calls, 3)
