"""The committed picture grid of reverie-mini: 64 fixed prompts, one picture each, seed 0.

Rows: objects, food, animals, faces, travel, colours (the same object in other colours),
and the same concepts in each style.

    .venv/bin/python benchmarks/mini_grid.py --out docs/mini-grid.png
    .venv/bin/python benchmarks/mini_grid.py --quantize int8 --out /tmp/mini-grid-int8.png --against docs/mini-grid.png

`--against` prints how far the sheet is from another one drawn the same way (PSNR over the
sheet, and each picture's: median and lowest, with its prompt).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from PIL import Image, ImageDraw

PROMPTS = [
    "red apple, Noto emoji", "banana, Noto emoji", "pizza, Noto emoji", "birthday cake, Noto emoji",
    "hot beverage, Noto emoji", "grapes, Noto emoji", "carrot, Noto emoji", "doughnut, Noto emoji",
    "cat face, Twemoji", "dog face, Twemoji", "penguin, Twemoji", "fish, Twemoji",
    "butterfly, Twemoji", "turtle, Twemoji", "owl, Twemoji", "snail, Twemoji",
    "grinning face, flat Fluent emoji", "crying face, flat Fluent emoji", "angry face, flat Fluent emoji",
    "smiling face with sunglasses, flat Fluent emoji", "ghost, flat Fluent emoji", "robot, flat Fluent emoji",
    "alien, flat Fluent emoji", "clown face, flat Fluent emoji",
    "rocket, Noto emoji", "automobile, Noto emoji", "bicycle, Noto emoji", "airplane, Noto emoji",
    "house, Twemoji", "sun, Twemoji", "rainbow, Twemoji", "snowman, Twemoji",
    "red heart, Noto emoji", "blue heart, Noto emoji", "green heart, Noto emoji", "yellow heart, Noto emoji",
    "red circle, Twemoji", "blue circle, Twemoji", "green circle, Twemoji", "purple circle, Twemoji",
    "house line icon", "car line icon", "heart line icon", "star line icon",
    "umbrella line icon", "bell line icon", "camera line icon", "music line icon",
    "tree, Noto emoji", "tree, Twemoji", "tree, flat Fluent emoji", "tree line icon",
    "star, Noto emoji", "star, Twemoji", "star, flat Fluent emoji", "star line icon",
    "guitar, Noto emoji", "guitar, Twemoji", "guitar, flat Fluent emoji", "trophy line icon",
    "kitty", "a red automobile", "yummy slice of pizza", "a happy face",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/mini-grid.png"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model-dir", type=Path, help="a reverie-mini folder (default: the built-in model)")
    parser.add_argument("--rerank", type=int, default=1, help="each picture the best of N, chosen by the built-in CLIP")
    parser.add_argument("--quantize", default="none", choices=("none", "int8"), help="the UNet in int8 (--quantize)")
    parser.add_argument("--against", type=Path, help="a sheet drawn the same way, to measure this one against")
    args = parser.parse_args()

    from reverie.models.mini import load_mini
    from reverie.studio import make_request
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    model = "mini"
    if args.model_dir:
        model = "under-test"
        studio.add_model(model, load_mini(folder=args.model_dir))
    cell = 96
    sheet = Image.new("RGB", (8 * cell, 8 * (cell + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, prompt in enumerate(PROMPTS):
        request = make_request(prompt=prompt, model=model, seed=0, steps=args.steps, cfg_scale=4.0,
                               sampler="dpmpp_2m", n_samples=1, upscale=None, rerank=args.rerank,
                               quantize=args.quantize)
        picture = studio.generate(request).images[0].image.resize((cell, cell), Image.LANCZOS)
        x, y = (i % 8) * cell, (i // 8) * (cell + 14)
        sheet.paste(picture, (x, y))
        draw.text((x + 2, y + cell), prompt.replace(", ", " / ")[:16], fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)
    if args.against:
        compare(sheet, args.against, cell)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def compare(sheet: Image.Image, other: Path, cell: int) -> None:
    """PSNR of `sheet` against the sheet at `other`: over the whole sheet, then each picture's
    (median, lowest)."""
    a, b = np.asarray(sheet), np.asarray(Image.open(other).convert("RGB"))
    cells = [psnr(a[y:y + cell, x:x + cell], b[y:y + cell, x:x + cell])
             for i in range(len(PROMPTS)) for x, y in [((i % 8) * cell, (i // 8) * (cell + 14))]]
    lowest = int(np.argmin(cells))
    print(f"PSNR against {other}: {psnr(a, b):.1f} dB "
          f"over the sheet; per picture median {np.median(cells):.1f} dB, lowest {cells[lowest]:.1f} dB "
          f"({PROMPTS[lowest]})")


if __name__ == "__main__":
    main()
