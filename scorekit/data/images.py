"""Image data without downloads: sklearn's digits, crops of scikit-image's bundled photographs,
and any local folder of images. All return float32 (N, C, H, W) in [-1, 1] (digits: any
[low, high])."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_RANGE = (-1.0, 1.0)  # pixel range of every image dataset (digits: the default)
INTERPOLATIONS = ("nearest", "bilinear")
# Photographs shipped inside the scikit-image wheel (skimage.data loads them without network).
SKIMAGE_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "coins", "moon", "rocket",
                  "immunohistochemistry", "grass", "gravel", "brick", "clock")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def digits(size: int = 8, interpolation: str = "nearest", low: float = IMAGE_RANGE[0],
           high: float = IMAGE_RANGE[1]) -> Tensor:
    """sklearn's 1797 8x8 handwritten digits as (1797, 1, size, size) float32 in [low, high]
    (x / 16 mapped affinely; the default [-1, 1] is x/16*2 - 1, [0, 1] suits a reflected box);
    size 16 or 32 upsamples by `interpolation` ("nearest" or "bilinear")."""
    from sklearn.datasets import load_digits

    if not low < high:
        raise ValueError(f"digits needs low < high, got low={low}, high={high}")
    if size not in (8, 16, 32):
        raise ValueError(f"digits size must be 8, 16 or 32, got {size!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"digits interpolation must be one of {INTERPOLATIONS}, "
                         f"got {interpolation!r}")
    images = torch.as_tensor(load_digits().images, dtype=torch.float32)
    images = (low + images / 16.0 * (high - low)).unsqueeze(1)
    if size == 8:
        return images
    if interpolation == "nearest":
        return F.interpolate(images, size=(size, size), mode="nearest")
    # Half-pixel-centred bilinear keeps the values inside [low, high] (a convex combination).
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _to_unit_range(a) -> Tensor:
    """uint8 / bool / float image (H, W[, C]) -> float32 (C, H, W) in [-1, 1]."""
    import numpy as np

    arr = np.asarray(a)
    if arr.dtype == bool:
        arr = arr.astype(np.float32) * 255
    x = torch.as_tensor(arr.astype(np.float32)) / 127.5 - 1
    if x.dim() == 2:
        x = x.unsqueeze(-1)
    return x[..., :3].permute(2, 0, 1).contiguous()  # drop alpha


def _gray(x: Tensor) -> Tensor:
    """(C, H, W) -> (1, H, W) by ITU-R BT.601 luma weights (PIL's "L" conversion)."""
    if x.shape[0] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)
    return (x * w[:, None, None]).sum(0, keepdim=True)


def patches(n: int, generator: torch.Generator | None = None, size: int = 16,
            grayscale: bool = True, images: Sequence[str] = SKIMAGE_IMAGES,
            downscale: int = 2) -> Tensor:
    """n random size x size crops of scikit-image's bundled photographs, (n, C, size, size)
    float32 in [-1, 1], C = 1 (grayscale) or 3 (RGB; grayscale photographs are repeated).

    Each crop picks an image uniformly, then a position uniformly; `downscale` first shrinks
    every image by that integer factor (box average) so a crop spans more of the scene.
    """
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("the 'patches' dataset needs scikit-image (pip install "
                          "scikit-image); its photographs ship inside the package") from err
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"patches size must be an integer >= 2, got {size!r}")
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise ValueError(f"patches downscale must be an integer >= 1, got {downscale!r}")
    names = [images] if isinstance(images, str) else list(images)
    unknown = [m for m in names if m not in SKIMAGE_IMAGES]
    if not names or unknown:
        raise ValueError(f"unknown patches images {unknown or names}; valid: "
                         f"{list(SKIMAGE_IMAGES)}")
    pool = []
    for name in names:
        x = _to_unit_range(getattr(skimage.data, name)())
        x = _gray(x) if grayscale else x.expand(3, -1, -1)
        if downscale > 1:
            x = F.avg_pool2d(x[None], downscale)[0]
        if min(x.shape[1:]) < size:
            raise ValueError(f"image {name!r} is {tuple(x.shape[1:])} after downscale="
                             f"{downscale}, smaller than patches size={size}")
        pool.append(x)
    which = torch.randint(len(pool), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    out = torch.empty(n, pool[0].shape[0], size, size)
    for i in range(n):
        img = pool[int(which[i])]
        top = int(u[i, 0] * (img.shape[1] - size + 1))
        left = int(u[i, 1] * (img.shape[2] - size + 1))
        out[i] = img[:, top:top + size, left:left + size]
    return out


def _load_resized(path: Path, size: int, grayscale: bool) -> Tensor:
    """One image file -> (C, size, size): shorter side resized to `size`, then centre-cropped."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if grayscale else "RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return _to_unit_range(im)


def folder(root: str | None = None, size: int = 32, grayscale: bool = False,
           max_images: int | None = None) -> Tensor:
    """Every image under `root` (recursively, ImageFolder layout or flat; sorted paths) as
    (N, C, size, size) float32 in [-1, 1]: shorter side resized (bicubic) then centre-cropped."""
    if root is None:
        raise ValueError("the 'folder' dataset needs root=<directory of images>")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"folder dataset root {str(path)!r} is not a directory")
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"folder size must be an integer >= 2, got {size!r}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if max_images is not None:
        files = files[:max_images]
    if not files:
        raise ValueError(f"folder dataset root {str(path)!r} holds no images (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)} recursively)")
    return torch.stack([_load_resized(p, size, grayscale) for p in files])
