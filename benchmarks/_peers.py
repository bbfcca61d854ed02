"""The peers' own samplers, driven by the same score, for side-by-side benchmarks.

k-diffusion (0.1.1.post1: `pip install --no-deps k-diffusion==0.1.1.post1`) is loaded without its
package `__init__` (which imports its training stack) and with its one torchvision import
(`utils`: transforms.functional, unused by the samplers) stubbed: PyPI's torchvision does not
import beside this torch. The stubs live here, in the benchmark harness, never in the library.

Every peer sees the model as k-diffusion's denoiser D(x~, s) in EDM's variables x~ = x / alpha,
s = sigma / alpha (Tweedie's mean of the same score at x = alpha x~, t = t(s)), starts from the
same prior draws as scorekit (x~_T = x_T / alpha_T) and is charged every call (NFE counted).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable

import torch
from torch import Tensor

from scorekit.processes import Process

KD_SAMPLERS = ("euler", "heun", "lms", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde")
KD_TWO_EVAL = ("heun", "dpm_2")  # 2 evaluations per step, 1 on the last (to sigma 0)
SIGMAS = ("karras", "exponential")


def k_diffusion() -> types.ModuleType | str:
    """k_diffusion.sampling, or a string saying why it cannot be imported."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return "not installed (pip install --no-deps k-diffusion==0.1.1.post1)"
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    if importlib.util.find_spec("torchvision") is None or _torchvision_broken():
        fn, tr, tv = (_stub(n) for n in ("torchvision.transforms.functional",
                                           "torchvision.transforms", "torchvision"))
        tr.functional, tv.transforms = fn, tr
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr,
                            "torchvision.transforms.functional": fn})
    try:
        return importlib.import_module("k_diffusion.sampling")
    except Exception as err:  # noqa: BLE001 - recorded in the table, not raised
        return f"not importable ({type(err).__name__}: {str(err)[:80]})"


def _stub(name: str) -> types.ModuleType:
    # A spec, so that other libraries' find_spec("torchvision") still works (diffusers asks).
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return mod


def _torchvision_broken() -> bool:
    try:
        importlib.import_module("torchvision.transforms.functional")
        return False
    except Exception:  # noqa: BLE001 - e.g. "operator torchvision::nms does not exist"
        sys.modules.pop("torchvision", None)
        return True


class Denoiser:
    """k-diffusion's model(x~, s) -> D from a score under any linear process; counts calls
    per sample."""

    def __init__(self, score: Callable[[Tensor, Tensor], Tensor], sde):
        self.score, self.process = score, Process(sde)
        self.calls = 0

    def __call__(self, x_tilde: Tensor, s: Tensor) -> Tensor:
        self.calls += 1
        t = self.process.t_of_noise_level(s.double()).to(x_tilde.dtype)
        alpha, sigma = self.process.marginal(t)
        a = alpha.reshape(-1, *([1] * (x_tilde.dim() - 1)))
        sg = sigma.reshape_as(a)
        x = a * x_tilde
        return x_tilde + sg**2 / a * self.score(x, t)


def sigmas(kind: str, n: int, sde, dtype: torch.dtype) -> Tensor:
    """n noise levels from s(T) down to s(eps) (Karras' rho = 7, or uniform in log s), then 0."""
    kd = k_diffusion()
    process = Process(sde)
    s_max, s_min = process.noise_level(torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
    fn = kd.get_sigmas_karras if kind == "karras" else kd.get_sigmas_exponential
    return fn(n, s_min, s_max, device="cpu").to(dtype)


def run_kd(name: str, kind: str, nfe: int, score, sde, x_t: Tensor, seed: int
           ) -> tuple[Tensor, float] | None:
    """k-diffusion's `sample_<name>` on `kind` sigmas at about `nfe` evaluations from the prior
    draws x_t (at T); returns (samples, counted NFE per sample), None when nfe cannot match."""
    kd = k_diffusion()
    n = (nfe + 1) // 2 if name in KD_TWO_EVAL else nfe
    if n < 1 or (name == "dpmpp_3m_sde" and n < 2):
        return None
    model = Denoiser(score, sde)
    alpha_t = float(Process(sde).alpha(torch.tensor([sde.T], dtype=torch.float64)))
    sig = sigmas(kind, n, sde, x_t.dtype).to(x_t.device)
    torch.manual_seed(seed)  # the SDE samplers' noise draws from the global RNG
    x_tilde = x_t / alpha_t
    # The SDE samplers default to a Brownian tree (torchsde), which makes a run reproducible
    # across step counts but costs ~40x the rest of the sampler here; k-diffusion's own
    # default_noise_sampler draws independent N(0, I) per step, the same law per run.
    opts = ({"noise_sampler": kd.default_noise_sampler(x_tilde)} if name.endswith("_sde")
            else {})
    with torch.no_grad():
        x0 = getattr(kd, f"sample_{name}")(model, x_tilde, sig, disable=True, **opts)
    return x0, float(model.calls)


def run_kd_adaptive(rtol: float, score, sde, x_t: Tensor, seed: int) -> tuple[Tensor, float]:
    """k-diffusion's DPM-Solver-3 adaptive (`sample_dpm_adaptive`) from s(T) to s(eps), then
    the denoiser at s(eps) (counted): its output is the state at s_min."""
    kd = k_diffusion()
    model = Denoiser(score, sde)
    process = Process(sde)
    s_max, s_min = process.noise_level(torch.tensor([sde.T, sde.eps], dtype=torch.float64)).tolist()
    alpha_t = float(process.alpha(torch.tensor([sde.T], dtype=torch.float64)))
    torch.manual_seed(seed)
    with torch.no_grad():
        x = kd.sample_dpm_adaptive(model, x_t / alpha_t, s_min, s_max, rtol=rtol, atol=rtol,
                                   disable=True)
        x0 = model(x, torch.full((x.shape[0],), s_min, dtype=x.dtype))
    return x0, float(model.calls)


def kd_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("k-diffusion")
    except Exception:  # noqa: BLE001
        return None


__all__ = ["KD_SAMPLERS", "SIGMAS", "Denoiser", "k_diffusion", "run_kd", "run_kd_adaptive",
           "kd_version"]
