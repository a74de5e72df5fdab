"""What a method gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .request import BaseRequest


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    index: int  # position in the whole request (0 .. n_samples*n_iter-1)
    metadata: dict  # the reverie JSON written into the PNG
    parameters: str  # the A1111-style text written into the PNG
    path: Path | None = None  # where it was saved, when it was
    score: float | None = None  # the CLIP's cosine to the prompt, when scored (rerank, score)


@dataclass
class Result:
    request: BaseRequest  # resolved: fixed seed, size, model name
    images: list[GeneratedImage] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    interrupted: bool = False  # stopped early; `images` holds what was finished
    grid_path: Path | None = None
    video: Path | None = None  # a video the run wrote beside its pictures (a GAN's walk, a progress video)

    @property
    def seeds(self) -> list[int]:
        return [img.seed for img in self.images]
