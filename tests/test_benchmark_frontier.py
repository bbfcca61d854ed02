"""The frontier benchmark measures what it says: the diagonal frame is the same Gaussian, the
frontier picks the best setting within each budget, and a quick run writes its tables and
resumes from its finished blocks."""

import json
import math

import pytest
import torch

from benchmarks import sampler_frontier as sf
from scorekit.sde import VESDE, VPSDE

F64 = torch.float64


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_diagonal_frame_is_the_rotated_gaussian(sde):
    """In the eigenbasis y = x Q the rotated target's score is -(y - alpha m_Q) / (alpha^2 lam +
    sigma^2) per coordinate: written here from the formula and compared with both frames."""
    target = sf.Target("gauss16", sde, 100)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.9 + 0.05
    q = target.q
    if isinstance(sde, VPSDE):
        b = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
        alpha, sigma = torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))
    else:
        alpha, sigma = torch.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    y = x @ q
    want = -(y - alpha[:, None] * (target.m @ q)) / (alpha[:, None] ** 2 * target.lam
                                                     + sigma[:, None] ** 2)
    torch.testing.assert_close(target.fast(y, t), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(target.score(x, t) @ q, want, rtol=1e-9, atol=1e-10)
    # the same samples measured in either frame
    assert target.error(x) == pytest.approx(target.error_fast(y), rel=1e-12)


def test_frontier_takes_the_best_within_each_budget():
    summary = [
        {"target": "g", "sde": "vp", "method": "noise floor", "family": "floor", "nfe": 0.0,
         "error": 0.01, "se": 0.0, "setting": ""},
        {"target": "g", "sde": "vp", "method": "a", "family": "ours", "nfe": 10.0,
         "error": 0.05, "se": 0.001, "setting": ""},
        {"target": "g", "sde": "vp", "method": "b", "family": "ours", "nfe": 20.0,
         "error": 0.02, "se": 0.001, "setting": ""},
        {"target": "g", "sde": "vp", "method": "p", "family": "peer", "nfe": 10.0,
         "error": 0.04, "se": 0.002, "setting": ""},
        {"target": "g", "sde": "vp", "method": "adaptive", "family": "peer", "nfe": 25.0,
         "error": 0.001, "se": 0.0, "setting": ""},
    ]
    rows = {r["nfe"]: r for r in sf.frontier(summary, [10, 20])}
    assert rows[10]["ours"] == "a" and rows[10]["peer"] == "p"
    # 0.05 vs 0.04 with combined SE 0.0022: 2 SE do not cover the gap of 0.01
    assert not rows[10]["at_or_below"] and rows[10]["ratio"] == pytest.approx(1.25)
    # at 20 the adaptive peer's 25 NFE is over budget: ours 0.02 vs the peer's 0.04
    assert rows[20]["ours"] == "b" and rows[20]["peer"] == "p" and rows[20]["at_or_below"]
    assert rows[20]["floor"] == 0.01
    assert rows[20]["no_tp"] == "b" and rows[20]["at_or_below_no_tp"]


def test_frontier_reports_ours_without_teleport_too():
    """A teleported ("+tp") method wins `ours`; `no_tp` is the best of the rest."""
    base = {"target": "g", "sde": "vp", "se": 0.0, "setting": ""}
    summary = [{**base, "method": "a+tp", "family": "ours", "nfe": 10.0, "error": 0.01},
               {**base, "method": "a", "family": "ours", "nfe": 10.0, "error": 0.06},
               {**base, "method": "p", "family": "peer", "nfe": 10.0, "error": 0.04}]
    (row,) = sf.frontier(summary, [10])
    assert (row["ours"], row["at_or_below"]) == ("a+tp", True)
    assert (row["no_tp"], row["no_tp_error"], row["at_or_below_no_tp"]) == ("a", 0.06, False)
    assert row["ratio_no_tp"] == pytest.approx(1.5)


def test_quick_run_writes_tables_and_resumes(tmp_path, monkeypatch):
    payload = sf.run(quick=True, out_dir=str(tmp_path))
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"sampler_frontier_quick.{ext}").stat().st_size > 100
    saved = json.loads((tmp_path / "sampler_frontier_quick.json").read_text())
    assert saved["env"]["command"] and "dirty" in saved["env"]
    methods = {r["method"] for r in payload["rows"]}
    assert {"dpm_solver", "unipc", "heun_edm", "dpm_solver+opt"} <= methods
    if payload["k_diffusion"]:  # installed: its samplers ran beside ours on the same draws
        assert "kd_dpmpp_2m_exponential" in methods
        fr = {r["nfe"]: r for r in payload["frontier"]}
        assert set(fr) == {10, 20} and all(math.isfinite(r["ratio"]) for r in fr.values())
    gains = payload["grid_gain"]
    assert gains and all(g["method"] == "dpm_solver" for g in gains)
    # the finished block is reused: a rerun samples nothing
    monkeypatch.setattr(sf, "_registered", lambda *a, **k: pytest.fail("resampled"))
    again = sf.run(quick=True, out_dir=str(tmp_path))
    assert len(again["rows"]) == len(payload["rows"])
    assert again["block_commits"] == [again["env"]["commit"]]
    # other measured code (another fingerprint): nothing is reused
    monkeypatch.setattr(sf, "code_fingerprint", lambda: "other code")
    with pytest.raises(pytest.fail.Exception, match="resampled"):
        sf.run(quick=True, out_dir=str(tmp_path))


