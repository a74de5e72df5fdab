"""Speed options that change pixels: step caching and the tiny decoder (issue 22).

1. Step caching (`--step-cache N`, models/step_cache.py) on reverie-mini and on a random-weight
   SD1.5-architecture model (reverie's shipped configs/sd1) at 256 px: seconds per request
   (text encoding, sampling and decoding; the best of `--repeats`, after a warm-up), the speed-up
   over no caching and the PSNR of each picture against the one made without it (min / mean),
   on the runtime `--runtime` picks (auto: mini on OpenVINO without torch; the in-memory SD
   model on torch).
   On random weights the PSNR says how far the latents move, not how a picture looks; on mini it
   is the quality cost the tests hold a floor on.
2. Decoding a 512 px picture (64x64 latents) with a random-weight SD VAE and with TAESD's
   architecture (diffusers' AutoencoderTiny): the best of `--repeats` seconds each.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/step_cache.py
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import numpy as np
import torch
from sd15_random import sd15_components

from reverie.models.batch_invariance import steady_rows


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def timed(studio, request, repeats: int):
    """(best seconds, pictures as arrays, the runtime that ran) of `repeats` runs."""
    best, pictures = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = studio.generate(request)
        best = min(best, time.perf_counter() - start)
        pictures = [np.asarray(image.image) for image in result.images]
    return best, pictures, result.images[0].metadata["settings"]["runtime"]


def step_cache_rows(studio, model: str, args) -> list[str]:
    from reverie.studio import make_request

    base = dict(model=model, prompt=args.prompt, width=args.size, height=args.size, steps=args.steps,
                sampler=args.sampler, cfg_scale=args.cfg, seed=args.seed, n_samples=args.n, upscale=1, device="cpu",
                dtype=args.dtype, runtime=args.runtime)
    rows, reference, off_seconds = [], None, None
    studio.generate(make_request(**base | {"steps": 2}))  # warm-up: load, first-call costs
    for interval in (None, *args.intervals):
        seconds, pictures, runtime = timed(studio, make_request(**base, step_cache=interval), args.repeats)
        if interval is None:
            reference, off_seconds = pictures, seconds
        scores = [psnr(a, b) for a, b in zip(reference, pictures)]
        quality = "-" if interval is None else f"{min(scores):.1f} / {np.mean(scores):.1f}"
        rows.append(f"| {model} | {runtime} | {interval or 'off'} | {seconds:.2f} | {off_seconds / seconds:.2f}x "
                    f"| {quality} |")
        print(rows[-1], flush=True)
    return rows


def decode_rows(args) -> list[str]:
    from diffusers import AutoencoderKL, AutoencoderTiny

    from reverie.models.tiny_decoder import tiny_decode

    root = resources.files("reverie.models") / "configs" / "sd1"
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(json.loads((root / "vae" / "config.json").read_text())).eval()
    tiny = AutoencoderTiny().eval()
    latents = torch.randn(1, 4, args.decode_size // 8, args.decode_size // 8)

    def best(decode) -> float:
        times = []
        with torch.no_grad():
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                decode()
                times.append(time.perf_counter() - start)
        return min(times[1:])

    vae_s = best(lambda: vae.decode(latents / vae.config.scaling_factor))
    tiny_s = best(lambda: tiny_decode(tiny, latents))
    return [f"| SD VAE (AutoencoderKL) | {vae_s:.2f} | 1.00x |",
            f"| TAESD (AutoencoderTiny) | {tiny_s:.3f} | {vae_s / tiny_s:.0f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mini", "sd15-random"])
    parser.add_argument("--intervals", nargs="+", type=int, default=[2, 3, 5])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m_karras")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--n", type=int, default=1, help="pictures per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="red apple, Noto emoji")
    parser.add_argument("--runtime", default="auto", help="auto (mini: OpenVINO without torch), openvino or torch")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--decode-size", type=int, default=512)
    parser.add_argument("--skip-decode", action="store_true", help="leave out the decoder table")
    args = parser.parse_args()

    from reverie.studio import Studio

    studio = Studio(device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, {args.steps} steps, "
          f"{args.sampler}, CFG {args.cfg:g}, {args.n} pictures a request, best of {args.repeats}")
    print(f"\n{args.dtype}, runtime {args.runtime}\n\n| model | ran on | step cache | s | speed-up | PSNR dB min / mean |"
          "\n|---|---|---|---:|---:|---|")
    for model in args.models:
        if model == "sd15-random":
            components = sd15_components()
            steady_rows(components.unet)  # as the model cache's loader leaves every UNet
            studio.models.put(("diffusion", model, "cpu", str(torch.float32)), components)
        step_cache_rows(studio, model, args)
    if args.skip_decode:
        return
    print(f"\nDecoding one {args.decode_size} px picture\n\n| decoder | s | speed-up |\n|---|---:|---:|")
    for row in decode_rows(args):
        print(row)


if __name__ == "__main__":
    main()
