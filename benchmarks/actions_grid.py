"""Midjourney's actions on reverie-mini's pictures: a sheet of every action, and V's strengths.

For each prompt, a picture is made (20 steps, mini's defaults), then every action in
`reverie.actions.ACTIONS` is run on it through the Python API (one picture, a fixed seed). The
sheet (docs/actions-grid.png) shows a row per prompt: the source, then each action's picture.
Then V's strength is measured: the mean absolute pixel distance (0-255) of variations from their
source, for several strengths, two pictures each; that is how VARY_SUBTLE and VARY_STRONG were picked.

    .venv/bin/python benchmarks/actions_grid.py                 # about 3 minutes on two CPU cores
    .venv/bin/python benchmarks/actions_grid.py --out /tmp/actions.png --strengths 0.3 0.5 0.7
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPTS = ["red apple, Noto emoji", "a castle on a hill, Noto emoji"]
CELL = 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/actions-grid.png")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--strengths", type=float, nargs="*", default=[0.3, 0.35, 0.5, 0.6, 0.7, 0.8])
    args = parser.parse_args()

    from reverie.actions import ACTIONS
    from reverie.studio import Studio, request_for_action

    studio = Studio()
    work = Path(tempfile.mkdtemp(prefix="reverie-actions-"))
    rows, distances = [], {}
    for number, prompt in enumerate(PROMPTS):
        source = studio.generate(prompt, seed=args.seed, n_samples=1, outdir=work / f"source-{number}").images[0]
        row = [("source", source.image)]
        for name in ACTIONS:
            extra = {} if name == "upscale" else {"n_samples": 1}
            request = request_for_action(source.path, name, seed=args.seed + 100, **extra)
            row.append((name, studio.run(request, grid=False).images[0].image))
        rows.append(row)
        original = np.asarray(source.image.convert("RGB"), np.float32)
        for strength in args.strengths:
            request = request_for_action(source.path, "vary_subtle", seed=args.seed + 200, n_samples=2, strength=strength)
            pictures = [np.asarray(i.image.convert("RGB"), np.float32) for i in studio.run(request, grid=False).images]
            distances.setdefault(strength, []).extend(float(np.abs(p - original).mean()) for p in pictures)
    write_sheet(rows, Path(args.out))
    print(f"sheet: {args.out}")
    print("strength  distance from the source (mean |pixel| 0-255; " + ", ".join(PROMPTS) + ", two pictures each)")
    for strength, values in distances.items():
        print(f"{strength:<8}  " + "  ".join(f"{v:5.1f}" for v in values) + f"   mean {np.mean(values):5.1f}")


def write_sheet(rows: list[list[tuple[str, Image.Image]]], out: Path) -> None:
    """Each picture fitted in a CELL square (its aspect kept), its action's name above it."""
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * CELL, len(rows) * (CELL + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (name, picture) in enumerate(row):
            picture = picture.convert("RGB").copy()
            picture.thumbnail((CELL - 4, CELL - 4))
            x, y = c * CELL, r * (CELL + 14)
            draw.text((x + 2, y), name, fill="black")
            sheet.paste(picture, (x + (CELL - picture.width) // 2, y + 14 + (CELL - picture.height) // 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


if __name__ == "__main__":
    main()
