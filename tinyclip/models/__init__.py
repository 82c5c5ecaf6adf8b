"""The models: the CLIP configuration, the two towers, and CLIP with its contrastive loss."""

from .clip import CLIP, clip_loss, l2_normalize
from .config import CLIPConfig
from .image_encoder import ImageEncoder
from .text_encoder import EncoderBlock, TextEncoder
