"""The dataset format every trainer reads: a folder of pictures, each with a same-stem caption file.

    root/[split/]any/sub/folders/cat.png   (png, jpg, jpeg or webp)
    root/[split/]any/sub/folders/cat.txt   one caption per non-empty line; training picks one

`reverie data build` writes this format, and a user can make one by hand to train on their own
pictures. Pictures are scaled so the shorter side fits, center-cropped to a square, and any
transparency is composited onto white.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .sources import DatasetError, on_white

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

Rng = Union[random.Random, np.random.Generator, torch.Generator, None]


def read_square(path: Path, size: int) -> np.ndarray:
    """One picture as uint8 [size, size, 3]: EXIF rotation applied, white under transparency, center crop."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            picture = on_white(im if im.mode in ("RGB", "RGBA", "LA") else im.convert("RGBA"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if picture.size != (size, size):
        picture = ImageOps.fit(picture, (size, size), Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8)


class ImageCaptionFolder:
    """Every captioned picture under root (or root/split), in memory.

    images:   uint8 tensor [N, 3, size, size]
    captions: N lists of caption lines (non-empty lines of each .txt)
    paths:    N picture paths, sorted
    skipped:  pictures that had no caption file (or an empty one)
    """

    def __init__(self, root: str | Path, size: int, split: Optional[str] = None):
        if not isinstance(size, int) or size < 1:
            raise DatasetError(f"size must be a positive whole number of pixels, not {size!r}")
        self.root = Path(root)
        self.size = size
        self.split = split
        folder = self.root / split if split else self.root
        if not folder.is_dir():
            what = f"split folder {split!r} in {self.root}" if split else "dataset folder"
            raise DatasetError(f"{what} not found: {folder}")
        pictures = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                          key=lambda p: p.relative_to(folder).as_posix())
        self.paths: list[Path] = []
        self.captions: list[list[str]] = []
        self.skipped = 0
        for path in pictures:
            text_path = path.with_suffix(".txt")
            lines = []
            if text_path.is_file():
                lines = [line.strip() for line in text_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not lines:
                self.skipped += 1
                continue
            self.paths.append(path)
            self.captions.append(lines)
        if not self.paths:
            raise DatasetError(f"no captioned pictures in {folder}: each picture (png, jpg, jpeg, webp) needs a "
                               f"same-name .txt caption file ({self.skipped} picture(s) had none)")
        array = np.empty((len(self.paths), size, size, 3), dtype=np.uint8)
        for i, path in enumerate(self.paths):
            array[i] = read_square(path, size)
        self.images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str]]:
        return self.images[i], self.captions[i]

    def random_caption(self, i: int, rng: Rng = None) -> str:
        """One of picture i's caption lines, chosen by rng (random.Random, numpy Generator, torch Generator)."""
        lines = self.captions[i]
        n = len(lines)
        if isinstance(rng, np.random.Generator):
            return lines[int(rng.integers(n))]
        if isinstance(rng, torch.Generator):
            return lines[int(torch.randint(n, (1,), generator=rng))]
        return lines[(rng or random).randrange(n)]

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, size={self.size}, split={self.split!r}: {len(self)} pictures)"
