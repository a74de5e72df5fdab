"""Does reverie-mini draw the colour a prompt names? Measured on the pixels, with no judge model.

The built-in CLIP barely sees colour, so eval_mini.py cannot answer this. Here each picture's
main colour (the median of its foreground, in CIELAB) is matched to the nearest of eight
named colours, whose values come from the real training pictures that carry those names
("red heart", "blue circle", ...). Accuracy is the share of pictures whose colour is the one the
prompt named; chance is 1 in 8. Two groups of prompts:

- "named shapes": {colour} {heart|circle|square} in each of three emoji styles, 72 prompts
  (blue circle, blue square and orange square are held-out concepts, never trained on);
- "new pairings": colours on objects that never came in those colours (a blue apple, a purple
  car), 20 prompts: whether colour words combine with other words.

Real pictures of the named shapes, scored the same way, give the ceiling.

    .venv/bin/python benchmarks/eval_colour.py                        # the built-in model
    .venv/bin/python benchmarks/eval_colour.py --model-dir runs/mini-v02  # another reverie-mini folder
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
SHAPES = ("heart", "circle", "square")
STYLES = ("Noto emoji", "Twemoji", "flat Fluent emoji")
NEW_OBJECTS = ("apple", "car", "star", "umbrella")
NEW_COLOURS = ("red", "yellow", "green", "blue", "purple")
WHITE_DISTANCE = 15.0  # CIELAB distance from the white page beyond which a pixel is foreground

_TO_LAB = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def lab(picture: Image.Image) -> np.ndarray:
    """[H, W, 3] float CIELAB (L 0-100, a and b signed)."""
    raw = np.asarray(ImageCms.applyTransform(picture.convert("RGB"), _TO_LAB))
    signed = raw[..., 1:].view(np.int8).astype(np.float32)  # Pillow stores a and b as signed bytes
    return np.concatenate([raw[..., :1].astype(np.float32) * 100 / 255, signed], axis=-1)


def main_colour(picture: Image.Image) -> np.ndarray | None:
    """The median CIELAB value of the picture's foreground (None for a blank page)."""
    values = lab(picture).reshape(-1, 3)
    white = np.array([100.0, 0.0, 0.0], dtype=np.float32)
    foreground = values[np.linalg.norm(values - white, axis=1) > WHITE_DISTANCE]
    return np.median(foreground, axis=0) if len(foreground) >= 16 else None


def real_colours(data: Path) -> list[tuple[str, np.ndarray]]:
    """(named colour, measured main colour) for every real '{colour} {shape}' picture, in any split and style."""
    found = []
    for caption in sorted(data.glob("*/*/*.txt")):
        words = caption.read_text().splitlines()[0].rsplit(", ", 1)[0].split()
        if len(words) == 2 and words[0] in COLOURS and words[1] in SHAPES:
            colour = main_colour(Image.open(caption.with_suffix(".png")))
            if colour is not None:
                found.append((words[0], colour))
    return found


def palette_from(real: list[tuple[str, np.ndarray]], data: Path) -> dict[str, np.ndarray]:
    """Each colour's CIELAB value: the mean main colour of the real pictures named with it."""
    missing = [c for c in COLOURS if not any(name == c for name, _ in real)]
    if missing:
        raise SystemExit(f"no real pictures of {', '.join(missing)} shapes under {data}; run `make data` first")
    return {c: np.mean([colour for name, colour in real if name == c], axis=0) for c in COLOURS}


def nearest(colour: np.ndarray | None, palette: dict[str, np.ndarray]) -> str:
    if colour is None:
        return "none"
    return min(palette, key=lambda name: float(np.linalg.norm(palette[name] - colour)))


def classify(picture: Image.Image, palette: dict[str, np.ndarray]) -> str:
    return nearest(main_colour(picture), palette)


def prompts() -> list[dict]:
    named = [{"group": "named shapes", "colour": c, "text": f"{c} {s}, {style}"}
             for c in COLOURS for s in SHAPES for style in STYLES]
    new = [{"group": "new pairings", "colour": c, "text": f"{c} {o}, Noto emoji"} for c in NEW_COLOURS for o in NEW_OBJECTS]
    return named + new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    parser.add_argument("--model-dir", type=Path, help="a reverie-mini folder (default: the built-in model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--n", type=int, default=4, help="pictures per prompt")
    parser.add_argument("--rerank", type=int, default=1, help="keep the best n of n x N candidates, chosen by the built-in CLIP")
    parser.add_argument("--grid", type=Path, help="also save the named-shape pictures as a grid here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from reverie.models.mini import MINI_DIR, load_mini
    from reverie.outputs.grid import make_grid
    from reverie.studio import make_request
    from reverie.studio import Studio

    real_measured = real_colours(args.data)
    palette = palette_from(real_measured, args.data)
    studio = Studio(device="cpu")
    folder = args.model_dir or MINI_DIR
    studio.add_model("under-test", load_mini(folder=folder))
    started = time.perf_counter()
    results, grid = [], []
    for i, prompt in enumerate(prompts()):
        request = make_request(prompt=prompt["text"], model="under-test", steps=args.steps, cfg_scale=args.cfg,
                               sampler=args.sampler, seed=2000 + args.n * i * args.rerank, n_samples=args.n, upscale=1,
                               rerank=args.rerank)
        pictures = [image.image for image in studio.generate(request).images]
        if prompt["group"] == "named shapes":
            grid.append(pictures[0])
        results.append(prompt | {"drawn": [classify(p, palette) for p in pictures]})
    seconds = time.perf_counter() - started
    real = [(name, nearest(colour, palette)) for name, colour in real_measured]

    chosen = f" (best of {args.n * args.rerank})" if args.rerank > 1 else ""
    print(f"{folder}: {len(results)} prompts x {args.n} pictures{chosen}, {args.steps} steps {args.sampler} CFG {args.cfg} "
          f"({seconds:.0f} s)")
    print(f"{'group':<14} {'prompts':>7} {'right colour':>13} {'most drawn':>18}")
    rows = []
    for group in ("named shapes", "new pairings"):
        members = [r for r in results if r["group"] == group]
        hits = [d == r["colour"] for r in members for d in r["drawn"]]
        common = Counter(d for r in members for d in r["drawn"]).most_common(1)[0]
        share = common[1] / len(hits)
        rows.append({"group": group, "prompts": len(members), "accuracy": float(np.mean(hits)),
                     "most_drawn": common[0], "most_drawn_share": share})
        print(f"{group:<14} {len(members):>7} {100 * np.mean(hits):12.1f}% {common[0]:>10} ({100 * share:.0f}%)")
    real_accuracy = float(np.mean([truth == drawn for truth, drawn in real]))
    print(f"{'real pictures':<14} {len(real):>7} {100 * real_accuracy:12.1f}%")
    print(f"{'chance':<14} {'':>7} {100 / len(COLOURS):12.1f}%")
    per_colour = {c: float(np.mean([d == c for r in results if r["group"] == "named shapes" and r["colour"] == c
                                    for d in r["drawn"]])) for c in COLOURS}
    print("named shapes by colour: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in per_colour.items()))
    if args.grid:
        make_grid(grid, columns=len(SHAPES) * len(STYLES)).save(args.grid)
        print(f"grid (one row a colour: {', '.join(COLOURS)}): {args.grid}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "real_accuracy": real_accuracy, "per_colour": per_colour,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
