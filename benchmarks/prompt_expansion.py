"""Does prompt expansion help? Short prompts against their expansions, judged against the SHORT prompt.

Prompts: the labels of held-out concepts (the dataset's test split: never seen by reverie-mini,
its judge, nor by the expansion's tables), chosen by a hash, up to four words. For each prompt
and seed, reverie-mini draws one picture from the short prompt and one from
`expand_prompt(prompt, seed)` with the same seed and settings; the built-in judge (the small
CLIP, methods/rerank.py's scorer) scores both against the short prompt. Printed: the mean
scores, the paired difference with a 95% interval (over prompts, seeds averaged first), the
win rate, and with --grid a picture grid (short above, expanded below) of the first prompts.

    .venv/bin/python benchmarks/prompt_expansion.py --offset 100 --prompts 40 --seeds 2 --steps 12 \\
        --variants expanded,style --grid docs/expansion-grid.png

`--variants` adds ablations (parts of the expansion only, by expansion_parts' kinds); pictures
of the same words are drawn once. The results are in docs/prompt-craft.md, "Prompt expansion".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# What each compared prompt keeps of the expansion (by expansion_parts' kinds); "expanded" is expand_prompt.
VARIANTS = {
    "expanded": None,
    "related+style": {"related", "style"},
    "style": {"style"},
    "related": {"related"},
}


def variant_prompt(prompt: str, seed: int, variant: str) -> str:
    from reverie.prompts.expansion import append_parts, expand_prompt, expansion_parts

    kinds = VARIANTS[variant]
    if kinds is None:
        return expand_prompt(prompt, seed)
    return append_parts(prompt, [words for kind, words in expansion_parts(prompt, seed) if kind in kinds])


def held_out_labels(data: Path, count: int, max_words: int = 4, offset: int = 0) -> list[str]:
    """`count` test-split labels of emoji and icons, in a fixed order given by a hash of the label."""
    labels = set()
    for caption in (data / "test").glob("*/*.txt"):
        label = caption.read_text(encoding="utf-8").splitlines()[0].rsplit(", ", 1)[0]
        if 1 <= len(label.split()) <= max_words and label.replace(" ", "").isalpha():
            labels.add(label)
    ordered = sorted(labels, key=lambda text: hashlib.sha1(text.encode("utf-8")).hexdigest())
    return ordered[offset : offset + count]


def interval(differences: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of a 95% normal interval."""
    return float(differences.mean()), float(1.96 * differences.std(ddof=1) / math.sqrt(len(differences)))


def labelled_grid(rows: list[list[Image.Image]], labels: list[str], side: int = 128) -> Image.Image:
    """Columns are prompts (their short words on top); the first row short, the second expanded."""
    top, left, gap = 28, 70, 4
    columns = len(labels)
    sheet = Image.new("RGB", (left + columns * (side + gap), top + len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        words = label if len(label) <= 20 else label[:19] + "…"
        draw.text((left + c * (side + gap) + 2, 8), words, fill="black")
    for r, (row, name) in enumerate(zip(rows, ("short", "expanded"))):
        draw.text((4, top + r * (side + gap) + side // 2), name, fill="black")
        for c, picture in enumerate(row):
            sheet.paste(picture.resize((side, side)), (left + c * (side + gap), top + r * (side + gap)))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--offset", type=int, default=0, help="skip this many prompts (a separate set for trying changes)")
    parser.add_argument("--variants", default="expanded",
                        help=f"comma-separated, of {', '.join(VARIANTS)}: parts of the expansion compared (ablations)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--grid", type=Path, help="write a short/expanded grid of the first --grid-prompts prompts, seed 0")
    parser.add_argument("--grid-prompts", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write every prompt, expansion and score here")
    args = parser.parse_args()

    from reverie.methods.rerank import Scorer
    from reverie.studio import Studio, make_request

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    prompts = held_out_labels(args.data, args.prompts, offset=args.offset)
    studio = Studio(device="cpu")
    judge = Scorer.load("mini")
    rows, pictures = [], {}
    started = time.perf_counter()
    for prompt in prompts:
        for seed in range(args.seeds):
            row = {"prompt": prompt, "seed": seed}
            for variant in ["short", *variants]:
                text = prompt if variant == "short" else variant_prompt(prompt, seed, variant)
                if text not in [row.get(f"{v}_prompt") for v in ["short", *variants]]:
                    request = make_request(prompt=text, steps=args.steps, seed=seed, n_samples=1, upscale=1)
                    picture = studio.generate(request, grid=False).images[0].image
                    pictures[(prompt, seed, text)] = picture
                    score = judge.scores([picture], prompt)[0]
                else:  # the same words as an earlier variant: the same picture
                    score = next(row[v] for v in ["short", *variants] if row.get(f"{v}_prompt") == text)
                row[f"{variant}_prompt"], row[variant] = text, score
            rows.append(row)
        print(f"{len(rows) // args.seeds}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started

    print(f"prompt expansion: {len(prompts)} held-out prompts x {args.seeds} seeds, reverie-mini {args.steps} steps, "
          f"128 px, judged by the built-in CLIP against the short prompt ({seconds:.0f} s)")
    print("| prompts | words added | mean score | paired difference vs short (95%) | wins |")
    print("|---|---:|---:|---:|---:|")
    short = np.array([r["short"] for r in rows])
    print(f"| short | 0 | {short.mean():.4f} | | |")
    for variant in variants:
        scores = np.array([r[variant] for r in rows])
        per_prompt = (scores - short).reshape(len(prompts), args.seeds).mean(1)
        mean, half = interval(per_prompt)
        wins = float((scores > short).mean())
        ties = float((scores == short).mean())
        added = np.mean([len(r[f"{variant}_prompt"].split()) - len(r["prompt"].split()) for r in rows])
        tied = f" ({100 * ties:.0f}% same words)" if ties else ""
        print(f"| {variant} | {added:.1f} | {scores.mean():.4f} | {mean:+.4f} +- {half:.4f} | {100 * wins:.0f}%{tied} |")
    print("examples (seed 0):")
    for r in rows[: 10 * args.seeds : args.seeds]:
        print(f"  {r['prompt']!r} -> {r[f'{variants[0]}_prompt']!r}  ({r['short']:.3f} -> {r[variants[0]]:.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    if args.grid:
        shown = prompts[: args.grid_prompts]
        first = {r["prompt"]: r[f"{variants[0]}_prompt"] for r in rows if r["seed"] == 0}
        grid = labelled_grid([[pictures[(p, 0, p)] for p in shown], [pictures[(p, 0, first[p])] for p in shown]], shown)
        from reverie.outputs.files import atomic_write

        atomic_write(args.grid, lambda partial: grid.save(partial, format="PNG"))
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
