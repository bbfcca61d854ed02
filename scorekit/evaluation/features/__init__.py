"""Feature extractors for Fréchet distances: FID's InceptionV3 from a local weights file, a
project-trained digits classifier, or raw pixels; plus streaming feature statistics."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorekit.evaluation.features.stats import FeatureStats

__all__ = ["FeatureExtractor", "FeatureStats", "KINDS", "INCEPTION_ENV", "INCEPTION_FILES"]

KINDS = ("inception", "classifier", "raw")
INCEPTION_ENV = "SCOREKIT_INCEPTION"
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth",
                   "pt_inception-2015-12-05-6726825d.pth")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inception_weights(weights: str | Path | None) -> Path:
    path = weights if weights is not None else os.environ.get(INCEPTION_ENV)
    if path is None:
        raise FileNotFoundError(
            "FeatureExtractor('inception') needs the FID InceptionV3 weights as a local file and "
            f"never downloads them: pass weights=<path> or set ${INCEPTION_ENV}. Use torch-"
            f"fidelity's {INCEPTION_FILES[0]} or pytorch-fid's {INCEPTION_FILES[1]} (same "
            "parameter names), e.g. saved as ~/.cache/scorekit/" + INCEPTION_FILES[0])
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {str(path)!r} does not exist; expected "
                                f"one of {list(INCEPTION_FILES)} (a state_dict, .pth or "
                                ".safetensors)")
    return path


def _load_state(path: Path) -> dict[str, Tensor]:
    from scorekit import io

    if io.is_pickle(path):
        return io.load(path, allow_pickle=True)[0]  # torch.load(weights_only=True)
    from safetensors.torch import load_file

    return load_file(str(path))


def _luma(x: Tensor) -> Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[:, None, None]).sum(1, keepdim=True)


class FeatureExtractor(nn.Module):
    """Images x: (B, C, H, W) in [-1, 1] -> features (B, F), float32 in the module's dtype.

    kind "inception": FID's InceptionV3 pool3 (F = 2048) from a local file (`weights=` or
      $SCOREKIT_INCEPTION); images are quantised to 8 bits (as saved PNGs are), grey ones
      repeated to RGB, resized to 299x299 by TF1 bilinear.
    kind "classifier": the penultimate layer (F = 64) of a CNN trained on sklearn's digits,
      cached at `weights=` (default ~/.cache/scorekit/digits-cnn-<key>.safetensors; trained
      in seconds if absent). Larger images are box-averaged to 8x8, RGB turned to luma.
    kind "raw": flattened pixels (F = C*H*W).
    `info` records the kind, the weights' file and SHA-256 and the preprocessing.
    """

    def __init__(self, kind: str, weights: str | Path | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown feature extractor {kind!r}; valid: {list(KINDS)}")
        self.kind = kind
        self.info: dict = {"kind": kind}
        self.net: nn.Module | None = None
        if kind == "inception":
            from scorekit.evaluation.features.inception import FIDInceptionV3

            path = _inception_weights(weights)
            net = FIDInceptionV3()
            state = _load_state(path)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{path} is not an FID InceptionV3 state_dict: missing "
                                 f"{missing[:3]}..., unexpected {unexpected[:3]}...")
            self.net = net.eval().requires_grad_(False)
            self.info.update(weights=str(path), sha256=_sha256(path), resize="tf1-bilinear-299",
                             quantize="uint8")
        elif kind == "classifier":
            from scorekit.evaluation.features import classifier

            path = Path(weights).expanduser() if weights is not None else classifier.default_path()
            self.net, meta = classifier.load_or_train(path)
            self.info.update(weights=str(path), sha256=_sha256(path), resize="box-8x8",
                             test_accuracy=meta.get("test_accuracy"))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if self.kind == "raw":
            return x.flatten(1)
        dtype = next(self.net.parameters()).dtype
        x = x.to(dtype)
        with torch.no_grad():
            if self.kind == "classifier":
                if x.shape[1] == 3:
                    x = _luma(x)
                if x.shape[-2:] != (8, 8):
                    x = F.adaptive_avg_pool2d(x, 8)
                return self.net.features(x)
            u = torch.round((x.clamp(-1, 1) + 1) * 127.5)
            return self.net(u.expand(-1, 3, -1, -1))

    def stats(self, images: Tensor | Iterable[Tensor], batch_size: int = 256) -> FeatureStats:
        """Streaming feature statistics of images (N, C, H, W), or of an iterable of batches."""
        batches = (images.split(batch_size) if isinstance(images, Tensor) else images)
        out = FeatureStats()
        for batch in batches:
            out.update(self(batch))
        return out
