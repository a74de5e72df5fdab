"""A styled copy of a dataset: its training pictures through the style filters, captioned with the style words.

    out/manifest.json
    out/ATTRIBUTION.md                     (the source dataset's: the pictures are its art, restyled)
    out/train/original/<source>/<stem>.png  the source picture and its own captions, unchanged
    out/train/<filter>/<source>/<stem>.png  the picture in that look, captioned "<label>, <style words>"

A share of the source pictures (`original_share`, drawn per picture) is kept as it is (so a
model fine-tuned on the result keeps its own looks), and every one is rendered in `per_picture`
different looks drawn for it; the draw and each filter's
randomness come from the seed and the picture's place, so the same call writes the same folder.
Only the train/ split is restyled: the source's test/ concepts stay unseen.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from ...outputs.files import atomic_write, write_text
from .folder import ImageCaptionFolder
from .sources import DatasetError
from .style_filters import FILTERS, Filter

FORMAT = "reverie-styled-folder/1"


def label_of(lines: list[str]) -> str:
    """The bare label among a picture's caption lines (`captions_for` writes "<label>, <style>" then "<label>")."""
    if len(lines) > 1 and lines[0].startswith(lines[1] + ", "):
        return lines[1]
    return lines[0]


def styled_captions(label: str, look: Filter) -> list[str]:
    """Caption lines for a picture of `label` in `look`; the first is the canonical "<label>, <style words>"."""
    return [f"{label}, {look.words}", f"{label} {look.words}", f"{look.words} {label}", f"{label}, {look.words}, {look.extra}"]


def build_styled(source: str | Path, out: str | Path, per_picture: int = 3, seed: int = 0, size: int = 64,
                 original_share: float = 1.0, looks: tuple[Filter, ...] = FILTERS, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write the styled dataset (see the module's text) and return its manifest."""
    source, out = Path(source), Path(out)
    if not 1 <= per_picture <= len(looks):
        raise DatasetError(f"per_picture must be 1 to {len(looks)} (the number of looks), not {per_picture}")
    if not 0.0 <= original_share <= 1.0:
        raise DatasetError(f"original_share must be from 0 to 1, not {original_share}")
    if out.resolve() == source.resolve():
        raise DatasetError(f"the styled dataset needs its own folder, not the source {source}")
    train = ImageCaptionFolder(source, size, "train" if (source / "train").is_dir() else None)
    if out.exists():
        if not (out / "manifest.json").is_file():
            raise DatasetError(f"{out} exists and is not a styled dataset (no manifest.json); choose another --out")
        shutil.rmtree(out)
    counts = {look.name: 0 for look in looks}
    originals = 0
    total = len(train)
    for i in range(total):
        relative = train.paths[i].relative_to(train.folder).with_suffix(".png")
        picture = Image.fromarray(train.images[i].permute(1, 2, 0).numpy(), "RGB")
        draw = random.Random(f"{seed}:{relative.as_posix()}")
        if draw.random() < original_share:
            _write(out / "train" / "original" / relative, picture, train.captions[i])
            originals += 1
        for look in draw.sample(looks, per_picture):
            styled = look(picture, seed=draw.randrange(1 << 30))
            _write(out / "train" / look.name / relative, styled, styled_captions(label_of(train.captions[i]), look))
            counts[look.name] += 1
        if progress:
            progress(i + 1, total)
    manifest = {
        "format": FORMAT, "source": str(source), "size": size, "seed": seed, "per_picture": per_picture,
        "original_share": original_share, "original": originals, "styled": counts,
        "looks": {look.name: {"words": look.words, "extra": look.extra} for look in looks},
    }
    if (source / "ATTRIBUTION.md").is_file():
        write_text(out / "ATTRIBUTION.md", (source / "ATTRIBUTION.md").read_text(encoding="utf-8"))
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write(png: Path, picture: Image.Image, captions: list[str]) -> None:
    atomic_write(png, lambda partial: picture.save(partial, format="PNG"))
    write_text(png.with_suffix(".txt"), "\n".join(captions) + "\n")
