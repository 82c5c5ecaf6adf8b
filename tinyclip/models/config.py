"""The model's hyper-parameters, saved as JSON next to every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

IMAGE_TOWERS = ("report", "batchnorm", "resnet")


@dataclass
class CLIPConfig:
    """Sizes of both towers (the report's model by default).

    The image tower halves the image ``len(conv_channels)`` times, so ``image_size``
    must be divisible by ``2 ** len(conv_channels)``. ``image_tower`` picks its blocks:
    "report" (conv → ReLU → max-pool), "batchnorm" (conv → BN → ReLU → max-pool) or "resnet"
    (residual blocks with batch norm), all at the same widths.
    """

    image_size: int = 128
    conv_channels: tuple = (16, 32, 64, 128, 256)
    vocab_size: int = 5000
    max_len: int = 64
    width: int = 128
    text_layers: int = 5
    heads: int = 4
    ff_dim: int = 512
    dropout: float = 0.1
    embed_dim: int = 128
    image_tower: str = "report"  # a later field: configs saved before it load as "report"

    def __post_init__(self):
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        problems = []
        if not self.conv_channels:
            problems.append("conv_channels must name at least one block")
        elif self.image_size % (2 ** len(self.conv_channels)):
            problems.append(f"image_size {self.image_size} is not divisible by 2**{len(self.conv_channels)} "
                            f"(one halving per conv block)")
        if self.image_tower not in IMAGE_TOWERS:
            problems.append(f"image_tower must be one of {', '.join(map(repr, IMAGE_TOWERS))}, "
                            f"got {self.image_tower!r}")
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout {self.dropout} is outside [0, 1)")
        for name in ("image_size", "vocab_size", "max_len", "width", "text_layers", "heads", "ff_dim", "embed_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid CLIPConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown CLIPConfig keys: {sorted(unknown)}")
        return cls(**d)
