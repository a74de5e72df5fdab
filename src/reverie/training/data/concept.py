"""A concept to teach a model: ten or more pictures of it, their captions, grouped by aspect.

    FOLDER/any/sub/folders/cat1.jpg   (png, jpg, jpeg or webp)
    FOLDER/any/sub/folders/cat1.txt   optional: one caption per non-empty line

Each picture's caption starts with the trigger ("sks, a cat on a sofa"); a picture without a
caption file is captioned with the trigger alone, or "TRIGGER CLASS" when a class prompt is
given ("sks a photo of a cat"), as DreamBooth does.

Aspect buckets (kohya's idea): sizes of about the model's area (`resolution` squared) whose
sides are multiples of what the model draws exactly, from 1:4 to 4:1. Each picture goes to the
bucket nearest its own aspect ratio, is scaled to cover it and center-cropped, so a wide picture
keeps its width; every batch is drawn from one bucket, so its pictures stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ...errors import BadRequest
from .folder import open_picture, picture_files

MIN_PICTURES = 10
MAX_ASPECT = 4.0  # no bucket narrower than 1:4 or wider than 4:1


def bucket_sizes(resolution: int, multiple: int) -> list[tuple[int, int]]:
    """(width, height) pairs of at most resolution² pixels, sides multiples of `multiple`, square included."""
    area = resolution * resolution
    sizes = set()
    width = multiple
    while width <= resolution * 2:
        height = (area // width) // multiple * multiple
        if height >= multiple and max(width / height, height / width) <= MAX_ASPECT:
            sizes.add((width, height))
            sizes.add((height, width))
        width += multiple
    side = resolution // multiple * multiple
    sizes.add((side, side))
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) the picture's."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def read_picture(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """One picture as uint8 [3, height, width]: EXIF rotation, white under transparency, cover and center crop."""
    try:
        picture = open_picture(path)
    except (OSError, ValueError) as exc:
        raise BadRequest("folder", f"cannot read {path}: {exc}") from None
    if picture.size != size:
        picture = ImageOps.fit(picture, size, Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(picture, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def picture_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).size
    except (OSError, ValueError) as exc:
        raise BadRequest("folder", f"cannot read {path}: {exc}") from None


@dataclass
class Bucket:
    """Pictures of one size: uint8 [N, 3, height, width], and each one's caption lines."""

    size: tuple[int, int]  # (width, height)
    pictures: list[torch.Tensor] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def images(self) -> torch.Tensor:
        return torch.stack(self.pictures)


@dataclass
class Concept:
    """The pictures of a concept in their buckets (largest bucket first)."""

    folder: Path
    buckets: list[Bucket]

    def __len__(self) -> int:
        return sum(len(b.pictures) for b in self.buckets)

    def tag_frequency(self) -> dict[str, int]:
        """How often each comma-separated caption tag occurs (kohya's ss_tag_frequency)."""
        counts: dict[str, int] = {}
        for bucket in self.buckets:
            for lines in bucket.captions:
                for tag in (t.strip() for t in lines[0].split(",")):
                    if tag:
                        counts[tag] = counts.get(tag, 0) + 1
        return counts


def captions_for(path: Path, trigger: str, class_prompt: str | None) -> list[str]:
    """The picture's caption lines with the trigger in front, or the trigger (and class) alone."""
    text = path.with_suffix(".txt")
    lines = []
    if text.is_file():
        lines = [line.strip() for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        return [f"{trigger} {class_prompt}" if class_prompt else trigger]
    return [f"{trigger}, {line}" for line in lines]


def read_concept(folder: str | Path, trigger: str, resolution: int, multiple: int, buckets: bool = True,
                 class_prompt: str | None = None, least: int = MIN_PICTURES) -> Concept:
    """Read `folder`'s pictures (at least `least`), captioned, into aspect buckets (or one square bucket)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadRequest("folder", f"no folder at {folder}; give a folder of {least} or more pictures of the concept")
    paths = picture_files(folder)
    if len(paths) < least:
        raise BadRequest("folder", f"{folder} holds {len(paths)} picture(s) (png, jpg, jpeg, webp); a concept needs at "
                                   f"least {least}: add more pictures of it")
    side = resolution // multiple * multiple
    sizes = bucket_sizes(resolution, multiple) if buckets else [(side, side)]
    by_size: dict[tuple[int, int], Bucket] = {}
    for path in paths:
        size = nearest_bucket(picture_size(path), sizes)
        bucket = by_size.setdefault(size, Bucket(size))
        bucket.pictures.append(read_picture(path, size))
        bucket.captions.append(captions_for(path, trigger, class_prompt))
        bucket.paths.append(path)
    ordered = sorted(by_size.values(), key=lambda b: (-len(b.pictures), b.size))
    return Concept(folder, ordered)
