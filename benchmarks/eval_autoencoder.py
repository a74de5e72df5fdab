"""How faithfully does an autoencoder give back held-out pictures, and their colours?

The denoiser can only draw what the autoencoder can decode, so a colour the autoencoder shifts
(red toward orange, green toward brown) is one no prompt can ask for. For every held-out
picture this encodes, decodes the posterior mean (what the denoiser learned to make) and
measures the pixel L1 and the CIELAB distance between the main colours (the foreground median,
as in eval_colour.py) of the picture and its reconstruction, by the picture's colour class.
A distance under about 10 is hard to see; over 20 is another colour.

    .venv/bin/python benchmarks/eval_autoencoder.py                       # the built-in autoencoder
    .venv/bin/python benchmarks/eval_autoencoder.py runs/vae-v02/vae runs/ae-v04/vae
    .venv/bin/python benchmarks/eval_autoencoder.py runs/mini-v07/vae runs/grow-v08/vae   # 64 px, grown 128 px
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from eval_colour import main_colour

# colour_classes' 15 classes: twelve 30-degree hues from red, then dark, grey, light.
HUES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta", "rose")
CLASS_NAMES = HUES + ("dark", "grey", "light")


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decoded posterior means of uint8 pictures [N,3,S,S], in [-1, 1]."""
    from reverie.training.autoencoder import posteriors

    means = posteriors(vae, images, batch_size)[0]
    return torch.cat([vae.decode(means[i : i + batch_size]).sample for i in range(0, len(means), batch_size)]).clamp(-1, 1)


def colour_distances(images: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
    """CIELAB distance between the main colours of each picture and its reconstruction (nan for blank ones)."""
    from reverie.training.autoencoder import to_pil, to_unit_range

    found = []
    for original, drawn in zip(to_pil(to_unit_range(images)), to_pil(recon)):
        a, b = main_colour(original), main_colour(drawn)
        found.append(np.nan if a is None or b is None else float(np.linalg.norm(a - b)))
    return np.array(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="autoencoder folders (default: the built-in one)")
    parser.add_argument("--data", type=Path, default=Path("data/build/mini-64"))
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    from reverie.models.mini import MINI_DIR
    from reverie.training.autoencoder import colour_classes, to_unit_range
    from reverie.training.mini import read_dataset

    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; run `make data` first")
    folders = args.folders or [MINI_DIR / "vae"]
    for folder in folders:
        if not (folder / "config.json").is_file():
            raise SystemExit(f"{folder} is not an autoencoder folder (it has no config.json)")
    # Pictures are read at each autoencoder's own size (64 px art is enlarged with Lanczos for a
    # 128 px one); the colour classes come from the 64 px originals.
    test = read_dataset(args.data, 64, "test")
    classes = colour_classes(test.images).numpy()
    shown = [c for c in range(len(CLASS_NAMES)) if (classes == c).sum() >= 5]

    print(f"{len(test.images)} held-out pictures; CIELAB distance of the main colour after a round trip, by colour class")
    header = f"{'autoencoder':<34} {'L1':>6} {'mean':>5} " + " ".join(f"{CLASS_NAMES[c]:>7}" for c in shown)
    print(header)
    print(f"{'(pictures)':<34} {'':>6} {len(classes):>5} " + " ".join(f"{(classes == c).sum():>7}" for c in shown))
    for folder in folders:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
        size = int(vae.config.sample_size)
        images = test.images if size == 64 else read_dataset(args.data, size, "test").images
        recon = reconstruct(vae, images)
        l1 = float((recon - to_unit_range(images)).abs().mean())
        distance = colour_distances(images, recon)
        per_class = [np.nanmean(distance[classes == c]) for c in shown]
        name = str(folder)[-34:]
        print(f"{name:<34} {l1:6.4f} {np.nanmean(distance):5.1f} " + " ".join(f"{d:7.1f}" for d in per_class))


if __name__ == "__main__":
    main()
