"""Figures a person would rather look at: samples next to data, image grids, loss curves."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_panel(ax, loss_history: list[float]) -> None:
    y = torch.tensor(loss_history, dtype=torch.float64)
    ax.plot(y.numpy(), lw=0.8, alpha=0.5, label="per log interval")
    k = max(1, len(y) // 20)
    if len(y) >= k > 1:
        smooth = torch.nn.functional.avg_pool1d(y[None, None], k, 1)[0, 0]
        ax.plot(range(k - 1, len(y)), smooth.numpy(), lw=1.5, label=f"moving mean ({k})")
    if (y > 0).all():
        ax.set_yscale("log")
    ax.set(title="training loss", xlabel="log interval")
    ax.legend(fontsize=7)


def scatter_vs_data(samples: Tensor, data: Tensor, path: str | Path, title: str | None = None,
                    loss_history: list[float] | None = None) -> Path:
    """Side-by-side scatter of held-out data and samples (first two coordinates) -> PNG."""
    plt = _plt()
    s, d = samples.detach().cpu().double().flatten(1), data.detach().cpu().double().flatten(1)
    s = s[torch.isfinite(s).all(1)]
    ncol = 3 if loss_history else 2
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol, 4.2))
    lo = torch.quantile(d[:, :2], 0.001, dim=0) - 0.5
    hi = torch.quantile(d[:, :2], 0.999, dim=0) + 0.5
    for ax, pts, name in ((axes[0], d, "data (held-out)"), (axes[1], s, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.35, lw=0)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), title=f"{name}, n={len(pts)}")
        ax.set_aspect("equal")
    if loss_history:
        _loss_panel(axes[2], loss_history)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_grid(images: Tensor, path: str | Path, nrow: int | None = None,
               title: str | None = None) -> Path:
    """Tile up to 64 images (N, C, H, W) in [-1, 1] into one PNG."""
    plt = _plt()
    x = images[:64].detach().cpu().float().clamp(-1, 1)
    n, c, h, w = x.shape
    nrow = nrow or int(n**0.5 + 0.999)
    ncol = -(-n // nrow)
    canvas = torch.full((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), -1.0)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    img = ((canvas + 1) / 2).permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(4, 4 * ncol / nrow))
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None,
              interpolation="nearest", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_samples_plot(samples: Tensor, data: Tensor, path: str | Path, kind: str,
                      loss_history: list[float] | None = None) -> Path:
    """samples.png: a scatter against data for points, a grid of samples next to data for images."""
    if kind == "image":
        path = Path(path)
        image_grid(data, path.with_name(path.stem + "_data.png"), title="data (held-out)")
        return image_grid(samples, path, title="samples")
    return scatter_vs_data(samples, data, path, loss_history=loss_history)
