"""Do offline dreams show what they were asked for? Dreams with and without the diffusion prior.

Each prompt is dreamed with the built-in generator and guide, once with each prior setting
(`none`: CLIP alone; `auto`: reverie-mini's denoiser as the prior). The final pictures are then
judged by the built-in CLIP's *judge*, a different image encoder from the dreaming guide the
dream climbed, so a dream cannot score well by fooling its own guide. For each picture the judge
ranks all the prompts of the list; the table gives how often the dream's own prompt comes first
(top-1) or in the first three, and the mean margin of its own prompt's cosine over the mean of
the others.

    .venv/bin/python benchmarks/eval_dream.py                     # 12 prompts, 128 px, 100 iterations
    .venv/bin/python benchmarks/eval_dream.py --size 64 --iterations 200 --out /tmp/dreams.png
"""

from __future__ import annotations

import argparse
import time

PROMPTS = [
    "red apple", "green frog face", "yellow star", "blue car", "pink flower", "orange cat face",
    "snowman", "house", "penguin", "guitar", "red heart", "banana",
]


def dream_pictures(prior: str, args) -> tuple[list, float]:
    from reverie.methods.dreaming import start_dream

    pictures, started = [], time.perf_counter()
    for prompt in PROMPTS:
        dream = start_dream(dict(prompt=prompt, width=args.size, height=args.size, seed=args.seed,
                                 save_every=10**6, prior=prior, prior_guidance=args.prior_guidance))
        for _ in range(args.iterations):
            dream.iterate()
        pictures.append(dream.picture())
        print(f"  {prior:>5}  {prompt}", flush=True)
    return pictures, (time.perf_counter() - started) / len(PROMPTS)


def judge(pictures, scorer) -> tuple[float, float, float]:
    """(top-1, top-3, mean margin) of each picture's own prompt among all PROMPTS, by the judge."""
    import torch

    rows = torch.tensor([[scorer.scores([picture], prompt)[0] for prompt in PROMPTS] for picture in pictures])
    own = rows.diagonal()
    ranks = (rows > own[:, None]).sum(dim=1)
    others = (rows.sum(dim=1) - own) / (len(PROMPTS) - 1)
    return float((ranks == 0).float().mean()), float((ranks < 3).float().mean()), float((own - others).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-guidance", type=float, default=7.5)
    parser.add_argument("--priors", default="none,auto", help="comma-separated prior settings to compare")
    parser.add_argument("--out", default=None, help="also write the pictures as a grid (a row per prior)")
    args = parser.parse_args()

    from reverie.methods.rerank import Scorer

    scorer = Scorer.load("mini")  # the judge, not the dreaming guide
    results, grids = [], []
    for prior in args.priors.split(","):
        pictures, seconds = dream_pictures(prior, args)
        results.append((prior, *judge(pictures, scorer), seconds))
        grids.append(pictures)

    print(f"\n{len(PROMPTS)} prompts, {args.size} px, {args.iterations} iterations, judged by the built-in CLIP's judge")
    print("| prior | top-1 | top-3 | margin | s per dream |\n|---|---|---|---|---|")
    for prior, top1, top3, margin, seconds in results:
        print(f"| {prior} | {top1:.0%} | {top3:.0%} | {margin:+.3f} | {seconds:.1f} |")
    print(f"chance: top-1 {1 / len(PROMPTS):.0%}, top-3 {3 / len(PROMPTS):.0%}")
    if args.out:
        from PIL import Image

        size = args.size
        sheet = Image.new("RGB", (size * len(PROMPTS), size * len(grids)), "white")
        for row, pictures in enumerate(grids):
            for column, picture in enumerate(pictures):
                sheet.paste(picture.resize((size, size)), (column * size, row * size))
        sheet.save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
