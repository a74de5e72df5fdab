"""The dataset format every trainer reads: a folder of pictures, each with a same-stem caption file.

    root/[split/]any/sub/folders/cat.png   (png, jpg, jpeg or webp)
    root/[split/]any/sub/folders/cat.txt   one caption per non-empty line; training picks one

`reverie data build` writes this format split in two (train/, test/, with a manifest.json);
any other folder of captioned pictures, as people keep them for LoRA or DreamBooth training,
is read whole (`read_splits`). Pictures are scaled so the shorter side fits, center-cropped to
a square, and any transparency is composited onto white. Hidden files and folders (a leading
dot: .DS_Store, ._cat.png, .ipynb_checkpoints) are not pictures of the dataset.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from .sources import DatasetError, on_white

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"
EXPECTED = "png, jpg, jpeg or webp pictures (in it or its subfolders), each with a same-name .txt caption (cat.png + cat.txt)"

Rng = Union[random.Random, np.random.Generator, torch.Generator, None]


def picture_files(folder: Path) -> list[Path]:
    """Every picture file under `folder`, at any depth, hidden ones left out; sorted by relative path."""
    pictures = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in relative.parts) and path.is_file():
            pictures.append((relative.as_posix(), path))
    return [path for _, path in sorted(pictures)]


def is_split(root: Path) -> bool:
    """A built dataset (a manifest.json), or a folder whose pictures all lie in train/ and test/."""
    if (root / MANIFEST).is_file():
        return True
    if not (root / "train").is_dir():
        return False
    return all(path.relative_to(root).parts[0] in SPLITS for path in picture_files(root))


def open_picture(path: Path) -> Image.Image:
    """A picture file as RGB: EXIF rotation applied, white under transparency. An unreadable
    file raises OSError or ValueError (each caller says so in its own terms)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return on_white(im if im.mode in ("RGB", "RGBA", "LA") else im.convert("RGBA"))


def read_square(path: Path, size: int) -> np.ndarray:
    """One picture as uint8 [size, size, 3]: EXIF rotation applied, white under transparency, center crop."""
    try:
        picture = open_picture(path)
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
    folder:   the folder they were read from (root, or root/split)
    skipped:  pictures that had no caption file (or an empty one)

    With `need_captions=False` (for trainers that learn from pictures alone) every picture is
    kept, and one without a caption file has an empty list of lines.
    """

    def __init__(self, root: str | Path, size: int, split: Optional[str] = None, need_captions: bool = True):
        if not isinstance(size, int) or size < 1:
            raise DatasetError(f"size must be a positive whole number of pixels, not {size!r}")
        self.root = Path(root)
        self.size = size
        self.split = split
        self.folder = folder = self.root / split if split else self.root
        if not folder.is_dir():
            what = f"split folder {split!r} in {self.root}" if split else "dataset folder"
            raise DatasetError(f"{what} not found: {folder}")
        pictures = picture_files(folder)
        if not pictures:
            expected = EXPECTED if need_captions else "png, jpg, jpeg or webp pictures (in it or its subfolders)"
            raise DatasetError(f"no pictures in {folder}: expected {expected}")
        self.paths: list[Path] = []
        self.captions: list[list[str]] = []
        self.skipped = 0
        for path in pictures:
            text_path = path.with_suffix(".txt")
            lines = []
            if text_path.is_file():
                lines = [line.strip() for line in text_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not lines and need_captions:
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

    def top_folder(self, i: int) -> str:
        """The first subfolder picture i lies in ("" for a picture directly in the folder): a built dataset's source."""
        parts = self.paths[i].relative_to(self.folder).parts
        return parts[0] if len(parts) > 1 else ""

    def __repr__(self) -> str:
        return f"ImageCaptionFolder({str(self.root)!r}, size={self.size}, split={self.split!r}: {len(self)} pictures)"


class Splits(NamedTuple):
    """The pictures to train on, and the held-out ones (None when the folder has none)."""

    train: ImageCaptionFolder
    test: Optional[ImageCaptionFolder]


def read_splits(root: str | Path, size: int, need_captions: bool = True) -> Splits:
    """A dataset folder's training pictures and, for a built dataset, its held-out test split.

    A built dataset (`reverie data build`: manifest.json, train/, test/), or any folder whose
    pictures all lie in train/ and test/, gives its train/ as the training pictures and its
    test/ (when it holds pictures) as the held-out ones. Any other folder of pictures is read
    whole as training pictures, with nothing held out.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}; expected a folder of {EXPECTED}")
    if not is_split(root):
        return Splits(ImageCaptionFolder(root, size, need_captions=need_captions), None)
    train = ImageCaptionFolder(root, size, "train", need_captions)
    has_test = (root / "test").is_dir() and picture_files(root / "test")
    return Splits(train, ImageCaptionFolder(root, size, "test", need_captions) if has_test else None)
