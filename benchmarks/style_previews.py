"""The style presets' preview pictures: one small picture per preset, made by reverie-mini.

Every preset in prompts/styles.json that names a `preview` gets it written to
src/reverie/prompts/previews/ (shipped as package data; the studio's style picker shows them):
the same prompt and seed for all, so the pictures differ only by the style.

    .venv/bin/python benchmarks/style_previews.py                     # all presets, the built-in model
    .venv/bin/python benchmarks/style_previews.py --only "Pixel art"  # one
"""

from __future__ import annotations

import argparse
import time
from io import BytesIO

from PIL import Image

PROMPT = "a cat face"
SEED = 7
SIZE = 96


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--only", action="append", help="a preset's name (repeatable); default: every preset")
    args = parser.parse_args()

    from reverie.outputs.files import atomic_write
    from reverie.prompts.styles import PREVIEWS_DIR, apply_style, load_styles
    from reverie.studio import Studio, make_request

    studio = Studio(device="cpu")
    started, written = time.perf_counter(), 0
    for style in load_styles():
        if not style.preview or (args.only and style.name not in args.only):
            continue
        prompt, negative = apply_style(style.name, args.prompt)
        request = make_request(prompt=prompt, negative_prompt=negative, seed=args.seed, steps=args.steps, n_samples=1,
                               upscale=1, **style.settings)
        picture = studio.generate(request).images[0].image.convert("RGB").resize((args.size, args.size), Image.Resampling.LANCZOS)
        data = BytesIO()
        picture.save(data, format="WEBP", quality=82, method=6)
        atomic_write(PREVIEWS_DIR / style.preview, lambda partial: partial.write_bytes(data.getvalue()))
        written += 1
    print(f"{written} previews of {args.prompt!r} (seed {args.seed}, {args.steps} steps) in {PREVIEWS_DIR} "
          f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
