"""Figures a person would rather look at: samples next to data, image grids, loss curves."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

# Figures are built with `Figure` rather than pyplot so that saving a plot neither needs nor
# switches the user's matplotlib backend (e.g. a notebook's inline one).


def _loss_panel(ax, loss_history: list[float], log_every: int | None = None) -> None:
    """Mean loss of each log interval, against the training step when `log_every` is known."""
    from matplotlib.ticker import MaxNLocator

    y = torch.tensor(loss_history, dtype=torch.float64)
    every = log_every or 1
    x = (torch.arange(1, len(y) + 1) * every).numpy()
    ax.plot(x, y.numpy(), lw=0.8, alpha=0.5, label="mean per log interval")
    k = max(1, len(y) // 20)
    if len(y) >= k > 1:
        smooth = torch.nn.functional.avg_pool1d(y[None, None], k, 1)[0, 0]
        ax.plot(x[k - 1:], smooth.numpy(), lw=1.5, label=f"moving mean ({k})")
    if (y > 0).all():
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="training loss", xlabel="training step" if log_every else "log interval")
    ax.legend(fontsize=7)


def scatter_vs_data(samples: Tensor, data: Tensor, path: str | Path, title: str | None = None,
                    loss_history: list[float] | None = None, log_every: int | None = None,
                    data_title: str = "data (held-out)") -> Path:
    """Side-by-side scatter of held-out data and samples (first two coordinates) -> PNG."""
    s, d = samples.detach().cpu().double().flatten(1), data.detach().cpu().double().flatten(1)
    s = s[torch.isfinite(s).all(1)]
    ncol = 3 if loss_history else 2
    fig = Figure(figsize=(4.2 * ncol, 4.2))
    axes = fig.subplots(1, ncol)
    lo = torch.quantile(d[:, :2], 0.001, dim=0) - 0.5
    hi = torch.quantile(d[:, :2], 0.999, dim=0) + 0.5
    lo, hi = lo.tolist(), hi.tolist()  # tensors as axis limits warn under NumPy 2
    for ax, pts, name in ((axes[0], d, data_title), (axes[1], s, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.35, lw=0)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), title=f"{name}, n={len(pts)}")
        ax.set_aspect("equal")
    if loss_history:
        _loss_panel(axes[2], loss_history, log_every)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _tile(images: Tensor, nrow: int | None = None) -> Tensor:
    """Up to 64 images (N, C, H, W) in [-1, 1] -> canvas (C, rows*(H+1)+1, nrow*(W+1)+1)."""
    x = images[:64].detach().cpu().float().clamp(-1, 1)
    n, c, h, w = x.shape
    nrow = nrow or int(n**0.5 + 0.999)
    ncol = -(-n // nrow)
    canvas = torch.full((c, ncol * (h + 1) + 1, nrow * (w + 1) + 1), -1.0)
    for i in range(n):
        r, q = divmod(i, nrow)
        canvas[:, 1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
    return canvas


def _grid_panel(ax, canvas: Tensor, title: str | None) -> None:
    img = ((canvas + 1) / 2).permute(1, 2, 0).numpy()
    gray = canvas.shape[0] == 1
    ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None,
              interpolation="nearest", vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)


def image_grid(images: Tensor, path: str | Path, nrow: int | None = None,
               title: str | None = None) -> Path:
    """Tile up to 64 images (N, C, H, W) in [-1, 1] into one PNG."""
    canvas = _tile(images, nrow)
    h, w = images.shape[-2:]
    rows, cols = (canvas.shape[1] - 1) // (h + 1), (canvas.shape[2] - 1) // (w + 1)
    fig = Figure(figsize=(4, 4 * rows / cols))
    _grid_panel(fig.subplots(), canvas, title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def save_samples_plot(samples: Tensor, data: Tensor, path: str | Path, kind: str,
                      loss_history: list[float] | None = None,
                      value_range: tuple[float, float] = (-1.0, 1.0),
                      log_every: int | None = None, data_title: str = "data (held-out)"
                      ) -> Path:
    """samples.png: a scatter against data for points, a grid of samples next to data for images
    (pixel values in `value_range`, shown black to white); with `loss_history`, a training-loss
    panel on the right (against the training step when `log_every` is given)."""
    if kind not in ("points", "image"):
        raise ValueError(f"kind must be 'points' or 'image', got {kind!r}")
    if kind == "points":
        return scatter_vs_data(samples, data, path, loss_history=loss_history,
                               log_every=log_every, data_title=data_title)
    lo, hi = value_range
    if not lo < hi:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    samples, data = ((2 * (v - lo) / (hi - lo) - 1) for v in (samples, data))
    ncol = 3 if loss_history else 2
    fig = Figure(figsize=(4.2 * ncol, 4.2))
    axes = fig.subplots(1, ncol)
    _grid_panel(axes[0], _tile(data), data_title)
    _grid_panel(axes[1], _tile(samples), "samples")
    if loss_history:
        _loss_panel(axes[2], loss_history, log_every)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _board_panel(ax, puzzle: Tensor, solution: Tensor, title: str) -> None:
    """A 9x9 board: givens in black, filled-in digits in blue, box lines thicker."""
    ax.set(xlim=(0, 9), ylim=(9, 0), title=title)
    ax.set_xticks([])
    ax.set_yticks([])
    for i in range(10):
        lw = 1.6 if i % 3 == 0 else 0.4
        ax.axhline(i, color="k", lw=lw)
        ax.axvline(i, color="k", lw=lw)
    for r in range(9):
        for c in range(9):
            given = int(puzzle[r, c]) > 0
            ax.text(c + 0.5, r + 0.5, str(int(solution[r, c])), ha="center", va="center",
                    fontsize=7, color="k" if given else "tab:blue",
                    fontweight="bold" if given else "normal")
    ax.set_aspect("equal")


def sudoku_plot(per_clues: dict[int, dict], examples: tuple[Tensor, Tensor] | None,
                path: str | Path, loss_history: list[float] | None = None,
                log_every: int | None = None) -> Path:
    """Solved fraction vs number of clues, two example solutions and the loss curve -> PNG."""
    n_ex = 0 if examples is None else min(2, len(examples[0]))
    ncol = 1 + n_ex + (1 if loss_history else 0)
    fig = Figure(figsize=(4.0 * ncol, 4.0))
    axes = list(fig.subplots(1, ncol)) if ncol > 1 else [fig.subplots()]
    clues = sorted(per_clues)
    ax = axes.pop(0)
    ax.plot(clues, [per_clues[c]["solved_fraction"] for c in clues], "o-",
            label="solved (rows, cols, boxes)")
    ax.plot(clues, [per_clues[c].get("rows_cols_only_fraction", float("nan")) for c in clues],
            "s--", label="rows + cols only")
    ax.set(xlabel="clues", ylabel="fraction of puzzles", ylim=(0, 1.02),
           title="held-out puzzles solved")
    ax.legend(fontsize=7)
    for i in range(n_ex):
        _board_panel(axes.pop(0), examples[0][i], examples[1][i], f"example {i + 1}")
    if loss_history:
        _loss_panel(axes.pop(0), loss_history, log_every)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
