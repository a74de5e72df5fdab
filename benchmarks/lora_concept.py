"""Teaching reverie-mini a concept it cannot draw: a LoRA trained on a held-out concept's pictures.

The concept's pictures come from the test split of data/build/hires-128 (concepts reverie-mini
never trained on); each rendering is also used mirrored and zoomed, which makes ten or more
pictures. `--make-folder` writes them with captions ("TRIGGER WORDS"); train with
`reverie train lora FOLDER --model mini --trigger TRIGGER ...`; then measure with the built-in
judge (the small CLIP's image encoder):

- concept similarity: the cosine between each picture made for "a TRIGGER WORDS" and the mean
  embedding of the concept's real pictures, before (the base model) and after (with the LoRA);
- controls: prompts without the trigger, made with the LoRA at weight 1 and without it, from the
  same seeds: their judge score against their own words, and how far the pictures moved.

    PYTHONPATH=src .venv/bin/python benchmarks/lora_concept.py --make-folder runs/rainbow-pictures
    PYTHONPATH=src .venv/bin/python benchmarks/lora_concept.py --lora runs/lora-rainbow/rainbow.safetensors --grid docs/lora-before-after.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

DATA = Path("data/build/hires-128/test")
CONTROLS = ("a red apple", "a cat face", "a house with a tree", "a blue car")
SEEDS = (100, 101, 102, 103, 104, 105, 106, 107)


def concept_pictures(concept: str) -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(DATA.glob(f"*/*_{concept}.png"))]


def augmented(pictures: list[Image.Image]) -> list[Image.Image]:
    """Each picture, mirrored, and both zoomed to their centre 85%."""
    out = []
    for picture in pictures:
        side = picture.width
        crop = round(side * 0.075)
        zoomed = picture.crop((crop, crop, side - crop, side - crop)).resize(picture.size, Image.LANCZOS)
        out += [picture, ImageOps.mirror(picture), zoomed, ImageOps.mirror(zoomed)]
    return out


def make_folder(concept: str, trigger: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    words = concept.replace("-", " ")
    pictures = augmented(concept_pictures(concept))
    for index, picture in enumerate(pictures):
        picture.save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text(f"{trigger} {words}")
    print(f"{len(pictures)} pictures of {words!r} in {folder}")
