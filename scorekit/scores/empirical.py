"""Closed-form (smoothed) score of an empirical distribution, computed as attention.

For data {x_i} (N points) under a linear process, p_t = (1/N) sum_i N(alpha x_i, sigma^2 I) and
grad log p_t(x) = (alpha m(x) - x) / sigma^2, m(x) = sum_i w_i x_i,
w = softmax_i(-|x - alpha x_i|^2 / (2 sigma^2)) = softmax_i(-|u - x_i|^2 / (2 lam^2)) with the
rescaled query u = x / alpha and lam = sigma / alpha: attention with query u and keys/values x_i
(Scarvelis, Borde & Solomon 2023, "Closed-Form Diffusion Models").

Attention form: -|u - x_i|^2 / (2 lam^2) = <q, k_i> - |u|^2 / (2 lam^2) with
q = [u / lam^2, -1 / (2 lam^2)] and k_i = [x_i, |x_i|^2]; the last term is constant per query and
cancels in the softmax. The bias rides as an extra key column against a per-row query column (so
every row may have its own t); the head dim is zero-padded to a multiple of 8 for fused kernels.

Keys are streamed in chunks; a chunk returns its normalised output o_c and L_c = logsumexp of its
logits, merged exactly: L = logaddexp(L, L_c), o = o e^(L_old - L) + o_c e^(L_c - L). Memory is
O(R d + chunk d) plus the R x chunk logit block for kernels that are not fused (R query rows).

Smoothing (sigma_s > 0): m_s(x) = E_n m(x + sigma_s n), n ~ N(0, I), over a fixed bank of M draws
(so the score is a deterministic function, as ODE solvers need); each draw is one more query row,
normalised by its own softmax and averaged afterwards, so chunking is unchanged. The score is
(alpha m_s(x) - x) / sigma^2: the query is perturbed, the -x term is not (objectives §7.1).

Precision rule (kernel="auto"): the dot-product form cancels terms of size |u| |x_i| / lam^2 and
|x_i|^2 / (2 lam^2), so its absolute logit error is about
    err = eps_mach * sqrt(D) * K (U + K / 2) / lam_min^2,   U = max |u|, K = max |x_i|
(sqrt(D) for the rounding of a D-term sum). If err > 0.01 nats (weights off by ~1 %) the direct
kernel is used: |u - x_i|^2 from differences (cdist without the matmul expansion), exact to
rounding relative to the distance itself. Unit-scale data in fp32 keep SDPA down to lam ~ 1e-2;
fp16/bf16 (eps 1e-3 / 8e-3) only for lam of order 1, otherwise the call is computed in fp32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scorekit._validate import check_score_input
from scorekit.processes.base import SDE, Process, per_sample
from scorekit.processes.predictions import score_from_x0

__all__ = ["EmpiricalScore", "KERNELS"]

KERNELS = ("auto", "sdpa", "direct")
_LOGIT_TOL = 1e-2  # nats of logit error the SDPA form may incur before "auto" goes direct
_AUTO_BLOCK = 4_000_000  # R x chunk elements per materialised logit block


def _sdpa_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """softmax(q k^T) v and logsumexp(q k^T) per row; q: (R, D), k, v: (C, D) -> (R, D), (R,).

    The fused kernels behind `scaled_dot_product_attention` that also return the log-normaliser
    (needed to merge key chunks; the public function drops it); any other device / dtype, or a
    kernel that refuses the input, falls back to the same formula with an explicit (R, C) block.
    """
    q4, k4, v4 = q[None, None], k[None, None], v[None, None]
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q4, k4, v4, 0.0, False, scale=1.0)[:2]
        return out[0, 0], lse[0, 0]
    if q.device.type == "cuda" and q.dtype != torch.float64:
        try:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                q4, k4, v4, None, True, scale=1.0)[:2]
            return out[0, 0], lse[0, 0, : q.shape[0]]  # lse rows may be padded to a block
        except RuntimeError:
            pass
    logits = q @ k.T
    lse = torch.logsumexp(logits, 1)
    return torch.exp(logits - lse[:, None]) @ v, lse


def _direct_lse(u: Tensor, inv2: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Same as `_sdpa_lse` from exact distances: logits -|u - x_i|^2 * inv2; u: (R, d)."""
    logits = -torch.cdist(u, keys, compute_mode="donot_use_mm_for_euclid_dist").square()
    logits = logits * inv2[:, None]
    lse = torch.logsumexp(logits, 1)
    return torch.exp(logits - lse[:, None]) @ keys, lse


def _merge(acc: tuple[Tensor, Tensor] | None, out: Tensor, lse: Tensor
           ) -> tuple[Tensor, Tensor]:
    """Online-softmax merge of (normalised output, log-normaliser) pairs of two key sets."""
    if acc is None:
        return out, lse
    a_out, a_lse = acc
    new = torch.logaddexp(a_lse, lse)
    return (a_out * torch.exp(a_lse - new)[:, None] + out * torch.exp(lse - new)[:, None], new)


