"""Record the output of every sampler on fixed seeds, and compare a later tree against it.

A guard for refactors of the sampler core: the public calls below (every method, its main
options, both float dtypes, teleport, FKC, likelihood, streaming) are run on closed-form scores
and their samples, per-sample NFE and numeric info are saved; `compare` reruns them and reports,
per case, whether the outputs are bit-identical and, if not, the largest difference relative to
the samples' scale. CPU only: bit-identity holds on one machine and one torch build.

    python tests/golden_samples.py record golden.safetensors
    python tests/golden_samples.py compare golden.safetensors
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import samplers
from scorekit.data.synthetic import gmm_params
from scorekit.dirichlet import JacobiDiffusion
from scorekit.reflected import ReflectedSDE
from scorekit.scores import EmpiricalScore, GaussianScore, GMMScore
from scorekit.sde import EDMSDE, VESDE, VPSDE, DoubleWellSDE, SubVPSDE

F64, F32 = torch.float64, torch.float32
N = 256
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(), "edm": EDMSDE()}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def _gmm(kind: str):
    return GMMScore(*gmm_params(layout="three"), SDES[kind])


@functools.cache
def _gauss(kind: str, d: int = 4):
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(-1.5, 0.3, d, dtype=F64)
    return GaussianScore(torch.linspace(-1, 1, d, dtype=F64), q @ torch.diag(lam) @ q.T,
                         SDES[kind])


def _teleport(kind: str) -> samplers.GaussianTeleport:
    gs = _gauss(kind)
    return samplers.GaussianTeleport(gs.mean, gs.cov, SDES[kind])


def _sample(score, kind, method, dtype=F64, n=N, d=None, **kw):
    shape = (n, d or score.dim)
    return samplers.sample(score, SDES[kind], shape, method=method, generator=_gen(),
                           dtype=dtype, **kw)


def _cases() -> dict[str, Callable[[], object]]:
    c: dict[str, Callable[[], object]] = {}
    for dt, dn in ((F64, "f64"), (F32, "f32")):
        for kind in SDES:
            c[f"em/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, "em", dt,
                                                     steps=40)
            c[f"pc/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, "pc", dt,
                                                     steps=30, snr=0.05)
            c[f"heun/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, "heun", dt,
                                                       steps=12)
            c[f"ode/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, "ode", dt,
                                                      rtol=1e-4, atol=1e-4)
            c[f"ggf/{kind}/{dn}"] = functools.partial(_sample, _gauss(kind), kind, "ggf", dt,
                                                      abs_tol=0.01, rel_tol=0.05)
            c[f"closed_form/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind,
                                                              "closed_form", dt, steps=20)
            for m in ("dpm_solver", "unipc", "euler_diffusers"):
                c[f"{m}/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, m,
                                                          dt if m != "unipc" else F32, steps=10)
            c[f"fkc/{kind}/{dn}"] = functools.partial(_sample, _gmm(kind), kind, "fkc", dt,
                                                      steps=30, beta=2.0)
        for grid in ("uniform", "quadratic", "edm", "logsnr"):
            c[f"em/vp/grid={grid}/{dn}"] = functools.partial(_sample, _gauss("vp"), "vp", "em",
                                                             dt, steps=25, grid=grid)
            c[f"heun/ve/grid={grid}/{dn}"] = functools.partial(_sample, _gauss("ve"), "ve",
                                                               "heun", dt, steps=9, grid=grid)
        for den in ("mean", "none"):
            c[f"em/ve/denoise={den}/{dn}"] = functools.partial(_sample, _gauss("ve"), "ve",
                                                               "em", dt, steps=25, denoise=den)
            c[f"pc/vp/denoise={den}/{dn}"] = functools.partial(_sample, _gauss("vp"), "vp",
                                                               "pc", dt, steps=20, snr=0.02,
                                                               denoise=den)
        c[f"heun/vp/denoise=none/{dn}"] = functools.partial(_sample, _gauss("vp"), "vp", "heun",
                                                            dt, steps=9, denoise="none")
        c[f"pc/ve/em-pred/{dn}"] = functools.partial(_sample, _gauss("ve"), "ve", "pc", dt,
                                                     steps=20, predictor="em")
        c[f"pc/ve/no-corr/{dn}"] = functools.partial(_sample, _gauss("ve"), "ve", "pc", dt,
                                                     steps=20, corrector="none")
        c[f"pc/ve/per_sample/{dn}"] = functools.partial(_sample, _gauss("ve"), "ve", "pc", dt,
                                                        steps=20, snr_norm="per_sample",
                                                        n_corrector=2)
        c[f"ode/vp/rk4/{dn}"] = functools.partial(_sample, _gauss("vp"), "vp", "ode", dt,
                                                  solver="rk4", steps=15, denoise="tweedie")
        c[f"ode/ve/per_sample_norm/{dn}"] = functools.partial(
            _sample, _gauss("ve"), "ve", "ode", dt, rtol=1e-4, atol=1e-4, per_sample_norm=True)
        for opt in ({"brownian": "bridge"}, {"ode": True}, {"norm": "l2"}, {"norm": "linf"},
                    {"extrapolation": False}, {"stochastic_heun": False},
                    {"use_prev": False, "denoise": "none"}):
            name = ",".join(f"{k}={v}" for k, v in opt.items())
            c[f"ggf/vp/{name}/{dn}"] = functools.partial(_sample, _gmm("vp"), "vp", "ggf", dt,
                                                         abs_tol=0.01, rel_tol=0.05, **opt)
        for m in ("em", "heun", "dpm_solver", "pc", "closed_form", "ode", "ggf"):
            c[f"teleport/{m}/vp/{dn}"] = functools.partial(
                _sample, _gauss("vp"), "vp", m, dt if m != "dpm_solver" else F64,
                teleport=_teleport("vp"), t_start=0.5,
                **({"steps": 10} if m not in ("ode", "ggf") else {}))
        for mode in ("ode", "marginal", "conditional"):
            c[f"teleport/mode={mode}/ve/{dn}"] = functools.partial(
                _sample, _gauss("ve"), "ve", "em", dt, teleport=_teleport("ve"), t_start=0.3,
                teleport_mode=mode, steps=15)
        c[f"teleport/auto/heun/vp/{dn}"] = functools.partial(
            _sample, _gauss("vp"), "vp", "heun", dt, teleport=_teleport("vp"), steps=8)
        c[f"x_init/em/vp/{dn}"] = functools.partial(
            _sample, _gauss("vp"), "vp", "em", dt, steps=10,
            x_init=torch.randn(N, 4, generator=_gen(9), dtype=F64))
        c[f"em/double_well/{dn}"] = functools.partial(_double_well, dt)
        c[f"reflected/em/{dn}"] = functools.partial(_reflected, "em", dt)
        c[f"reflected/pc/{dn}"] = functools.partial(_reflected, "pc", dt)
        c[f"reflected/ode/{dn}"] = functools.partial(_reflected, "reflected_ode", dt)
        c[f"reflected/em-tweedie/{dn}"] = functools.partial(_reflected, "em", dt,
                                                            denoise="tweedie")
        c[f"jacobi/{dn}"] = functools.partial(_jacobi, dt, False)
        c[f"jacobi/known/{dn}"] = functools.partial(_jacobi, dt, True)
        c[f"empirical/closed_form/{dn}"] = functools.partial(_empirical, dt)
    c["fkc_sample/product"] = functools.partial(_fkc, "product")
    c["fkc_sample/cfg"] = functools.partial(_fkc, "cfg")
    c["fkc_sample/anneal/groups"] = functools.partial(_fkc, "anneal", groups=4, n_corrector=0)
    c["likelihood/exact"] = functools.partial(_likelihood, True)
    c["likelihood/hutchinson"] = functools.partial(_likelihood, False)
    c["stream/em"] = _stream
    return c


def _double_well(dtype):
    sde = DoubleWellSDE()
    return samplers.sample(lambda x, t: sde.stationary_score(x), sde, (N, 2), method="em",
                           steps=60, denoise="mean",
                           generator=_gen(), dtype=dtype)


def _reflected(method, dtype, **kw):
    sde = ReflectedSDE(lower=-1.0, upper=2.0)

    def score(x, t):
        return -0.3 * torch.sin(math.pi * (x - sde.lower) / sde.width)

    return samplers.sample(score, sde, (N, 3), method=method, steps=25, generator=_gen(),
                           dtype=dtype, **kw)


@functools.cache
def _jac():
    return JacobiDiffusion(3, T=2.0, n_time=60, n_grid=256,
                           cache_dir=tempfile.mkdtemp(prefix="golden-jacobi-"))


def _jacobi(dtype, known):
    jac = _jac()

    def score(x, t):
        return 0.1 * (x - 1 / 3)

    kw = {}
    if known:
        mask = torch.zeros(64, 5, dtype=torch.bool)
        mask[:, :2] = True
        onehot = torch.nn.functional.one_hot(torch.arange(64 * 5).remainder(3).view(64, 5), 3)
        kw = {"known": mask, "x_known": onehot.to(dtype)}
    return samplers.sample(score, jac, (64, 5, 3), method="jacobi", steps=15, time_dilation=2,
                           time_dilation_start=1.0, generator=_gen(), dtype=dtype, **kw)


def _empirical(dtype):
    sde = SDES["vp"]
    data = _gmm("vp").sample_data(200, generator=_gen(3)).to(dtype)
    emp = EmpiricalScore(data, sde, smoothing=0.05)
    return samplers.sample(emp, sde, (N, 2), method="closed_form", steps=15, generator=_gen(),
                           dtype=dtype)


def _fkc(mode, **kw):
    sde = SDES["vp"]
    w, mu, cov = gmm_params(layout="three")
    other = GMMScore(*gmm_params(layout="ring", n_modes=4, std=0.3), sde)
    scores = [_gmm("vp")] if mode == "anneal" else [_gmm("vp"), other]
    extra = {"guidance": 1.5} if mode == "cfg" else {}
    return samplers.fkc_sample(scores, sde, (N, 2), mode=mode, steps=30, generator=_gen(),
                               dtype=F64, **extra, **kw)


def _likelihood(exact):
    gs = _gauss("vp")
    x = gs.sample_marginal(16, 1e-3, generator=_gen(4))
    logp, info = samplers.log_likelihood(gs, SDES["vp"], x, exact_trace=exact, rtol=1e-6,
                                         atol=1e-6, generator=_gen(5), return_info=True)
    return {"x": logp, "nfe": torch.tensor([info["nfe"], info["vjp_calls"]])}


def _stream():
    with tempfile.TemporaryDirectory() as tmp:
        samplers.sample_to_disk(_gauss("vp"), SDES["vp"], tmp, n=70, sample_shape=4,
                                batch_size=32, seed=3, method="pc", steps=10, dtype=F64,
                                snr=0.05)
        return {"x": samplers.load_samples(tmp)}


def _record(out) -> tuple[dict[str, torch.Tensor], dict]:
    if isinstance(out, dict):
        return out, {}
    tensors = {"x": out.x, "nfe": out.nfe_per_sample}
    lw = getattr(out, "log_weights", None)
    if lw is not None:
        tensors["log_weights"] = lw
    info = {k: v for k, v in out.info.items()
            if k not in ("wall_time", "capture_time") and isinstance(v, (int, float, str, bool))}
    return tensors, info


def run_all(only: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, infos = {}, {}
    for name, fn in _cases().items():
        if only and only not in name:
            continue
        t, info = _record(fn())
        for k, v in t.items():
            tensors[f"{name}::{k}"] = v.detach().cpu().contiguous()
        infos[name] = info
    return tensors, infos


def compare(path: Path, only: str | None = None) -> int:
    want = load_file(str(path))
    want_info = json.loads(Path(str(path) + ".json").read_text())
    have, have_info = run_all(only)
    n_same = n_diff = 0
    for key in sorted(have):
        if key not in want:
            print(f"NEW        {key}")
            continue
        a, b = want[key], have[key]
        if a.shape == b.shape and torch.equal(a, b):
            n_same += 1
            continue
        n_diff += 1
        if a.shape != b.shape:
            print(f"SHAPE      {key}: {tuple(a.shape)} vs {tuple(b.shape)}")
            continue
        diff = (a.double() - b.double()).abs()
        scale = a.double().abs().max().clamp_min(1e-300)
        frac = float((a != b).double().mean())
        print(f"DIFFERENT  {key}: max |diff| {float(diff.max()):.3g} "
              f"(rel {float(diff.max() / scale):.3g}), {100 * frac:.1f} % of entries")
    for name in sorted(have_info):
        if name in want_info and want_info[name] != have_info[name]:
            changed = {k: (want_info[name].get(k), v) for k, v in have_info[name].items()
                       if want_info[name].get(k) != v}
            gone = sorted(set(want_info[name]) - set(have_info[name]))
            if changed or gone:
                print(f"INFO       {name}: {changed} {('removed ' + str(gone)) if gone else ''}")
    print(f"{n_same} identical, {n_diff} different")
    return 0 if n_diff == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("record", "compare"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode == "record":
        tensors, infos = run_all(args.only)
        save_file(tensors, str(args.path))
        Path(str(args.path) + ".json").write_text(json.dumps(infos, indent=1, sort_keys=True))
        print(f"recorded {len(infos)} cases, {len(tensors)} tensors")
        return 0
    return compare(args.path, args.only)


if __name__ == "__main__":
    sys.exit(main())
