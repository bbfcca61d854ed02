"""Plots: the PNGs exist, have the documented panel layout and show what they were given.

Sizes follow from figsize * dpi (120, no tight bbox): a 4.2-inch square per panel for
`save_samples_plot`, 4 inches wide and 4 * rows / cols high for `image_grid`.
"""

import matplotlib
import pytest
import torch
from matplotlib.image import imread

from scorekit.data import make_dataset
from scorekit.evaluation.plotting import _tile, image_grid, save_samples_plot

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOSS = [2.0 / (1 + i) for i in range(50)]


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    return torch.as_tensor(imread(path))[..., :3]  # (H, W, 3) in [0, 1]


def _ink(img: torch.Tensor) -> torch.Tensor:
    """Fraction of non-white pixels."""
    return (img < 0.9).any(-1).double().mean()


@pytest.mark.parametrize("loss", [None, LOSS], ids=["no-loss", "loss"])
@pytest.mark.parametrize("name", ["gmm", "digits"])
def test_save_samples_plot_panels(tmp_path, name, loss):
    ds = make_dataset(name, n_train=500, n_test=64)
    path = tmp_path / "samples.png"
    out = save_samples_plot(ds.train[:64], ds.test, path, ds.kind, loss_history=loss)
    assert out == path and sorted(tmp_path.iterdir()) == [path]
    img = _read_png(path)
    ncol = 3 if loss else 2
    assert img.shape == (504, 504 * ncol, 3)  # 4.2 in * 120 dpi per panel
    # Every panel has something drawn in it (points, an image grid, a loss curve).
    for k in range(ncol):
        assert _ink(img[:, 504 * k:504 * (k + 1)]) > 0.01, k


def test_points_plot_survives_nonfinite_samples(tmp_path):
    ds = make_dataset("moons", n_train=200, n_test=200)
    samples = ds.train.clone()
    samples[::3] = float("nan")
    img = _read_png(save_samples_plot(samples, ds.test, tmp_path / "s.png", ds.kind))
    assert _ink(img[:, 504:]) > 0.01


@pytest.mark.parametrize("n,nrow,size", [(64, None, (480, 480)), (100, None, (480, 480)),
                                         (10, None, (360, 480)), (10, 5, (192, 480))])
def test_image_grid_size(tmp_path, n, nrow, size):
    # Default nrow = ceil(sqrt(n)) images per row, at most 64 images; height 4 * rows / nrow.
    images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    img = _read_png(image_grid(images, tmp_path / "grid.png", nrow=nrow, title="t"))
    assert img.shape[:2] == size


def test_tile_layout():
    # Image i sits at row i // nrow, column i % nrow, with 1-pixel borders of -1 (black).
    x = torch.arange(10, dtype=torch.float32).div(10).view(10, 1, 1, 1).expand(10, 3, 2, 2)
    canvas = _tile(x, nrow=4)
    assert canvas.shape == (3, 3 * 3 + 1, 4 * 3 + 1)
    for i in range(10):
        r, q = divmod(i, 4)
        block = canvas[:, 1 + 3 * r:3 + 3 * r, 1 + 3 * q:3 + 3 * q]
        assert (block == i / 10).all(), i
    assert (canvas[:, 7:, 7:] == -1).all()  # the two empty slots of the last row
    assert (canvas[:, ::3, :] == -1).all() and (canvas[:, :, ::3] == -1).all()


def test_image_grid_shows_pixel_values(tmp_path):
    # A grid of white images (+1) is much brighter than one of black images (-1): the image
    # area (black borders excepted) is white in one and black in the other.
    white = image_grid(torch.ones(16, 1, 8, 8), tmp_path / "w.png")
    black = image_grid(-torch.ones(16, 1, 8, 8), tmp_path / "b.png")
    assert float(_read_png(white).mean()) > float(_read_png(black).mean()) + 0.3


def test_plots_leave_the_backend_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        ds = make_dataset("gmm", n_train=100, n_test=100)
        save_samples_plot(ds.train, ds.test, tmp_path / "a.png", ds.kind, loss_history=LOSS)
        image_grid(torch.zeros(4, 1, 8, 8), tmp_path / "b.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_save_samples_plot_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="'img'"):
        save_samples_plot(torch.zeros(4, 2), torch.zeros(4, 2), tmp_path / "x.png", "img")
