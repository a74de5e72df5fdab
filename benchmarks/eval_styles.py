"""Do Dream's style presets visibly work on reverie-mini? Measured on the pixels, per look.

Each style filter of training/data/style_filters.py names a statistic its look moves (palette
blocks for pixel art, colourfulness for ink sketch, a dark purple background for synthwave, ...).
For every look, the preset that teaches it (its template starts "{prompt}, <the look's words>")
is applied to a few plain prompts; each styled picture is paired with the plain picture of the
same prompt and seed, and the table gives how often the styled one moves the statistic the
look's way, and the statistic's mean over plain and styled pictures. A model that ignores the
style words scores about 50% (the pictures differ only by noise in the text).

    .venv/bin/python benchmarks/eval_styles.py                              # the built-in model
    .venv/bin/python benchmarks/eval_styles.py --model-dir runs/mini-v08   # another reverie-mini folder
    .venv/bin/python benchmarks/eval_styles.py --grid docs/style-presets-grid.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPTS = ("red apple", "a cat face", "rocket", "blue car", "green tree", "smiling face", "butterfly", "house")


def preset_for(look, styles) -> str:
    """The preset whose template starts with the look's words right after the prompt (the one named like the look first)."""
    teaching = [s.name for s in styles if s.prompt.startswith("{prompt}, " + look.words)]
    if not teaching:
        raise SystemExit(f"no preset teaches {look.words!r}")
    named = [name for name in teaching if name.lower().replace(" ", "-") in (look.name, look.words.lower().replace(" ", "-"))
             or name.lower() in look.words.lower()]
    return (named or teaching)[0]


def labelled_grid(rows: list[list[Image.Image]], row_labels: list[str], column_labels: list[str], cell: int = 96) -> Image.Image:
    """Pictures in rows and columns, each column headed by its label and each row by its own."""
    left, top = 84, 30
    sheet = Image.new("RGB", (left + cell * len(column_labels), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        for line, text in enumerate(_wrap(label, 14)[:2]):
            draw.text((left + c * cell + 3, 2 + line * 12), text, fill=(0, 0, 0))
    for r, (label, pictures) in enumerate(zip(row_labels, rows)):
        for line, text in enumerate(_wrap(label, 12)[:3]):
            draw.text((3, top + r * cell + cell // 2 - 12 + line * 12), text, fill=(0, 0, 0))
        for c, picture in enumerate(pictures):
            sheet.paste(picture.convert("RGB").resize((cell - 2, cell - 2), Image.Resampling.LANCZOS), (left + c * cell, top + r * cell))
    return sheet


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a reverie-mini folder (default: the built-in model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the plain prompts")
    parser.add_argument("--n", type=int, default=2, help="pictures (seeds) per prompt")
    parser.add_argument("--grid", type=Path, help="also save a style grid here (rows prompts, columns looks; the first seed)")
    parser.add_argument("--grid-prompts", type=int, default=4, help="rows of the grid")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from reverie.models.mini import MINI_DIR, load_mini
    from reverie.prompts.styles import apply_style, load_styles
    from reverie.studio import Studio, make_request
    from reverie.training.data.style_filters import FILTERS, to_array

    studio = Studio(device="cpu")
    folder = args.model_dir or MINI_DIR
    studio.add_model("under-test", load_mini(folder=folder))
    styles = load_styles()
    prompts = PROMPTS[: args.prompts]

    def pictures(style: str, prompt: str, index: int) -> list[Image.Image]:
        text, negative = apply_style(style, prompt)
        request = make_request(prompt=text, negative_prompt=negative, model="under-test", steps=args.steps, cfg_scale=args.cfg,
                               sampler=args.sampler, seed=3000 + 10 * index, n_samples=args.n, upscale=1)
        return [image.image for image in studio.generate(request).images]

    started = time.perf_counter()
    plain = {p: pictures("None", p, i) for i, p in enumerate(prompts)}
    rows, styled_first = [], {}
    for look in FILTERS:
        preset = preset_for(look, styles)
        before, after, right = [], [], []
        for i, prompt in enumerate(prompts):
            styled = pictures(preset, prompt, i)
            styled_first[(look.name, prompt)] = styled[0]
            for a, b in zip(plain[prompt], styled):
                s0, s1 = look.statistic(to_array(a)), look.statistic(to_array(b))
                before.append(s0)
                after.append(s1)
                right.append((s1 - s0) * look.direction > 0)
        rows.append({"look": look.name, "preset": preset, "statistic": look.statistic.__name__.removeprefix("stat_"),
                     "direction": look.direction, "plain": float(np.mean(before)), "styled": float(np.mean(after)),
                     "right_way": float(np.mean(right)), "pairs": len(right)})
    seconds = time.perf_counter() - started

    print(f"{folder}: {len(prompts)} prompts x {args.n} seeds x {len(FILTERS)} looks, {args.steps} steps {args.sampler} "
          f"CFG {args.cfg} ({seconds:.0f} s)")
    print(f"| look | preset | statistic (way) | plain | styled | moved the right way |")
    print(f"|---|---|---|---|---|---|")
    for row in rows:
        way = "up" if row["direction"] > 0 else "down"
        print(f"| {row['look']} | {row['preset']} | {row['statistic']} ({way}) | {row['plain']:.3f} | {row['styled']:.3f} "
              f"| {100 * row['right_way']:.0f}% of {row['pairs']} |")
    overall = float(np.mean([r["right_way"] for r in rows]))
    print(f"mean over looks: {100 * overall:.0f}% (a model that ignores the words: about 50%)")
    if args.grid:
        shown = prompts[: args.grid_prompts]
        grid_rows = [[plain[p][0]] + [styled_first[(look.name, p)] for look in FILTERS] for p in shown]
        labels = ["plain"] + [preset_for(look, styles) for look in FILTERS]
        labelled_grid(grid_rows, list(shown), labels).save(args.grid)
        print(f"grid: {args.grid}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(folder), "steps": args.steps, "cfg": args.cfg, "prompts": list(prompts),
                                         "n": args.n, "rows": rows, "mean_right_way": overall}, indent=2))


if __name__ == "__main__":
    main()
