"""Dreaming speed: iterations per second at 256x256 for each generator and guide.

VQGAN (ImageNet f16 1024 layout), BigGAN-deep-256 and OpenAI ViT-B/32 are built with random
weights in their real architectures (tests/checkpoint_layouts.py); speed does not depend on
the weights. The built-in autoencoder and CLIP are the shipped ones.

    .venv/bin/python benchmarks/dream_speed.py --iterations 3 --cutn 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-vit", action="store_true", help="leave out the ViT-B/32 rows (slow on a CPU)")
    args = parser.parse_args()

    import open_clip
    import torch

    from checkpoint_layouts import IMAGENET_F16, openai_clip_model, write_biggan, write_openai_clip, write_taming_vqgan
    from reverie.methods.dreaming import start_dream

    work = Path(tempfile.mkdtemp(prefix="dream-bench-"))
    vqgan = write_taming_vqgan(work / "vqgan", IMAGENET_F16, 1024, 256)
    biggan = write_biggan(work / "biggan", output_dim=256, channel_width=128)
    vit = None if args.skip_vit else write_openai_clip(work / "ViT-B-32.pt", openai_clip_model(open_clip.get_model_config("ViT-B-32")))
    # (name, generator, prior): the built-in autoencoder dreams with reverie-mini's prior by default.
    generators = [("built-in autoencoder", "mini", "none"), ("built-in autoencoder", "mini", "mini"),
                  ("pixels (Fourier)", "pixels", "none"), ("VQGAN f16 1024", f"vqgan:{vqgan}", "none"),
                  ("BigGAN-deep-256", f"biggan:{biggan}", "none")]
    guides = [("built-in CLIP", ["mini"])] + ([("OpenAI ViT-B/32", [str(vit)])] if vit else [])

    rows = []
    for guide_name, guide in guides:
        for generator_name, generator, prior in generators:
            dream = start_dream(dict(prompt="a red apple", generator=generator, guides=guide, prior=prior, width=args.size,
                                     height=args.size, cutouts=args.cutn, seed=0, save_every=10**6, device=args.device))
            dream.iterate()  # warm-up
            if dream.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.iterations):
                dream.iterate()
            if dream.device.type == "cuda":
                torch.cuda.synchronize()
            per_iteration = (time.perf_counter() - started) / args.iterations
            rows.append((generator_name, guide_name, prior, per_iteration))
            print(f"  {generator_name} + {guide_name} + prior {prior}: {1 / per_iteration:.2f} it/s", file=sys.stderr, flush=True)

    print(f"\nDreaming at {args.size}x{args.size}, {args.cutn} cutouts, device {args.device}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| generator | guide | prior | s/iteration | iterations/s |")
    print("|---|---|---|---:|---:|")
    for generator_name, guide_name, prior, seconds in rows:
        print(f"| {generator_name} | {guide_name} | {prior} | {seconds:.2f} | {1 / seconds:.2f} |")


if __name__ == "__main__":
    main()
