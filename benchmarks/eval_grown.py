"""How well does a grown autoencoder draw reverie-mini's latents at 128 px?

On held-out vector art rendered at 128 px (the truth), the latent is the old 64 px encoder's
reading of the picture halved (the kind of latent the denoiser makes). Three ways of drawing
that latent at 128 px are compared with the truth:

- old + bicubic: the 64 px autoencoder's picture, enlarged bicubically;
- old + upscaler: the 64 px picture through the built-in 4x upscaler, halved (what a 128 px
  picture from reverie-mini looked like before v0.8);
- grown: the grown autoencoder's decoder, drawing 128 px directly.

It prints the pixel L1 (in [-1, 1] units), the L1 of the image gradients (how crisp and in
place the edges are) and PSNR; and for the grown encoder, the distance of its latent of the
128 px truth to the old latent, relative to the latents' spread, and its round trip's L1.

    .venv/bin/python benchmarks/eval_grown.py --old runs/mini-v07/vae            # against the built-in one
    .venv/bin/python benchmarks/eval_grown.py --old OLD/vae --grown runs/grow-v08/vae --grid grown.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F


def crispness(a: torch.Tensor, b: torch.Tensor) -> float:
    from reverie.training.autoencoder import _gradients

    return float(sum(F.l1_loss(x, y) for x, y in zip(_gradients(a), _gradients(b))))


def decode(vae, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pictures in [-1, 1] from unscaled latents, a batch at a time."""
    return torch.cat([vae.decode(latents[i : i + batch_size]).sample for i in range(0, len(latents), batch_size)]).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).square().mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, required=True, help="the 64 px autoencoder the denoiser was trained on")
    parser.add_argument("--grown", type=Path, default=None, help="the grown autoencoder (default: the built-in one)")
    parser.add_argument("--data", type=Path, default=Path("data/build/hires-128"),
                        help="vector art at 128 px (reverie data build --sources fluent,tabler --size 128)")
    parser.add_argument("--grid", type=Path, default=None, help="write truth / bicubic / upscaler / grown rows here")
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    from reverie.models.mini import MINI_DIR
    from reverie.models.upscaler import load_upscaler
    from reverie.outputs.grid import make_grid
    from reverie.training.autoencoder import posteriors, to_pil, to_unit_range
    from reverie.training.grow import halve
    from reverie.training.mini import read_dataset

    if not args.data.is_dir():
        raise SystemExit(f"no dataset at {args.data}; run `reverie data build --sources fluent,tabler --size 128 --out {args.data}`")
    old = AutoencoderKL.from_pretrained(args.old, local_files_only=True, dtype=torch.float32).eval()
    grown = AutoencoderKL.from_pretrained(args.grown or MINI_DIR / "vae", local_files_only=True, dtype=torch.float32).eval()
    if int(grown.config.sample_size) != 2 * int(old.config.sample_size):
        raise SystemExit(f"{args.grown} draws {grown.config.sample_size} px, not twice {args.old}'s {old.config.sample_size} px")
    upscaler = load_upscaler().float().eval()
    test = read_dataset(args.data, int(grown.config.sample_size), "test")
    truth = to_unit_range(test.images)
    mean, _ = posteriors(old, halve(test.images))
    small = decode(old, mean)
    drawn = {
        "old + bicubic": F.interpolate(small, scale_factor=2, mode="bicubic", align_corners=False).clamp(-1, 1),
        "old + upscaler": F.avg_pool2d(torch.cat([upscaler(small[i : i + 64]) for i in range(0, len(small), 64)]).clamp(-1, 1), 2),
        "grown": decode(grown, mean),
    }
    print(f"{len(truth)} held-out vector pictures at {truth.shape[-1]} px, drawn from the old encoder's 16x16x4 latents")
    print(f"{'drawn by':<16} {'L1':>7} {'edge L1':>8} {'PSNR':>6}")
    for name, pictures in drawn.items():
        print(f"{name:<16} {float((pictures - truth).abs().mean()):>7.4f} {crispness(pictures, truth):>8.4f} {psnr(pictures, truth):>6.2f}")
    latent, _ = posteriors(grown, test.images)
    relative = float((latent - mean).square().mean() / mean.var())
    round_trip = decode(grown, latent)
    print(f"grown encoder: squared latent error {relative:.4f} of the latents' variance; "
          f"round trip at 128 px L1 {float((round_trip - truth).abs().mean()):.4f}")
    if args.grid:
        shown = torch.linspace(0, len(truth) - 1, 12).long()
        rows = [truth[shown]] + [pictures[shown] for pictures in drawn.values()]
        make_grid([image for row in rows for image in to_pil(row)], columns=12).save(args.grid)
        print(f"grid: {args.grid} (rows: truth, {', '.join(drawn)})")


if __name__ == "__main__":
    main()
