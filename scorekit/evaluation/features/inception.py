"""The FID InceptionV3 (TensorFlow graph `2015-12-05`, pool3 features, 2048-d) in pure torch.

This is the network FID numbers are reported with (Heusel et al. 2017), not torchvision's
ImageNet InceptionV3: three TF details differ and all change the features —
- average pools inside blocks exclude the zero padding from the mean (TF's SAME pooling);
- the last block (Mixed_7c) pools its side branch with a 3x3 *max* pool, not an average;
- the input is resized to 299x299 with TF1's bilinear rule (source = dst * in/out, no half-pixel
  offset) and scaled as (u - 128) / 128 from 8-bit values u.
Parameter names follow the converted checkpoints (`weights-inception-2015-12-05-6726825d.pth`),
so their state_dict loads strictly; `fc` (1008 classes) is kept for that reason only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 299


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _conv(cin: int, cout: int, kernel, stride: int = 1) -> ConvBN:
    # Inside the mixed blocks every stride-1 conv is SAME-padded, every stride-2 one VALID.
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (k[0] // 2, k[1] // 2) if stride == 1 else 0
    return ConvBN(cin, cout, k, stride, pad)


class Mixed(nn.Module):
    """An Inception block given as data: parallel `paths` of named convs, concatenated.

    A path is a sequence of conv names; a final pair `(a, b)` forks: both convs see the same
    input and their outputs are concatenated. `pool` is "avg" (3x3, stride 1, padding excluded),
    "max1" (3x3, stride 1) — each followed by the conv `branch_pool` — or "max2" (3x3, stride 2,
    no conv). The pooled branch comes last.
    """

    def __init__(self, convs: dict[str, ConvBN], paths: list[tuple], pool: str):
        super().__init__()
        for name, module in convs.items():
            self.add_module(name, module)
        self.paths, self.pool = paths, pool

    def _path(self, x: Tensor, path: tuple) -> Tensor:
        for step in path:
            if isinstance(step, tuple):
                return torch.cat([getattr(self, s)(x) for s in step], 1)
            x = getattr(self, step)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        outs = [self._path(x, p) for p in self.paths]
        if self.pool == "max2":
            outs.append(F.max_pool2d(x, 3, stride=2))
        elif self.pool == "max1":
            outs.append(self.branch_pool(F.max_pool2d(x, 3, stride=1, padding=1)))
        else:
            outs.append(self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1,
                                                      count_include_pad=False)))
        return torch.cat(outs, 1)


def _block_a(cin: int, pool_features: int) -> Mixed:
    return Mixed({"branch1x1": _conv(cin, 64, 1),
                  "branch5x5_1": _conv(cin, 48, 1), "branch5x5_2": _conv(48, 64, 5),
                  "branch3x3dbl_1": _conv(cin, 64, 1), "branch3x3dbl_2": _conv(64, 96, 3),
                  "branch3x3dbl_3": _conv(96, 96, 3), "branch_pool": _conv(cin, pool_features, 1)},
                 [("branch1x1",), ("branch5x5_1", "branch5x5_2"),
                  ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")], "avg")


def _block_b(cin: int) -> Mixed:
    return Mixed({"branch3x3": _conv(cin, 384, 3, 2),
                  "branch3x3dbl_1": _conv(cin, 64, 1), "branch3x3dbl_2": _conv(64, 96, 3),
                  "branch3x3dbl_3": _conv(96, 96, 3, 2)},
                 [("branch3x3",), ("branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")],
                 "max2")


def _block_c(cin: int, c7: int) -> Mixed:
    row, col = (1, 7), (7, 1)
    convs = {"branch1x1": _conv(cin, 192, 1),
             "branch7x7_1": _conv(cin, c7, 1), "branch7x7_2": _conv(c7, c7, row),
             "branch7x7_3": _conv(c7, 192, col),
             "branch7x7dbl_1": _conv(cin, c7, 1), "branch7x7dbl_2": _conv(c7, c7, col),
             "branch7x7dbl_3": _conv(c7, c7, row), "branch7x7dbl_4": _conv(c7, c7, col),
             "branch7x7dbl_5": _conv(c7, 192, row), "branch_pool": _conv(cin, 192, 1)}
    return Mixed(convs, [("branch1x1",), ("branch7x7_1", "branch7x7_2", "branch7x7_3"),
                         tuple(f"branch7x7dbl_{i}" for i in range(1, 6))], "avg")


def _block_d(cin: int) -> Mixed:
    convs = {"branch3x3_1": _conv(cin, 192, 1), "branch3x3_2": _conv(192, 320, 3, 2),
             "branch7x7x3_1": _conv(cin, 192, 1), "branch7x7x3_2": _conv(192, 192, (1, 7)),
             "branch7x7x3_3": _conv(192, 192, (7, 1)), "branch7x7x3_4": _conv(192, 192, 3, 2)}
    return Mixed(convs, [("branch3x3_1", "branch3x3_2"),
                         tuple(f"branch7x7x3_{i}" for i in range(1, 5))], "max2")


def _block_e(cin: int, pool: str) -> Mixed:
    convs = {"branch1x1": _conv(cin, 320, 1),
             "branch3x3_1": _conv(cin, 384, 1), "branch3x3_2a": _conv(384, 384, (1, 3)),
             "branch3x3_2b": _conv(384, 384, (3, 1)),
             "branch3x3dbl_1": _conv(cin, 448, 1), "branch3x3dbl_2": _conv(448, 384, 3),
             "branch3x3dbl_3a": _conv(384, 384, (1, 3)),
             "branch3x3dbl_3b": _conv(384, 384, (3, 1)), "branch_pool": _conv(cin, 192, 1)}
    return Mixed(convs, [("branch1x1",), ("branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
                         ("branch3x3dbl_1", "branch3x3dbl_2",
                          ("branch3x3dbl_3a", "branch3x3dbl_3b"))], pool)


def resize_matrix(n_in: int, n_out: int, dtype=torch.float64, device=None) -> Tensor:
    """(n_out, n_in) TF1 bilinear resampling (align_corners=False): output i reads the input
    at i * n_in / n_out, interpolating its two neighbours (the upper one clamped to the edge)."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w.to(dtype=dtype, device=device)


def resize_tf1(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """x: (B, C, H, W) -> (B, C, size, size) by TF1 bilinear (separable, two matmuls)."""
    wy = resize_matrix(x.shape[2], size, x.dtype, x.device)
    wx = resize_matrix(x.shape[3], size, x.dtype, x.device)
    return wy @ x @ wx.T


class FIDInceptionV3(nn.Module):
    """uint8-valued images u: (B, 3, H, W) (floats in [0, 255]) -> pool3 features (B, 2048)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c = _block_a(192, 32), _block_a(256, 64)
        self.Mixed_5d, self.Mixed_6a = _block_a(288, 64), _block_b(288)
        self.Mixed_6b, self.Mixed_6c = _block_c(768, 128), _block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = _block_c(768, 160), _block_c(768, 192)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = (_block_d(768), _block_e(1280, "avg"),
                                                       _block_e(2048, "max1"))
        self.fc = nn.Linear(2048, 1008)

    def forward(self, u: Tensor) -> Tensor:
        x = (resize_tf1(u) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))
