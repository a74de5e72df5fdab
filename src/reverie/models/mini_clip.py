"""reverie's small CLIP: an image encoder trained to land in all-MiniLM-L6-v2's sentence space.

The text side is the frozen MiniLM sentence embedding (mean-pooled, normalised), so any
wording MiniLM understands ("kitty", "automobile") works; only the image side was trained,
contrastively, on the built-in dataset.

Two image encoders ship, one text side. `image_encoder` (trained longer, on noisy zoomed views)
is the judge: it reranks candidates, scores results and grades the model in benchmarks/.
`dream_guide` (trained briefly) steers dreaming: dreams it steers come out closest to their
prompts, where the judge's gradients lead to patches of colour and texture that fool it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .minilm import HIDDEN, load_minilm, sentence_embeddings
from .weights import load_weights, save_weights

CLIP_DIR = Path(__file__).resolve().parent.parent / "builtin" / "mini-clip"
IMAGE_SIZE = 64
WEIGHTS = "image_encoder.safetensors"  # the judge
GUIDE_WEIGHTS = "dream_guide.safetensors"  # the dreaming guide


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class ImageEncoder(nn.Module):
    """A small convolutional network: 64x64 RGB in [-1, 1] -> a unit vector in MiniLM's space."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), dim: int = HIDDEN):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += [_block(cin, width), nn.AvgPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * (IMAGE_SIZE // 2 ** len(widths)) ** 2, 512), nn.SiLU(),
                                  nn.Linear(512, dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), as CLIP starts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != IMAGE_SIZE or images.shape[-2] != IMAGE_SIZE:
            images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.head(self.features(images)), dim=-1)


class MiniClip:
    """Scores pictures against texts: `similarity(images, texts)` -> [n_images, n_texts] cosines."""

    def __init__(self, image_encoder: ImageEncoder, tokenizer, text_encoder):
        self.image_encoder = image_encoder.eval()
        self.tokenizer, self.text_encoder = tokenizer, text_encoder

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [N,3,H,W] in [-1, 1]."""
        return self.image_encoder(images.float())

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return sentence_embeddings(texts, self.tokenizer, self.text_encoder)

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.encode_images(images) @ self.encode_texts(texts).T


def save_clip(encoder: ImageEncoder, folder: Path = CLIP_DIR, half: bool = True) -> Path:
    save_weights(encoder, folder / WEIGHTS, half)
    return folder


def load_clip(folder: Path = CLIP_DIR, weights: str = WEIGHTS) -> MiniClip:
    encoder = load_weights(ImageEncoder(), folder / weights, "the built-in CLIP")
    tokenizer, text_encoder = load_minilm()
    return MiniClip(encoder, tokenizer, text_encoder)
