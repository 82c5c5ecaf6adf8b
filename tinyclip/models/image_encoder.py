"""The image tower: a plain CNN of conv + ReLU + max-pool blocks, flattened and projected."""

from __future__ import annotations

from .. import nn
from .config import CLIPConfig


class ImageEncoder(nn.Module):
    """``(N, 3, S, S)`` normalised images → ``(N, embed_dim)`` features (not yet normalised).

    One block per entry of ``conv_channels``: conv 3×3 (padding 1) → ReLU → max-pool 2,
    so channels grow while the image halves; then flatten and a linear projection.
    Inside, the tower works channels-last (N, H, W, C): the im2col matmuls are much
    faster in that layout on the CPU, and one transpose at the input pays for it.
    The flatten therefore runs over (H, W, C), not PyTorch's (C, H, W).
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.blocks = nn.ModuleList()
        in_channels = 3
        for out_channels in config.conv_channels:
            self.blocks.append(nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, channels_last=True),
                nn.ReLU(),
                nn.MaxPool2d(2, channels_last=True),
            ))
            in_channels = out_channels
        side = config.image_size // 2 ** len(config.conv_channels)
        self.image_size = config.image_size
        self.proj = nn.Linear(side * side * in_channels, config.embed_dim)

    def forward(self, images):
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"ImageEncoder expects images of shape (N, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        x = images.transpose(0, 2, 3, 1)  # NCHW → NHWC
        for block in self.blocks:
            x = block(x)
        return self.proj(x.reshape(x.shape[0], -1))
