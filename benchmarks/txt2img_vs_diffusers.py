"""Time reverie's txt2img against a stock diffusers StableDiffusionPipeline.

Both run the same random-weight Stable Diffusion 1.5-architecture model (built from the
configs reverie ships), the same prompt, steps, sampler and seed. Prints a table, plus the
largest pixel difference between the two pictures (they should match: same noise, same
encoding of an unweighted prompt).

    .venv/bin/python benchmarks/txt2img_vs_diffusers.py --size 512 --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from importlib import resources

import numpy as np
import torch


def sd15_components(dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from reverie.models.clip_tokenizer import clip_tokenizer
    from reverie.models.components import ModelComponents

    root = resources.files("reverie.models") / "configs" / "sd1"
    read = lambda part: json.loads((root / part / "config.json").read_text())  # noqa: E731
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read("unet")).eval()
    vae = AutoencoderKL.from_config(read("vae")).eval()
    text_config = {k: v for k, v in read("text_encoder").items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    if dtype != torch.float32:
        for module in (unet, vae, text_encoder):
            module.to(dtype)
    schedule = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    return ModelComponents("sd15-random", unet, vae, text_encoder, clip_tokenizer(), schedule, family="sd1")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_reverie(components, args, dtype_name):
    from reverie.studio import make_request
    from reverie.studio import Studio

    studio = Studio(device="cpu")
    key = ("sd15-random", "cpu", str(components.unet.dtype))
    studio._models[key] = components  # the benchmark supplies its own in-memory model
    request = make_request(prompt=args.prompt, model="sd15-random", width=args.size, height=args.size,
                           steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed,
                           n_samples=1, dtype=dtype_name, device="cpu")
    start = time.perf_counter()
    result = studio.generate(request)
    return time.perf_counter() - start, np.asarray(result.images[0].image)


def run_diffusers(components, args):
    from diffusers import StableDiffusionPipeline

    from reverie.samplers import build_scheduler

    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=build_scheduler(args.sampler, components.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    start = time.perf_counter()
    image = pipe(args.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                 guidance_scale=args.cfg, generator=generator, output_type="pil").images[0]
    return time.perf_counter() - start, np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--prompt", default="an astronaut lounging in a desert, expressive oil painting")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    start = time.perf_counter()
    components = sd15_components(dtype)
    build_s = time.perf_counter() - start
    rows = []
    for name, fn in (("diffusers StableDiffusionPipeline", lambda: run_diffusers(components, args)),
                     ("reverie Studio.generate", lambda: run_reverie(components, args, args.dtype))):
        times, image = [], None
        for _ in range(args.repeats):
            seconds, image = fn()
            times.append(seconds)
        rows.append((name, min(times), float(np.median(times)), image))
    diff = int(np.abs(rows[0][3].astype(int) - rows[1][3].astype(int)).max())

    print(f"SD1.5 architecture, random weights ({build_s:.1f} s to build), {args.size}x{args.size}, "
          f"{args.steps} steps, {args.sampler}, CFG {args.cfg}, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'implementation':<36} {'best s':>8} {'median s':>9} {'s/step':>7}")
    for name, best, median, _ in rows:
        print(f"{name:<36} {best:8.2f} {median:9.2f} {median / args.steps:7.2f}")
    print(f"reverie / diffusers (median): {rows[1][2] / rows[0][2]:.3f}x   largest pixel difference: {diff}/255")
    print(f"peak resident memory: {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