def test_code_fingerprint_follows_the_measured_files_and_their_diff(monkeypatch):
    from benchmarks import _report

    calls = []

    def fake_git(*args):
        calls.append(args)
        return {"ls-files": state["tree"], "diff": state["diff"]}[args[0]]

    monkeypatch.setattr(_report, "_git", fake_git)
    state = {"tree": "100644 aaa 0\tsamplers/api.py", "diff": ""}
    first = _report.code_fingerprint()
    assert _report.code_fingerprint() == first
    assert all("samplers" in a and "scorekit" in a and ":(exclude)benchmarks/results" in a
               for a in calls)
    state["diff"] = "-x\n+y"
    assert _report.code_fingerprint() != first
    state.update(tree="100644 bbb 0\tsamplers/api.py", diff="")
    assert _report.code_fingerprint() != first
    state["tree"] = ""  # not a git checkout
    assert _report.code_fingerprint() == "unknown"


def _strip(rows):
    """The measured fields of each row (wall times differ between runs)."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.mark.slow
def test_jobs_measure_the_same_rows(tmp_path):
    """Two (target, process) pairs in two spawned processes give the rows of one process, in
    the same order (errors equal up to the summation order of another thread count)."""
    one = sf.run(quick=True, sdes=["vp", "ve"], out_dir=str(tmp_path / "one"))
    two = sf.run(quick=True, sdes=["vp", "ve"], out_dir=str(tmp_path / "two"), jobs=2)
    a, b = _strip(one["rows"]), _strip(two["rows"])
    assert {r["sde"] for r in a} == {"vp", "ve"}
    assert [{k: v for k, v in r.items() if k != "error"} for r in a] \
        == [{k: v for k, v in r.items() if k != "error"} for r in b]
    assert [r["error"] for r in b] == pytest.approx([r["error"] for r in a], rel=1e-9)


def _worker_failing_on_b(args, threads, queue):
    """A stand-in pair worker (module level: the spawned process imports it)."""
    queue.put((f"{args[0]}/block", threads))
    if args[0] == "b":
        raise RuntimeError("pair b failed")


def test_parallel_blocks_stream_and_a_failure_raises():
    """Blocks reach the parent as workers put them; a failed pair raises after the running ones
    finish, with what they measured already yielded."""
    got = []
    with pytest.raises(RuntimeError, match="pair b failed"):
        for item in sf._blocks([("a",), ("b",)], 2, worker=_worker_failing_on_b):
            got.append(item)
    assert sorted(k for k, _ in got) == ["a/block", "b/block"]
    assert all(threads >= 1 for _, threads in got)


@pytest.mark.parametrize("kwargs, match", [({"jobs": 0}, "jobs must be"),
                                           ({"targets": ["gauss17"]}, "targets: unknown"),
                                           ({"sdes": ["subvp"]}, "sdes: unknown")])
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sf.run(quick=True, out_dir=str(tmp_path), **kwargs)
