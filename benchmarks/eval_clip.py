"""How well does the built-in CLIP match pictures to captions it never trained on?

The held-out split (concepts kept out of all training) gives 765 pictures of 431 concepts. Each
picture is scored against the first caption line of every held-out picture ("<label>, <style>");
a hit is the picture's own caption, or that of another picture with the same caption. Reported
both ways (picture -> caption, caption -> picture), as top-1 and top-5, with chance, for each
CLIP folder given. The text side is the same frozen MiniLM for all, so only the image encoders
differ.

    .venv/bin/python benchmarks/eval_clip.py                          # the built-in CLIP
    .venv/bin/python benchmarks/eval_clip.py runs/clip/export src/reverie/builtin/mini-clip
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def retrieval(similarity: torch.Tensor, same: torch.Tensor, k: int) -> float:
    """Share of rows whose k best columns include a right one (`same` marks the right pairs)."""
    best = similarity.topk(k, dim=1).indices
    return float(same.gather(1, best).any(dim=1).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="mini-clip folders (default: the built-in one)")
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    args = parser.parse_args()

    from reverie.models.mini_clip import CLIP_DIR, IMAGE_SIZE, load_clip
    from reverie.training.autoencoder import to_unit_range
    from reverie.training.mini import read_dataset

    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; run `make data` first")
    test = read_dataset(args.data, IMAGE_SIZE, "test")
    captions = [lines[0] for lines in test.captions]
    unique = sorted(set(captions))
    column = {text: i for i, text in enumerate(unique)}
    truth = torch.tensor([column[c] for c in captions])
    same = truth[:, None] == torch.arange(len(unique))[None, :]  # [pictures, captions]

    print(f"{len(test.images)} held-out pictures, {len(unique)} captions; chance top-1 "
          f"{100 / len(unique):.1f}% (picture -> caption)")
    print(f"{'CLIP':<40} {'p->c top-1':>10} {'top-5':>6} {'c->p top-1':>10} {'top-5':>6}")
    for folder in args.folders or [CLIP_DIR]:
        clip = load_clip(folder)
        with torch.no_grad():
            images = torch.cat([clip.encode_images(to_unit_range(test.images[i : i + 256]))
                                for i in range(0, len(test.images), 256)])
            texts = clip.encode_texts(unique)
        similarity = images @ texts.T
        figures = (retrieval(similarity, same, 1), retrieval(similarity, same, 5),
                   retrieval(similarity.T, same.T, 1), retrieval(similarity.T, same.T, 5))
        print(f"{str(folder)[-40:]:<40} " + " ".join(f"{100 * f:{w}.1f}%" for f, w in zip(figures, (9, 5, 9, 5))))


if __name__ == "__main__":
    main()
