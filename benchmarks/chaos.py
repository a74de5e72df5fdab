"""How different the pictures of a batch are, by `--chaos`: the mean pairwise pixel distance
among the four pictures of a batch (levels of 255), on reverie-mini at its own settings (20
steps, 128 px, no upscale), three prompts, one seed each. docs/prompt-craft.md has the figures.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/chaos.py
"""

from __future__ import annotations

import itertools

import numpy as np

from reverie.studio import Studio

PROMPTS = ("a red apple", "a smiling cat face", "a house with a tree")
SEED = 1000


def main() -> None:
    studio = Studio(device="cpu")
    for chaos in (0, 25, 50, 75, 100):
        distances = []
        for prompt in PROMPTS:
            result = studio.generate(prompt, seed=SEED, n_samples=4, upscale=1, chaos=chaos)
            pictures = [np.asarray(image.image.convert("RGB"), dtype=np.float64) for image in result.images]
            distances += [np.abs(a - b).mean() for a, b in itertools.combinations(pictures, 2)]
        print(f"chaos {chaos:>3}: mean pairwise distance {np.mean(distances):5.1f} levels (of 255) over {len(distances)} pairs")


if __name__ == "__main__":
    main()
