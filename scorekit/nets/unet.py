"""Image score network: a diffusers `UNet2DModel` backbone behind `ScoreModel`."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from scorekit.nets.param import ScoreModel
from scorekit.processes import SDE


class UNet(nn.Module):
    """Backbone `F(x_in, c_noise)` for images x_in: (B, C, H, W) -> (B, C, H, W).

    `channels[i]` is the width of resolution level i (halved spatially between levels);
    `attention[i]` adds self-attention to level i. The noise label is fed to the UNet's
    sinusoidal time embedding after multiplying by `noise_scale`.
    """

    def __init__(self, sample_shape: Sequence[int], channels: Sequence[int] = (64, 128, 128),
                 layers_per_block: int = 2, attention: Sequence[bool] = (False, True, False),
                 norm_groups: int = 16, dropout: float = 0.0, noise_scale: float = 250.0,
                 attention_head_dim: int = 32):
        super().__init__()
        from diffusers import UNet2DModel

        shape = tuple(int(s) for s in sample_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"UNet sample_shape must be (C, H, W), got {tuple(sample_shape)}")
        channels, attention = [int(c) for c in channels], [bool(a) for a in attention]
        if not channels or min(channels) < 1:
            raise ValueError(f"UNet channels must be positive integers, got {channels}")
        if len(attention) != len(channels):
            raise ValueError(f"UNet attention needs one flag per level ({len(channels)}), "
                             f"got {attention}")
        bad = [c for c in channels if c % norm_groups]
        if norm_groups < 1 or bad:
            raise ValueError(f"UNet norm_groups={norm_groups} must divide every channel count; "
                             f"{bad} do not")
        if layers_per_block < 1:
            raise ValueError(f"UNet layers_per_block must be >= 1, got {layers_per_block}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet dropout must be in [0, 1), got {dropout}")
        factor = 2 ** (len(channels) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(f"UNet with {len(channels)} levels halves the resolution "
                             f"{len(channels) - 1} times: H, W of {shape} must be divisible by "
                             f"{factor}")
        down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention]
        up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
        self.sample_shape = shape
        self.noise_scale = float(noise_scale)
        self.unet = UNet2DModel(
            sample_size=shape[1:], in_channels=shape[0], out_channels=shape[0],
            block_out_channels=tuple(channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=norm_groups,
            dropout=dropout, attention_head_dim=attention_head_dim,
            time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x: (B, C, H, W), c_noise: (B,) -> (B, C, H, W)."""
        # The positional embedding's frequencies span 1 .. 1e-4 rad per unit, sized for integer
        # DDPM timesteps in [0, 1000). EDM's c_noise = ln(sigma)/4 lies in about [-1.6, 1.3] for
        # sigma in [0.002, 150]; x250 stretches that span over ~700 units, so both the fast and
        # the slow frequencies resolve the noise level (unscaled, only the fastest few would).
        return self.unet(x, c_noise * self.noise_scale, return_dict=False)[0]


class UNetScore(ScoreModel):
    """UNet score model for images: `model(x, t)` returns the score of x: (B, C, H, W).

    `sample_shape=(C, H, W)` is required (`make_model` passes the dataset's); `dim` must equal
    C*H*W. Output parameterisation ("eps", "score", "x0", "edm") is converted by `ScoreModel`.
    """

    def __init__(self, dim: int, sde: SDE, sample_shape: Sequence[int] | None = None,
                 channels: Sequence[int] = (64, 128, 128), layers_per_block: int = 2,
                 attention: Sequence[bool] = (False, True, False), norm_groups: int = 16,
                 dropout: float = 0.0, noise_scale: float = 250.0, attention_head_dim: int = 32,
                 parameterization: str = "eps", sigma_data: float = 1.0):
        if sample_shape is None:
            raise ValueError("UNetScore needs sample_shape=(C, H, W) of the images (dim alone "
                             "does not fix it); make_model(..., sample_shape=data.sample_shape)")
        if math.prod(sample_shape) != dim:
            raise ValueError(f"sample_shape {tuple(sample_shape)} has {math.prod(sample_shape)} "
                             f"elements but dim={dim}")
        net = UNet(sample_shape, channels, layers_per_block, attention, norm_groups, dropout,
                   noise_scale, attention_head_dim)
        super().__init__(net, sde, parameterization=parameterization, sigma_data=sigma_data)