class EmpiricalScore(nn.Module):
    """Exact score of the (smoothed) empirical distribution of `data` (N, *D) noised by `sde`.

    Call as `score(x, t)`, x: (B, *D), t: (B,). `smoothing` sigma_s (data units, >= 0) with
    `n_smooth` fixed draws; `chunk_size` keys per chunk (None: all keys in one fused call, or
    blocks of ~4e6 logits for the direct kernel); `kernel` "auto" | "sdpa" | "direct" (see the
    module docstring); `knn=k` switches to the nearest-neighbour estimator with `knn_samples`
    uniformly drawn other points (seeded by `seed`, so repeated calls agree).
    """

    def __init__(self, data: Tensor, sde: SDE, smoothing: float = 0.0,
                 chunk_size: int | None = None, n_smooth: int = 16, kernel: str = "auto",
                 knn: int | None = None, knn_samples: int = 64, seed: int = 0):
        super().__init__()
        data = torch.as_tensor(data)
        if data.dim() < 2 or data.shape[0] < 1 or data[0].numel() < 1:
            raise ValueError(f"data must have shape (N, *D) with N >= 1, got {tuple(data.shape)}")
        if not torch.is_floating_point(data):
            data = data.to(torch.get_default_dtype())
        if not torch.isfinite(data).all():
            raise ValueError("data contain non-finite values")
        if not (isinstance(smoothing, (int, float)) and math.isfinite(smoothing)
                and smoothing >= 0):
            raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
        for name, val, lo in (("chunk_size", chunk_size, 1), ("n_smooth", n_smooth, 1),
                              ("knn", knn, 1), ("knn_samples", knn_samples, 0)):
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < lo):
                raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; valid: {list(KERNELS)}")
        self.sde = sde
        self.dim = data[0].numel()
        self.smoothing, self.chunk_size, self.kernel = float(smoothing), chunk_size, kernel
        self.knn, self.knn_samples, self.seed = knn, knn_samples, seed
        flat = data.reshape(data.shape[0], self.dim)
        self.register_buffer("data", flat.clone())
        gen = torch.Generator().manual_seed(seed)
        m = n_smooth if smoothing > 0 else 0
        bank = torch.randn(m, self.dim, generator=gen, dtype=torch.float64)
        self.register_buffer("noise_bank", bank.to(flat.dtype))
        self._keys: dict[tuple, tuple[Tensor, Tensor, float]] = {}

    @property
    def n_smooth(self) -> int:
        return self.noise_bank.shape[0]

    def _key_cache(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
        """SDPA keys [x_i, |x_i|^2, 0...] and values [x_i, 0...], (N, D), plus max |x_i|."""
        tag = (self.data.data_ptr(), self.data.device, dtype)
        if tag not in self._keys:
            self._keys.clear()
            x = self.data.to(dtype)
            n, d = x.shape
            width = 8 * math.ceil((d + 1) / 8)
            k = torch.zeros(n, width, dtype=dtype, device=x.device)
            v = torch.zeros(n, width, dtype=dtype, device=x.device)
            k[:, :d], v[:, :d] = x, x
            # |x_i|^2 in float64, in row blocks so the cache costs O(N) and no O(N d) temporary
            sq = torch.cat([b.double().square().sum(1) for b in self.data.split(65536)])
            k[:, d] = sq.to(dtype)
            self._keys[tag] = (k, v, float(sq.max().sqrt()))
        return self._keys[tag]

    def _pick(self, u: Tensor, lam: Tensor) -> tuple[str, torch.dtype]:
        """(kernel, compute dtype) by the precision rule of the module docstring."""
        dtype = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
        if self.kernel != "auto":
            return self.kernel, u.dtype if self.kernel == "sdpa" else dtype
        keys, _, big_k = self._key_cache(dtype)
        width = keys.shape[1]
        big_u = float(u.detach().norm(dim=1).max())
        lam_min = float(lam.min())
        for dt in dict.fromkeys((u.dtype, dtype)):
            err = torch.finfo(dt).eps * math.sqrt(width) * big_k * (big_u + big_k / 2)
            if err <= _LOGIT_TOL * lam_min**2:
                return "sdpa", dt
        return "direct", dtype

    def posterior_mean(self, u: Tensor, lam: Tensor) -> Tensor:
        """m(u) = sum_i softmax_i(-|u - x_i|^2 / (2 lam^2)) x_i per row; u: (R, d), lam: (R,)."""
        if self.knn is not None:
            return self._knn_mean(u, lam)
        kernel, dt = self._pick(u, lam)
        uc, lc = u.to(dt), lam.to(dt)
        n = self.data.shape[0]
        if kernel == "sdpa":
            k, v, _ = self._key_cache(dt)
            inv = 1 / lc**2
            q = torch.zeros(u.shape[0], k.shape[1], dtype=dt, device=u.device)
            q[:, : self.dim] = uc * inv[:, None]
            q[:, self.dim] = -0.5 * inv
            chunk = self.chunk_size or n
        else:
            keys = self.data.to(dt)
            inv2 = 0.5 / lc**2
            chunk = self.chunk_size or max(1, _AUTO_BLOCK // u.shape[0])
        if kernel == "sdpa" and chunk >= n:  # one call: the public fused kernel, no merge
            out = nn.functional.scaled_dot_product_attention(q[None, None], k[None, None],
                                                             v[None, None], scale=1.0)
            return out[0, 0, :, : self.dim].to(u.dtype)
        acc = None
        for s in range(0, n, chunk):
            if kernel == "sdpa":
                out, lse = _sdpa_lse(q, k[s:s + chunk], v[s:s + chunk])
                out = out[:, : self.dim]
            else:
                out, lse = _direct_lse(uc, inv2, keys[s:s + chunk])
            acc = _merge(acc, out.to(lse.dtype), lse)
        return acc[0].to(u.dtype)

    def _knn_mean(self, u: Tensor, lam: Tensor) -> Tensor:
        """Nearest-neighbour estimate of m(u): the k nearest x_i exactly plus l uniform draws
        from the other N - k, weighted (N - k) / l in the softmax normaliser (DEANN-style)."""
        keys = self.data.to(u.dtype)
        n, r = keys.shape[0], u.shape[0]
        k = min(self.knn, n)
        chunk = max(k, _AUTO_BLOCK // r)
        best_d = best_i = None
        for s in range(0, n, chunk):
            d2 = torch.cdist(u, keys[s:s + chunk], compute_mode="donot_use_mm_for_euclid_dist")
            idx = torch.arange(s, s + d2.shape[1], device=u.device).expand(r, -1)
            if best_d is not None:
                d2, idx = torch.cat([best_d, d2], 1), torch.cat([best_i, idx], 1)
            best_d, pos = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False)
            best_i = idx.gather(1, pos)
        inv2 = 0.5 / lam**2
        logits, idx = -best_d.square() * inv2[:, None], best_i
        l_draw = self.knn_samples if n > k else 0
        if l_draw > 0:
            gen = torch.Generator(u.device).manual_seed(self.seed)
            rank = torch.randint(0, n - k, (r, l_draw), generator=gen, device=u.device)
            for s in best_i.sort(1).values.T:  # rank -> index, skipping the neighbours in order
                rank = rank + (rank >= s[:, None])
            d2 = (u[:, None, :] - keys[rank]).square().sum(-1)
            logits = torch.cat([logits, -d2 * inv2[:, None] + math.log((n - k) / l_draw)], 1)
            idx = torch.cat([idx, rank], 1)
        w = torch.softmax(logits, 1)
        return torch.einsum("rk,rkd->rd", w, keys[idx])

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """Smoothed posterior mean m_s(x) = E[x0 | x_t = x] (averaged over the noise bank);
        x: (B, *D), t: (B,) -> (B, *D)."""
        check_score_input(x, t, self.dim, self.sde, self.data.device)
        b, d = x.shape[0], self.dim
        alpha, sigma = Process(self.sde).marginal(t.to(x.dtype))
        rows = x.reshape(b, d)
        m = max(self.n_smooth, 1)
        if self.n_smooth:
            bank = self.noise_bank.to(device=x.device, dtype=x.dtype)
            rows = (rows[:, None, :] + self.smoothing * bank).reshape(b * m, d)
        alpha_r, lam_r = alpha.repeat_interleave(m), (sigma / alpha).repeat_interleave(m)
        mean = self.posterior_mean(rows / alpha_r[:, None], lam_r)
        return mean.reshape(b, m, d).mean(1).reshape(x.shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Score (alpha m_s(x) - x) / sigma^2; x: (B, *D), t: (B,) -> (B, *D)."""
        m = self.denoise(x, t)  # validates x and t
        alpha, sigma = Process(self.sde).marginal(t.to(x.dtype))
        return score_from_x0(x, m, alpha, sigma)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity dx/dt = alpha' m + sigma' (x - alpha m) / sigma (the
        expected velocity of x_t = alpha x0 + sigma noise); x: (B, *D), t: (B,) -> (B, *D)."""
        with torch.enable_grad():  # alpha', sigma' by autograd: each is per-sample in t
            tt = t.detach().to(x.dtype).requires_grad_(True)
            alpha, sigma = Process(self.sde).marginal(tt)
            d_alpha, d_sigma = (torch.autograd.grad(v.sum(), tt, retain_graph=True)[0]
                                for v in (alpha, sigma))
        a, s = per_sample(alpha.detach(), x), per_sample(sigma.detach(), x)
        m = self.denoise(x, t)
        return per_sample(d_alpha, x) * m + per_sample(d_sigma, x) * (x - a * m) / s

    def extra_repr(self) -> str:
        return (f"N={self.data.shape[0]}, d={self.dim}, smoothing={self.smoothing:g}, "
                f"n_smooth={self.n_smooth}, chunk_size={self.chunk_size}, kernel={self.kernel!r}, "
                f"knn={self.knn}")
