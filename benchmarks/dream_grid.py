"""A grid of offline dreams (built-in autoencoder + built-in CLIP) as they progress.

Each row is one prompt; columns are the picture at the given iterations, with the CLIP score of
the prompt printed beside it. Writes docs/dream-grid.png.

    .venv/bin/python benchmarks/dream_grid.py               # at mini's 128 px, shown at 256
    .venv/bin/python benchmarks/dream_grid.py --size 64 --upscale 1 --prior none --out /tmp/no-prior.png

By default the dream has reverie-mini's diffusion prior (score distillation) beside the guide,
as `reverie dream` does; `--prior none` shows CLIP alone. The pictures are shown as the dream
saves them (by default dreamed at 128 px and enlarged 2x by the built-in upscaler).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

PROMPTS = ["red apple", "green frog face", "yellow star", "blue car | red:-0.5", "pink flower:1 | leaves:0.5"]
CHECKPOINTS = [0, 25, 50, 100, 200]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="the dream's side (default: the generator's own)")
    parser.add_argument("--upscale", type=int, default=None, help="1, 2 or 4 (default: as `reverie dream`)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/dream-grid.png")
    parser.add_argument("--clip", default="mini", help="the guide: mini, or a `reverie train clip` export folder")
    parser.add_argument("--prior", default="auto", help="the diffusion prior: auto (mini), none, or a model")
    parser.add_argument("--prior-weight", type=float, default=1.0)
    parser.add_argument("--smoothness", type=float, default=0.0)
    args = parser.parse_args()

    from PIL import Image, ImageDraw

    from reverie.methods.dreaming import start_dream
    from reverie.methods.dreaming.prompts import parse_dream_prompt
    from reverie.studio import make_request

    requests = [make_request(mode="dream", prompt=prompt, width=args.size, height=args.size, upscale=args.upscale, seed=args.seed,
                                   save_every=10**6, guides=[args.clip], prior=args.prior, prior_weight=args.prior_weight,
                                   smoothness=args.smoothness) for prompt in PROMPTS]
    size, label_width = requests[0].width * requests[0].upscale, 190
    grid = Image.new("RGB", (label_width + size * len(CHECKPOINTS), size * len(PROMPTS) + 20), "white")
    draw = ImageDraw.Draw(grid)
    for column, step in enumerate(CHECKPOINTS):
        draw.text((label_width + column * size + 4, 4), f"iteration {step}", fill="black")
    work = Path(tempfile.mkdtemp(prefix="dream-grid-"))
    for row, (prompt, request) in enumerate(zip(PROMPTS, requests)):
        dream = start_dream(request)
        main_text = parse_dream_prompt(prompt)[0].text
        y = 20 + row * size
        draw.text((4, y + 4), prompt, fill="black")
        for column, step in enumerate(CHECKPOINTS):
            if step > dream.step:
                dream.run(step - dream.step, work / str(row))
            grid.paste(dream.shown(dream.picture()), (label_width + column * size, y))
            score = dream.scores([main_text])[0]
            draw.text((label_width + column * size + 4, y + size - 14), f"{score:.2f}", fill="black")
        print(f"{prompt}: score {score:.3f} after {dream.step} iterations", flush=True)
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
