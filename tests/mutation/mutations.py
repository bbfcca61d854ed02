"""The named mutations: each replaces one exact snippet of one file (it must occur once) and
lists the test files that own that code. Sign flips, factor-2 errors, sigma vs sigma^2, an
off-by-one time index, a wrong start distribution, a dropped correction term, a bypassed NFE
counter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def _m(name: str, path: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(name, path, old, new, tuple(f"tests/{t}.py" for t in tests))


LINEAR, STEPS = "scorekit/processes/linear.py", "samplers/steps.py"
MUTATIONS = [
    # processes
    _m("vp_alpha_exponent_half_dropped", LINEAR,
       "return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))",
       "return torch.exp(-b), torch.sqrt(-torch.expm1(-b))", "test_sde", "test_samplers_sde"),
    _m("vp_beta_schedule_sign", LINEAR,
       "return self.beta_min + t * (self.beta_max - self.beta_min)",
       "return self.beta_min - t * (self.beta_max - self.beta_min)",
       "test_sde", "test_samplers_sde"),
    _m("vp_diffusion_sigma_not_sqrt", LINEAR, "        return torch.sqrt(self.beta(t))\n",
       "        return self.beta(t)\n", "test_sde", "test_samplers_sde"),
    _m("ve_sigma_ratio_inverted", LINEAR, "return self.sigma_min * torch.exp(t * self._log_ratio)",
       "return self.sigma_min * torch.exp(-t * self._log_ratio)", "test_sde", "test_samplers_sde"),
    _m("subvp_std_squared", LINEAR, "return torch.exp(-0.5 * b), -torch.expm1(-b)",
       "return torch.exp(-0.5 * b), torch.expm1(-b) ** 2", "test_sde", "test_samplers_ode"),
    _m("vp_noise_level_half_integral", LINEAR,
       "return torch.sqrt(torch.expm1(self.int_beta(t)))",
       "return torch.sqrt(torch.expm1(0.5 * self.int_beta(t)))",
       "test_sde", "test_samplers_multistep"),
    _m("edm_diffusion_factor_2", LINEAR, "        return torch.sqrt(2 * t)\n",
       "        return torch.sqrt(t)\n", "test_sde", "test_samplers_ode", "test_samplers_sde"),
    # predictions
    _m("tweedie_sigma_not_squared", "scorekit/processes/predictions.py",
       "return (x + _b(sigma**2, x) * score) / _b(alpha, x)",
       "return (x + _b(sigma, x) * score) / _b(alpha, x)", "test_sde", "test_samplers_sde"),
    _m("eps_from_score_sign", "scorekit/processes/predictions.py",
       "    return -_b(sigma, score) * score\n", "    return _b(sigma, score) * score\n",
       "test_samplers_multistep", "test_samplers_ode"),
    # objectives
    _m("dsm_likelihood_weight_sigma_not_squared", "scorekit/objectives/dsm.py",
       "return Process(self.sde).diffusion(t) ** 2 / sigma**2",
       "return Process(self.sde).diffusion(t) ** 2 / sigma", "test_objectives_dsm"),
    _m("tsm_mixing_weights_swapped", "scorekit/objectives/tsm.py",
       "return signal / (signal + sigma**2), sigma**2 / (signal + sigma**2)",
       "return sigma**2 / (signal + sigma**2), signal / (signal + sigma**2)",
       "test_objectives_tsm"),
    # samplers: EM, PC, Heun, DDIM-type tables
    _m("em_drift_g2_halved", STEPS,
       "return torch.stack([1 - h * process.drift_rate(t), h * g**2, g * h.sqrt()], dim=1)",
       "return torch.stack([1 - h * process.drift_rate(t), 0.5 * h * g**2, g * h.sqrt()], dim=1)",
       "test_samplers_sde"),
    _m("em_drift_rate_sign", STEPS,
       "return torch.stack([1 - h * process.drift_rate(t), h * g**2, g * h.sqrt()], dim=1)",
       "return torch.stack([1 + h * process.drift_rate(t), h * g**2, g * h.sqrt()], dim=1)",
       "test_samplers_sde"),
    _m("ve_ancestral_noise_variance_doubled", STEPS,
       "return torch.stack([torch.ones_like(dvar), dvar, dvar.sqrt()], dim=1)",
       "return torch.stack([torch.ones_like(dvar), dvar, (2 * dvar).sqrt()], dim=1)",
       "test_samplers_sde"),
    _m("vp_ancestral_rescale_dropped", STEPS, "        k1 = torch.rsqrt(1 - b)\n",
       "        k1 = torch.ones_like(b)\n", "test_samplers_sde"),
    _m("langevin_step_snr_not_squared", STEPS,
       "return 2 * (snr * z_norm / s_norm.clamp_min(torch.finfo(dtype).tiny)) ** 2",
       "return 2 * (snr * z_norm / s_norm.clamp_min(torch.finfo(dtype).tiny))",
       "test_samplers_sde"),
    _m("heun_half_step_full", STEPS,
       "table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[1:], 0.5 * ds], dim=1)",
       "table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[1:], ds], dim=1)",
       "test_samplers_ode"),
    _m("heun_corrector_noise_level_off_by_one", STEPS,
       "table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[1:], 0.5 * ds], dim=1)",
       "table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[:-1], 0.5 * ds], dim=1)",
       "test_samplers_ode"),
    _m("reverse_drift_f_sign", STEPS, "    return per_sample(g2, x) * s - f\n",
       "    return per_sample(g2, x) * s + f\n", "test_samplers_fkc", "test_samplers_ggf"),
    # multistep
    _m("dpm_solver_second_order_term_dropped", "samplers/dpm_solver.py",
       "out = out - math.expm1(-h) / (2 * r) * (d[0] - d[1])",
       "out = out - 0.0 * (d[0] - d[1])", "test_samplers_multistep"),
    _m("dpm_solver_third_order_weight_halved", "samplers/dpm_solver.py",
       "out = out + phi2 * d1 - 2 * phi3 * d2", "out = out + phi2 * d1 - phi3 * d2",
       "test_samplers_multistep"),
    _m("unipc_bh2_phi_sign", "samplers/unipc.py",
       "b_h = hh if variant == \"bh1\" else math.expm1(hh)",
       "b_h = hh if variant == \"bh1\" else -math.expm1(hh)", "test_samplers_multistep"),
    _m("dpm_solver_sde_noise_not_sqrt", "samplers/dpm_solver.py",
       "xt = xt + (path.level[i + 1] * math.sqrt(keep)) * z",
       "xt = xt + (path.level[i + 1] * keep) * z", "test_samplers_multistep"),
    # adaptive
    _m("ggf_heun_average_weight", "samplers/ggf.py", "x_heun = x + 0.5 * (k1 + k2)",
       "x_heun = x + 0.6 * (k1 + k2)", "test_samplers_ggf"),
    _m("ggf_second_stage_noise_at_t", "samplers/ggf.py",
       "g2 = process.diffusion(t - h if stochastic_heun else t)",
       "g2 = process.diffusion(t if stochastic_heun else t - h)", "test_samplers_ggf"),
    _m("ggf_step_controller_exponent_sign", "samplers/ggf.py",
       "factor = (safety * err.double().pow(-exponent)).clamp(max=max_factor)",
       "factor = (safety * err.double().pow(exponent)).clamp(max=max_factor)",
       "test_samplers_ggf"),
    _m("ode_t_clamp_removed", "samplers/ode.py",
       "tt = t.clamp(self.process.eps, self.process.T).to(y.dtype).expand(y.shape[0])",
       "tt = t.to(y.dtype).expand(y.shape[0])", "test_samplers_ode"),
    # FKC
    _m("fkc_starts_from_prior_not_prior_power", "samplers/fkc.py",
       "dtype=dtype) / sum(a) ** 0.5\n", "dtype=dtype)\n",
       "test_samplers_fkc"),
    _m("fkc_method_path_starts_from_prior", "samplers/fkc.py",
       "fkc_loop([score], mode, a, sde, x / sum(a) ** 0.5,", "fkc_loop([score], mode, a, sde, x,",
       "test_samplers_fkc"),
    _m("fkc_anneal_potential_factor", "samplers/fkc.py",
       "return 0.5 * beta * (beta - 1) * g2 * sq[0].pow(2).sum(1)",
       "return beta * (beta - 1) * g2 * sq[0].pow(2).sum(1)", "test_samplers_fkc"),
    _m("fkc_systematic_offset", "samplers/fkc.py",
       "idx = torch.searchsorted(cdf, (k + u) / n, right=True)",
       "idx = torch.searchsorted(cdf, (k + 0.5) / n, right=True)", "test_samplers_fkc"),
    # teleport
    _m("teleport_conditional_noise_dropped", "samplers/teleport.py",
       "return (a1 * mean + drift + noise).reshape(x.shape)",
       "return (a1 * mean + drift).reshape(x.shape)", "test_samplers_teleport"),
    _m("teleport_ode_map_variance_ratio_inverted", "samplers/teleport.py",
       "out = a1 * mean + self._apply(delta, (c1 / c0).sqrt(), (p1 / p0) ** 0.5)",
       "out = a1 * mean + self._apply(delta, (c0 / c1).sqrt(), (p1 / p0) ** 0.5)",
       "test_samplers_teleport"),
    # closed-form scores
    _m("gmm_score_component_variance_no_alpha2", "scorekit/scores/gaussian.py",
       "c = alpha**2 * self.eigvals.to(dt) + sigma**2",
       "c = alpha * self.eigvals.to(dt) + sigma**2", "test_scores"),
    _m("lowrank_gaussian_mean_not_scaled", "scorekit/scores/gaussian.py",
       "delta = xf - alpha * mean\n        y = delta @ u",
       "delta = xf - mean\n        y = delta @ u", "test_scores", "test_samplers_teleport"),
    _m("empirical_logit_scale", "scorekit/scores/empirical.py",
       "    logits = logits * inv2[:, None]\n", "    logits = logits * 2 * inv2[:, None]\n",
       "test_empirical"),
    # reflected and Dirichlet
    _m("fold_reflection_wrong", "scorekit/processes/reflected.py",
       "y = torch.where(y > width, 2 * width - y, y)", "y = torch.where(y > width, y - width, y)",
       "test_reflected", "test_samplers_reflected"),
    _m("heat_kernel_cosine_series_factor", "scorekit/processes/reflected.py",
       "p = 1 + 2 * (a * torch.cos(n * math.pi * y[..., None])).sum(-1)",
       "p = 1 + (a * torch.cos(n * math.pi * y[..., None])).sum(-1)", "test_reflected"),
    _m("jacobi_sampler_drift_sign", "samplers/jacobi.py",
       "drift = g * gv + s * (1 - 2 * v) - 0.5 * s * (a * (1 - v) - b * v)",
       "drift = g * gv + s * (1 - 2 * v) + 0.5 * s * (a * (1 - v) - b * v)",
       "test_samplers_jacobi"),
    # grids, accounting, randomness
    _m("edm_grid_rho_inverted", "samplers/grids.py", "            r = 1 / grid.rho\n",
       "            r = grid.rho\n", "test_samplers_ode", "test_samplers_api"),
    _m("nfe_counter_bypassed", "samplers/result.py", "            self._pending += 1\n",
       "            pass\n", "test_samplers_api"),
    _m("seed_streams_shared_counter", "scorekit/rng.py", "            self.blocks += nblocks\n",
       "            self.blocks[0] += nblocks\n", "test_samplers_seeds"),
    _m("box_muller_sin_for_cos", "scorekit/rng.py",
       "z = torch.stack([r_a * torch.cos(th_a), r_a * torch.sin(th_a),",
       "z = torch.stack([r_a * torch.sin(th_a), r_a * torch.sin(th_a),",
       "test_samplers_seeds"),
]


def check(m: Mutation, root: Path = ROOT) -> str:
    """The mutated source of m's file; raises ValueError if the snippet is not there exactly
    once or the result does not compile."""
    source = (root / m.path).read_text()
    count = source.count(m.old)
    if count != 1:
        raise ValueError(f"{m.name}: snippet found {count} times in {m.path}")
    mutated = source.replace(m.old, m.new)
    compile(mutated, m.path, "exec")
    return mutated
