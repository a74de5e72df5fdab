"""The x2 upscalers side by side: how close to the true picture, how fast, how much they differ.

Three ways to make a picture twice as large, each timed and scored:
- bicubic: PIL's bicubic enlargement (the floor any network must beat);
- x4 halved: the built-in x4 network, then a Lanczos halving (what reverie did for x2 before
  the x2 network existed);
- x2: the built-in x2 network (models/upscaler.py).

fidelity  every held-out picture of a dataset (`--data`, e.g. vector art rendered at 256 px:
          `reverie data build --sources fluent,tabler --size 256 --out data/build/hires-256`),
          shrunk to half with an antialiased filter as the upscalers were trained, then enlarged
          back; PSNR (dB, on 8-bit levels) against the true picture, mean over the pictures.
speed     four 128 px pictures enlarged to 256 px one after another (as reverie-mini's default
          does), warm, median of --repeats, the methods alternating so a busy machine slows all.
mini      reverie-mini's own pictures (6 prompts x 4, 128 px): PSNR of the x2 network's
          enlargement against the x4-halved one, i.e. how much the pictures users see changed.

    .venv/bin/python benchmarks/eval_upscaler.py --data data/build/hires-256 --sheet /tmp/upscalers.png
    .venv/bin/python benchmarks/eval_upscaler.py --x2 runs/upscaler-x2/export   # a trained, not yet shipped x2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPTS = ["red apple", "blue car", "green frog", "yellow star", "pink flower", "rocket"]


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(im.convert("RGB"), dtype=np.float64) for im in (a, b))
    return float(10 * np.log10(255.0**2 / max(np.mean((x - y) ** 2), 1e-10)))


def methods(x2_folder: Path | None) -> dict:
    from reverie.models.upscaler import UPSCALER_DIR, load_upscaler, upscale_image

    x4, x2 = load_upscaler(), load_upscaler(x2_folder or UPSCALER_DIR, scale=2)
    return {
        "bicubic": lambda im: im.resize((im.width * 2, im.height * 2), Image.BICUBIC),
        "x4 halved": lambda im: (big := upscale_image(x4, im)).resize((big.width // 2, big.height // 2), Image.LANCZOS),
        "x2": lambda im: upscale_image(x2, im),
    }


def fidelity(ways: dict, data: Path, limit: int) -> tuple[dict, int, list]:
    from reverie.training.data.folder import read_splits
    from reverie.training.upscaler import shrink

    splits = read_splits(data, 256, need_captions=False)
    held_out = splits.test if splits.test is not None else splits.train
    images = held_out.images[:limit]
    scores = {name: [] for name in ways}
    shown = []
    for index, picture in enumerate(images):
        true = Image.fromarray(picture.permute(1, 2, 0).numpy())
        low = shrink(picture[None].float() / 127.5 - 1, 2)[0]
        small = Image.fromarray(((low + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
        row = [true]
        for name, way in ways.items():
            larger = way(small)
            scores[name].append(psnr(larger, true))
            row.append(larger)
        if index < 6:
            shown.append(row)
    return {name: statistics.mean(values) for name, values in scores.items()}, len(images), shown


def speed(ways: dict, pictures: list[Image.Image], repeats: int) -> dict:
    times = {name: [] for name in ways}
    for name, way in ways.items():  # warm each once
        way(pictures[0])
    for _ in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            for picture in pictures:
                way(picture)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def mini_pictures() -> list[Image.Image]:
    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    pictures = []
    for seed, prompt in enumerate(PROMPTS):
        result = studio.run(make_request(prompt=prompt, seed=seed, n_samples=4, upscale=1))
        pictures += [item.image for item in result.images]
    return pictures


def contact_sheet(rows: list[list[Image.Image]], path: Path) -> None:
    """Each row: the true picture, then each method's enlargement; a 96 px crop of the middle at 2x zoom."""
    crop = 96
    cells = []
    for row in rows:
        side = row[0].width
        box = ((side - crop) // 2, (side - crop) // 2, (side + crop) // 2, (side + crop) // 2)
        cells.append([im.crop(box).resize((crop * 2, crop * 2), Image.NEAREST) for im in row])
    sheet = Image.new("RGB", (crop * 2 * len(rows[0]), crop * 2 * len(rows)), "white")
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            sheet.paste(cell.convert("RGB"), (c * crop * 2, r * crop * 2))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/build/hires-256"))
    parser.add_argument("--limit", type=int, default=400, help="held-out pictures scored, at most")
    parser.add_argument("--x2", type=Path, default=None, help="folder of an x2 network's weights (default: the built-in)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sheet", type=Path, default=None, help="write a contact sheet of middle crops: true, then each method")
    args = parser.parse_args()
    torch.manual_seed(0)

    ways = methods(args.x2)
    scores, count, shown = fidelity(ways, args.data, args.limit)
    minis = mini_pictures()
    times = speed(ways, minis[:4], args.repeats)
    x2, halved = ways["x2"], ways["x4 halved"]
    change = statistics.mean(psnr(x2(p), halved(p)) for p in minis)

    print(f"{count} held-out pictures of {args.data} (256 px, shrunk to 128 and enlarged back); "
          f"speed: four 128 px mini pictures, median of {args.repeats}, {torch.get_num_threads()} threads")
    print("| method | PSNR vs the true picture dB | four 128->256 px s |")
    print("|---|---:|---:|")
    for name in ways:
        print(f"| {name} | {scores[name]:.2f} | {times[name]:.3f} |")
    print(f"reverie-mini's pictures ({len(minis)}): the x2 network's enlargement is {change:.1f} dB from the x4 halved one")
    if args.sheet:
        contact_sheet(shown, args.sheet)
        print(f"contact sheet (true, {', '.join(ways)}): {args.sheet}")


if __name__ == "__main__":
    main()
