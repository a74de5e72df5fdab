"""Stable Diffusion 1.5 on the CPU: stock diffusers fp32 against reverie with each speed lever.

The model is SD 1.5's architecture with random weights, built from the configs reverie ships
(torch seed 0; speed does not depend on what the weights are) and written once as a diffusers
folder with fp32 weights (`--folder`). Every variant loads it from there in its own process, so
its peak resident memory (the child's ru_maxrss) is its own, loading included; the variants are
run in turn, `--repeats` rounds, and the median is kept.

Columns: s/step is the median time between two denoising steps (the UNet on the CFG pair and
the sampler; the first step, which carries compiling, is left out); total s the whole call
(prompt encoding, all steps, the VAE decode; for openvino also compiling its input shape, not
the one-time export, reported apart); ratio is stock diffusers' total over the variant's;
PSNR is against stock diffusers' fp32 picture (inf: identical).

    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 256 --steps 4
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 512 --steps 4 --variants diffusers,openvino

Variants: diffusers (stock StableDiffusionPipeline, fp32), torch (reverie, fp32, torch),
fp16_weights and bf16_weights (reverie, fp32 compute from weights resting in 16 bits: `--weights`),
channels_last (reverie, UNet and VAE in channels-last memory format), bf16 (reverie, bf16
weights and compute), compile (reverie, torch.compile'd UNet), openvino (reverie, the UNet on
OpenVINO: models/openvino_runtime.py; its export is cached under $REVERIE_CACHE).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

VARIANTS = ("diffusers", "torch", "fp16_weights", "bf16_weights", "channels_last", "bf16", "compile", "openvino")
PROMPT = "an astronaut lounging in a desert, expressive oil painting"


def sd15_folder(folder: Path) -> Path:
    """SD 1.5's architecture with random weights from torch seed 0, written once as a diffusers
    folder with fp32 weights (as the public fp32 files are): every variant loads it from disk,
    so each loads as it would load a user's model (reverie's fp16 weights straight from it)."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from reverie.models.clip_tokenizer import clip_tokenizer

    root = resources.files("reverie.models") / "configs" / "sd1"
    read = lambda part: json.loads((root / part / "config.json").read_text())  # noqa: E731
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read("unet")).eval()
    vae = AutoencoderKL.from_config(read("vae")).eval()
    text_config = {k: v for k, v in read("text_encoder").items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    schedule = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler.from_config(schedule), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial)
    partial.rename(folder)
    return folder


def child(args) -> dict:
    """Run one variant once; the numbers as a dict (the picture saved to args.picture)."""
    import torch

    variant = args.child
    folder = Path(args.folder)
    steps_at: list[float] = []
    info: dict = {}
    if variant == "diffusers":
        from diffusers import StableDiffusionPipeline

        from reverie.samplers import build_scheduler

        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = build_scheduler(args.sampler, dict(pipe.scheduler.config))
        pipe.set_progress_bar_config(disable=True)

        def on_step(pipe, step, timestep, tensors):
            steps_at.append(time.perf_counter())
            return tensors

        start = time.perf_counter()
        with torch.no_grad():
            image = pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps,
                         guidance_scale=args.cfg, generator=torch.Generator("cpu").manual_seed(args.seed),
                         callback_on_step_end=on_step, output_type="pil").images[0]
        total = time.perf_counter() - start
    else:
        from reverie.studio import Studio, make_request

        from reverie.methods.diffusion.run import diffusion_model

        dtype, runtime = ("bf16" if variant == "bf16" else "fp32"), ("openvino" if variant == "openvino" else "torch")
        weights = {"fp16_weights": "fp16", "bf16_weights": "bf16"}.get(variant, "auto")
        studio = Studio(device="cpu")
        if variant in ("channels_last", "compile"):  # the cached model, changed in place before the request
            components = diffusion_model(studio.models, str(folder), torch.device("cpu"), torch.float32)
            if variant == "channels_last":
                components.unet.to(memory_format=torch.channels_last)
                components.vae.to(memory_format=torch.channels_last)
            else:
                components.unet.compile()

        def on_progress(event):
            if event.stage == "denoise":
                steps_at.append(time.perf_counter())

        request = make_request(prompt=PROMPT, model=str(folder), width=args.size, height=args.size,
                               steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed,
                               n_samples=1, dtype=dtype, device="cpu", runtime=runtime, weights=weights, upscale=1)
        start = time.perf_counter()
        result = studio.run(request, outdir=tempfile.mkdtemp(prefix="sd-speed-"), grid=False, progress=on_progress)
        total = time.perf_counter() - start
        image = result.images[0].image
        info["runtime"] = result.images[0].metadata["settings"]["runtime"]
        unet = studio.models.find(lambda key: key[0] == "openvino-unet")
        if unet is not None:
            info["exports"] = unet.exports
    np.save(args.picture, np.asarray(image))
    gaps = np.diff(steps_at) if len(steps_at) > 1 else np.array([total / args.steps])
    return info | {"variant": variant, "total_s": total, "s_per_step": float(np.median(gaps)),
                   "first_step_s": steps_at[0] - start if steps_at else None,
                   "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def run_child(variant: str, args, picture: Path) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--picture", str(picture), "--folder", args.folder,
               "--size", str(args.size), "--steps", str(args.steps), "--cfg", str(args.cfg),
               "--sampler", args.sampler, "--seed", str(args.seed)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="diffusers,torch,channels_last,bf16,openvino")
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "reverie-sd15-random-seed0"),
                        help="where the random-weight SD 1.5 folder is written once and read by every variant")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--picture")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    sd15_folder(Path(args.folder))
    variants = args.variants.split(",")
    assert "diffusers" in variants, "the stock pipeline is the reference: keep `diffusers` in --variants"
    folder = Path(tempfile.mkdtemp(prefix="sd-speed-"))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    if "openvino" in variants:  # the one-time export, when the cache does not have it yet
        first = run_child("openvino", args, folder / "export.npy")
        if first.get("exports"):
            print(f"openvino: exported the UNet ({first['process_s']:.0f} s for that process, "
                  f"peak {first['peak_rss_gib']:.2f} GiB); cached for the runs below", flush=True)
    for round_ in range(args.repeats):
        for variant in variants:
            result = run_child(variant, args, folder / f"{variant}-{round_}.npy")
            print(json.dumps(result), flush=True)
            runs[variant].append(result)
    reference = np.load(folder / "diffusers-0.npy")
    stock = float(np.median([r["total_s"] for r in runs["diffusers"]]))
    import torch

    print(f"\nSD 1.5 architecture (random weights), {args.size}x{args.size}, {args.steps} steps, {args.sampler}, "
          f"CFG {args.cfg}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} round(s), medians")
    print("| variant | size | steps | s/step | total s | ratio vs stock | peak RSS GiB | PSNR vs stock fp32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        rows = runs[variant]
        total = float(np.median([r["total_s"] for r in rows]))
        per_step = float(np.median([r["s_per_step"] for r in rows]))
        peak = max(r["peak_rss_gib"] for r in rows)
        quality = psnr(reference, np.load(folder / f"{variant}-0.npy"))
        print(f"| {variant} | {args.size} | {args.steps} | {per_step:.2f} | {total:.1f} | {stock / total:.2f}x | "
              f"{peak:.2f} | {quality:.1f} |")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
