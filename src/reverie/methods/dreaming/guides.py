"""Guides: the models that say how well a picture matches words (CLIP and its kin).

Every guide embeds texts and images into one unit-vector space. Images come in as float
pixels in [0, 1] at the guide's own input size, with gradients kept, so the dream can follow
them back to the generator. Several guides form an ensemble: each scores its own cutouts and
the losses are averaged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

BUILTIN_GUIDE = "mini"


class Guide:
    name: str
    image_size: int

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: torch.device) -> "Guide":
        raise NotImplementedError


class MiniClipGuide(Guide):
    """The built-in small CLIP: a CNN image side against frozen MiniLM sentence vectors (by
    default its dreaming guide; any of its image encoders can be given)."""

    def __init__(self, clip=None, name: str = BUILTIN_GUIDE):
        from ...models.mini_clip import GUIDE_WEIGHTS, IMAGE_SIZE, load_clip

        self.clip = clip or load_clip(weights=GUIDE_WEIGHTS)
        self.clip.image_encoder.requires_grad_(False)
        self.name, self.image_size = name, IMAGE_SIZE

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.clip.encode_texts(texts).float()

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.image_encoder(pixels * 2 - 1)

    def to(self, device: torch.device) -> "MiniClipGuide":
        self.clip.image_encoder.to(device)
        return self


class OpenClipGuide(Guide):
    """A CLIP from a local file (OpenAI or open_clip format), run through open_clip."""

    def __init__(self, clip_file):
        self.file = clip_file
        self.name, self.image_size = clip_file.name, clip_file.image_size
        self.mean = torch.tensor(clip_file.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(clip_file.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.file.tokenizer(texts)
        return F.normalize(self.file.model.encode_text(tokens).float(), dim=-1)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(pixels), self.std.to(pixels)
        return F.normalize(self.file.model.encode_image((pixels - mean) / std).float(), dim=-1)

    def to(self, device: torch.device) -> "OpenClipGuide":
        self.file.model.to(device)
        return self


def load_guide(reference: str) -> Guide:
    """`mini` (the built-in small CLIP), a folder of one trained by `reverie train clip` (its
    export/), a CLIP file, or `ARCH:file` for open_clip checkpoints."""
    if reference == BUILTIN_GUIDE:
        return MiniClipGuide()
    from ...models.mini_clip import WEIGHTS, load_clip

    if (Path(reference) / WEIGHTS).is_file():
        return MiniClipGuide(load_clip(Path(reference)), name=str(reference))
    from ...models.clip_files import load_clip_file

    return OpenClipGuide(load_clip_file(reference))

