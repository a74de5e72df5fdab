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
        (folder / f"{index:02d}.txt").write_text(words)  # training puts the trigger in front
    print(f"{len(pictures)} pictures of {words!r} in {folder}")


def embed(judge, pictures: list[Image.Image]) -> torch.Tensor:
    from reverie.methods.rerank import _as_pixels

    with torch.no_grad():
        features = judge.guide.embed_images(_as_pixels(pictures, judge.guide.image_size)).float()
    return torch.nn.functional.normalize(features, dim=-1)


def pictures_of(studio, prompt: str, steps: int) -> list[Image.Image]:
    return [image.image for image in studio.generate({"prompt": prompt, "seed": SEEDS[0], "n_samples": len(SEEDS),
                                                      "steps": steps, "upscale": 1}).images]


def measure(concept: str, trigger: str, lora: Path, steps: int, grid: Path | None) -> None:
    import os
    import tempfile

    from reverie.methods.rerank import scorer_from
    from reverie.outputs.grid import make_grid
    from reverie.studio import Studio

    models = Path(tempfile.mkdtemp(prefix="lora-models-"))
    (models / "Lora").mkdir()
    (models / "Lora" / lora.name).symlink_to(lora.resolve())
    os.environ["REVERIE_MODELS"] = str(models)
    name, words = lora.stem, concept.replace("-", " ")
    studio = Studio(device="cpu")
    judge = scorer_from(studio.models)
    real = concept_pictures(concept)
    target = embed(judge, real).mean(0)
    trigger_prompt = f"{trigger}, {words}"
    rows, labels = [real], [f"real {words} (held out)"]
    print(f"LoRA {lora} on reverie-mini, {steps} steps, seeds {SEEDS[0]}-{SEEDS[-1]}; judge: the small CLIP")
    print("| prompt | LoRA | similarity to the real pictures | judge score vs its words | pixels moved |")
    print("|---|---|---|---|---|")
    for prompt in (trigger_prompt, words) + CONTROLS:
        before = pictures_of(studio, prompt, steps)
        after = pictures_of(studio, f"{prompt} <lora:{name}:1>", steps)
        moved = np.mean([np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean()
                         for a, b in zip(before, after)])
        for label, pictures in (("without", before), ("with", after)):
            similarity = (embed(judge, pictures) @ target).mean().item()
            score = np.mean(judge.scores(pictures, words if prompt == trigger_prompt else prompt))
            shown = f"{moved:.1f}" if label == "with" else ""
            print(f"| {prompt} | {label} | {similarity:.3f} | {score:.3f} | {shown} |", flush=True)
        if prompt in (trigger_prompt, CONTROLS[0]):
            rows += [before[:6], after[:6]]
            labels += [f"{prompt}", f"{prompt} + LoRA"]
    if grid:
        cells = [picture for row in rows for picture in (row + [None] * (6 - len(row)))[:6]]
        make_grid(cells, columns=6, row_labels=labels).save(grid)
        print(f"grid: {grid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="rainbow")
    parser.add_argument("--trigger", default="sks")
    parser.add_argument("--make-folder", type=Path)
    parser.add_argument("--lora", type=Path, help="a trained LoRA file to measure")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", type=Path)
    args = parser.parse_args()
    if args.make_folder:
        make_folder(args.concept, args.trigger, args.make_folder)
    if args.lora:
        measure(args.concept, args.trigger, args.lora, args.steps, args.grid)


if __name__ == "__main__":
    main()
