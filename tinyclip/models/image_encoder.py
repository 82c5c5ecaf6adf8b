"""The image tower: a CNN of blocks that halve the image, flattened and projected.

Three kinds of block, chosen by ``config.image_tower``: the report's plain conv + ReLU + max-pool,
the same with a batch norm after the conv, or a residual block with batch norm (He et al., 2016),
all at the same widths.
"""

from __future__ import annotations

from .. import nn
from ..functional.arithmetic import relu
from .config import CLIPConfig


class ResidualBlock(nn.Module):
    """relu(BN(conv3×3(relu(BN(conv3×3(x))))) + skip(x)), then max-pool 2, on (N, H, W, C_in) → (N, H/2, W/2, C_out).

    The skip is x itself when the channels stay, else a 1×1 conv + BN that maps C_in to C_out.
    The convs have no bias: the batch norm after each one subtracts the mean anyway.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False, channels_last=True)
        self.bn1 = nn.BatchNorm2d(out_channels, channels_last=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, channels_last=True)
        self.bn2 = nn.BatchNorm2d(out_channels, channels_last=True)
        self.skip = None
        if in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False, channels_last=True),
                                      nn.BatchNorm2d(out_channels, channels_last=True))
        self.pool = nn.MaxPool2d(2, channels_last=True)

    def forward(self, x):
        y = self.bn2(self.conv2(relu(self.bn1(self.conv1(x)))))
        return relu(self.pool(y + (x if self.skip is None else self.skip(x))))  # relu∘pool = pool∘relu: see report_block


def report_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """The report's block: conv 3×3 (padding 1) → ReLU → max-pool 2, on (N, H, W, C_in) → (N, H/2, W/2, C_out).

    The ReLU runs after the pool: max and ReLU are both monotone, so relu(max(w)) = max(relu(w)) for
    every window w, with the same gradient, on 4× fewer numbers (the layer indices, so the state dict, stay).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, channels_last=True),
        nn.MaxPool2d(2, channels_last=True),
        nn.ReLU(),
    )


def batchnorm_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """The report's block with a batch norm after the conv (which then needs no bias): conv → BN → ReLU → pool
    (the ReLU computed after the pool, as in ``report_block``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False, channels_last=True),
        nn.BatchNorm2d(out_channels, channels_last=True),
        nn.MaxPool2d(2, channels_last=True),
        nn.ReLU(),
    )


BLOCKS = {"report": report_block, "batchnorm": batchnorm_block, "resnet": ResidualBlock}  # config.image_tower → block(in, out)


class ImageEncoder(nn.Module):
    """``(N, 3, S, S)`` normalised images → ``(N, embed_dim)`` features (not yet normalised).

    One block per entry of ``conv_channels`` (``report_block``, ``batchnorm_block`` or ``ResidualBlock``), so
    channels grow while the image halves; then flatten and a linear projection.
    Inside, the tower works channels-last (N, H, W, C): the im2col matmuls are much
    faster in that layout on the CPU, and one transpose at the input pays for it.
    The flatten therefore runs over (H, W, C), not PyTorch's (C, H, W).
    """

    def __init__(self, config: CLIPConfig):
        super().__init__()
        block = BLOCKS[config.image_tower]
        self.blocks = nn.ModuleList()
        in_channels = 3
        for out_channels in config.conv_channels:
            self.blocks.append(block(in_channels, out_channels))
            in_channels = out_channels
        side = config.image_size // 2 ** len(config.conv_channels)
        self.image_size = config.image_size
        self.proj = nn.Linear(side * side * in_channels, config.embed_dim)

    def forward(self, images):
        return self.proj(self.features(images))

    def features(self, images):
        """``(N, 3, S, S)`` → the flattened last conv block ``(N, side · side · C)``: what ``proj`` projects
        (CLIP's linear probes read this layer, before the projection into the shared space)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"ImageEncoder expects images of shape (N, 3, {self.image_size}, {self.image_size}), "
                             f"got {tuple(images.shape)}")
        x = images.transpose(0, 2, 3, 1)  # NCHW → NHWC
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0], -1)
