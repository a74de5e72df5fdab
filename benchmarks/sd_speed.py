"""Stable Diffusion 1.5 on the CPU: stock diffusers fp32 against reverie with each speed lever.

The model is SD 1.5's architecture with random weights, built from the configs reverie ships
(torch seed 0; speed does not depend on what the weights are) and written once as a diffusers
folder with fp32 weights (`--folder`); `--arch sdxl` does the same with SDXL base's
architecture (sdxl_random.py) against stock StableDiffusionXLPipeline, `--arch sd15-inpainting`
with SD 1.5 inpainting's (a 9-channel UNet) against stock StableDiffusionInpaintPipeline
(`--mode inpaint`), `--arch sd15-lcm` with an LCM-distilled SD 1.5's (LCM Dreamshaper v7's UNet:
the guidance scale's embedding an input, no CFG pass; saved with LCM's scheduler; run it with
`--sampler lcm --steps 4 --cfg 8`, as its authors do). Every variant loads it
from there in its own process, so its peak resident memory (the child's VmHWM:
process_memory.py) is its own, loading included; the variants are run in turn, `--repeats` rounds, and the median is kept.

Each child makes a one-step picture first (its time is `first call s`: for reverie, which loads
a model on its first request, loading included, `load s` alone; for openvino also compiling the
input shape),
then the timed picture, warm, as a server or a person's second picture runs it, on both sides.
Columns: s/step is the median time between two denoising steps (the UNet on the CFG pair and
the sampler); total s the whole warm call (prompt encoding, all steps, the VAE decode); ratio is
stock diffusers' total over the variant's; PSNR is against stock diffusers' fp32 picture (inf:
identical). The one-time OpenVINO export is reported apart.

    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 256 --steps 4
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 512 --steps 4 --variants diffusers,openvino
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 512 --steps 20 --variants diffusers,lcm_lora,auto
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 512 --steps 20 --variants diffusers,auto --mode img2img
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --arch sd15-inpainting --mode inpaint --strength 1 \
        --size 512 --steps 20 --variants diffusers,auto
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --size 512 --steps 20 --variants diffusers,auto,int8
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --arch sd15-lcm --sampler lcm --steps 4 --cfg 8 \
        --size 512 --variants diffusers,auto
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --arch sdxl --size 1024 --steps 4 --variants diffusers,bf16,auto
    PYTHONPATH=src .venv/bin/python benchmarks/sd_speed.py --device cuda --size 512 --steps 20 \
        --variants diffusers,torch,compile --batches 1,4,8      # a GPU: fp16 on both sides

On a GPU (`--device cuda`) stock diffusers and reverie both run in fp16 (diffusers' default
attention is SDPA on both sides), the peak is torch's largest GPU allocation, and the PSNR is
against stock diffusers' fp16 picture of the same batch.

Variants: diffusers (stock StableDiffusionPipeline, fp32), auto (reverie's defaults: dtype and
runtime auto, what a user gets: with a sampler numpy_sampler.py ports, such as the default euler
here, the pipeline on OpenVINO alone, torch never imported: "no torch" in the table), int8 (the
defaults with `--quantize int8`: the bundle's UNet quantized to int8 once, reported apart, then
cached: models/int8_unet.py), torch (reverie, fp32, torch),
fp16_weights and bf16_weights (reverie, fp32 compute from weights resting in 16 bits: `--weights`),
channels_last (reverie, UNet and VAE in channels-last memory format), bf16 (reverie, bf16
weights and compute), compile (reverie, torch.compile'd UNet; compile_bf16 the same in bf16), openvino (reverie, the UNet on
OpenVINO in fp32: models/openvino_runtime.py; its export is cached under $REVERIE_CACHE),
openvino_bf16 (the same in bf16: bf16 weights and compute), lcm_lora (reverie's defaults with a
random-weight LoRA shaped as LCM-LoRA for SD 1.5 is, rank 64 on the attention, feed-forward and
ResNet layers (kohya keys, written once beside the folder), run as LCM-LoRA is: the lcm sampler,
4 steps, CFG 1, so one UNet evaluation a step: another picture, its PSNR not comparable; the
LoRA keeps `auto` on torch until the set's export is made: after a lcm_lora_openvino run into the
same $REVERIE_CACHE, auto runs that export), lcm_lora_openvino (the same with `--runtime openvino`: the UNet
with the LoRA on, exported once as a variant of the model's export), lcm_lora_torch (the same with `--runtime
torch`, for the side by side once the export is made), text_lora, text_lora_openvino and
text_lora_torch (the same three with a style LoRA as kohya's trainer writes one, rank 32 on the
UNet's attention and on every CLIP text layer, at 0.8, run with the request's own sampler and
steps: its text encoder's export is made with the UNet's by the openvino run), tiny (reverie's defaults with `--decoder
tiny`: a random-weight TAESD written once beside the folder, its own bundle on the torch-free
path) and diffusers_tiny (stock with that TAESD as its VAE, as FastSD CPU decodes); a TAESD's
picture is another picture, its PSNR not shown; step_cache2 and step_cache3 (reverie's defaults
with `--step-cache 2` or 3: the UNet's deep features kept from every second or third evaluation;
their s/step is the mean, whole and shallow steps alternating; on random weights their PSNR says
how far the latents moved, not what a person sees: benchmarks/step_cache.py measures that on
reverie-mini); tile and tile_torch (reverie's defaults with `--tile`: seamless tiles, on the
bundle's circular exports, made once, and on the torch pipeline, where every tile request ran
before; their PSNR is against each other's picture). The peer: optimum (optimum-intel's
OVDiffusionPipeline, FastSD CPU's engine: the model exported once by optimum's own exporter
beside the folder, reshaped to static shapes and compiled with OpenVINO's defaults, bf16 on a
CPU with native bf16), txt2img, run by the Python given as `--peer-python` (a virtual
environment of its own: benchmarks/requirements-optimum.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from process_memory import peak_gib, resident_gib

VARIANTS = ("diffusers", "auto", "int8", "torch", "fp16_weights", "bf16_weights", "channels_last", "bf16", "compile",
            "compile_bf16", "openvino", "openvino_bf16", "lcm_lora", "lcm_lora_openvino", "lcm_lora_torch",
            "tiny", "diffusers_tiny", "optimum", "step_cache2", "step_cache3", "text_lora", "text_lora_openvino",
            "text_lora_torch", "tile", "tile_torch")
TINY = ("tiny", "diffusers_tiny")  # decoded by a random-weight TAESD: another picture than the VAE's
TILED = ("tile", "tile_torch")  # seamless tiles: another picture than stock's, compared with each other
NOT_REVERIE = ("diffusers", "diffusers_tiny", "optimum")  # the peers' pipelines: no Studio, no reverie request
LCM = {"steps": 4, "cfg": 1.0, "sampler": "lcm"}  # how LCM-LoRA is run: few steps, no classifier-free guidance
LCM_RANK = 64  # latent-consistency/lcm-lora-sdv1-5's rank
PROMPT = "an astronaut lounging in a desert, expressive oil painting"


def sd15_folder(folder: Path, file_dtype: str = "fp32", inpainting: bool = False, lcm: bool = False) -> Path:
    """SD 1.5's architecture with random weights from torch seed 0, written once as a diffusers
    folder with `file_dtype` weights (the public SD 1.5 files come in fp32 and fp16): every
    variant loads it from disk, as it would load a user's model. `inpainting`: SD 1.5
    inpainting's, a UNet with 9 channels in; `lcm`: an LCM-distilled one's, with LCM's scheduler."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from diffusers.schedulers import LCMScheduler, PNDMScheduler

    from sd15_random import sd15_components

    c = sd15_components(in_channels=9 if inpainting else 4, guidance_embedding=256 if lcm else None)
    kind = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    scheduler = (LCMScheduler if lcm else PNDMScheduler).from_config(c.scheduler_config)
    pipe = kind(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if file_dtype == "fp16":
        pipe.to(torch.float16)
    partial = folder.with_name(folder.name + ".partial")
    pipe.save_pretrained(partial)
    partial.rename(folder)
    return folder


def is_sdxl(folder: Path) -> bool:
    """Whether the folder holds an SDXL pipeline (sdxl_random.py's) rather than SD 1.5's."""
    return "XL" in json.loads((folder / "model_index.json").read_text())["_class_name"]


def optimum_pipeline(folder: Path, args, info: dict):
    """optimum-intel's OpenVINO pipeline of `folder` (the engine FastSD CPU runs): exported once
    beside it with optimum's exporter, then read, reshaped to the call's static shapes and
    compiled with OpenVINO's own defaults (bf16 on a CPU with native bf16), as FastSD CPU does."""
    from optimum.intel import OVDiffusionPipeline

    exported = folder.with_name(folder.name + "-optimum")
    if not (exported / "model_index.json").is_file():
        partial = exported.with_name(exported.name + ".partial")
        OVDiffusionPipeline.from_pretrained(folder, export=True, compile=False).save_pretrained(partial)
        partial.rename(exported)
        info["exports"] = 1
    pipe = OVDiffusionPipeline.from_pretrained(exported, compile=False)
    pipe.reshape(batch_size=1, height=args.size, width=args.size, num_images_per_prompt=args.batch)
    pipe.compile()
    return pipe


def taesd_folder(folder: Path) -> Path:
    """TAESD's architecture (diffusers' AutoencoderTiny, madebyollin/taesd's config) with random
    weights from torch seed 0, written once beside `folder` as a diffusers folder."""
    path = folder.with_name(folder.name + "-taesd")
    if (path / "config.json").is_file():
        return path
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny().eval().save_pretrained(path)
    return path


def lcm_lora_models(folder: Path) -> Path:
    """A models folder beside `folder` holding `Lora/lcm-lora-random.safetensors`: random weights
    (small: the picture stays the base model's, near enough) on the layers LCM-LoRA for SD 1.5
    adapts, with its rank, in kohya's key layout; written once."""
    models = folder.with_name(folder.name + "-lcm-lora")
    path = models / "Lora" / "lcm-lora-random.safetensors"
    if path.is_file():
        return models
    _random_kohya(folder, path, ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                                 "ff.net.2", "conv1", "conv2", "conv_shortcut", "time_emb_proj"), LCM_RANK)
    return models


def text_lora_models(folder: Path) -> Path:
    """A models folder beside `folder` holding `Lora/text-lora-random.safetensors`: a style LoRA
    as kohya's trainer writes one by default (rank 32 on the UNet's attention projections and on
    every CLIP text layer's attention and MLP), random weights; written once."""
    models = folder.with_name(folder.name + "-text-lora")
    path = models / "Lora" / "text-lora-random.safetensors"
    if not path.is_file():
        _random_kohya(folder, path, ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"), 32,
                      text=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
    return models


def _random_kohya(folder: Path, path: Path, adapted: tuple, rank: int, text: tuple = ()) -> None:
    """Write a random-weight LoRA (small weights: the picture stays the base model's, near enough)
    in kohya's key layout on the UNet's layers named `adapted` and the text encoder's named `text`."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    generator, tensors = torch.Generator().manual_seed(0), {}
    layers = [("lora_unet_", name, module) for name, module in unet.named_modules()
              if name.startswith(("down_blocks", "mid_block", "up_blocks")) and name.endswith(adapted)]
    layers += [("lora_te_", name, module) for name, module in encoder.named_modules() if text and name.endswith(text)]
    for prefix, name, module in layers:
        key = prefix + name.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            continue
        tensors[f"{key}.lora_down.weight"] = (torch.randn(down, generator=generator) * 0.01).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(up, generator=generator) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def child(args) -> dict:
    """Run one variant once; the numbers as a dict (the picture saved to args.picture). torch is
    imported only where the variant needs it here (stock diffusers, a GPU, a UNet changed in
    place): reverie's defaults may run SD without it (methods/diffusion/compiled.py), and the
    peak is then what a user's process holds."""
    variant = args.child
    folder = Path(args.folder)
    cuda = args.device.startswith("cuda")
    if variant in NOT_REVERIE + ("channels_last", "compile", "compile_bf16") or cuda:
        import torch

        compute = torch.float16 if cuda else torch.float32  # stock diffusers as people run it on each device

    def now() -> float:  # step times mean something on a GPU only once its queue is done
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    steps_at: list[float] = []
    info: dict = {}
    image_mode = args.mode != "txt2img"
    if variant in NOT_REVERIE:
        import diffusers
        from PIL import Image

        from reverie.samplers import build_scheduler

        xl = is_sdxl(folder)
        mode = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[args.mode]
        kind = getattr(diffusers, "StableDiffusion" + ("XL" if xl else "") + mode + "Pipeline")
        safety = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
        if variant == "optimum":
            assert args.mode == "txt2img" and not cuda, "the optimum peer runs txt2img on the CPU here"
            pipe = optimum_pipeline(folder, args, info)
        else:
            pipe = kind.from_pretrained(folder, torch_dtype=compute, **safety).to(args.device)
        if variant == "diffusers_tiny":  # FastSD CPU's decode: TAESD in place of the VAE
            pipe.vae = diffusers.AutoencoderTiny.from_pretrained(taesd_folder(folder), torch_dtype=compute).to(args.device)
        # img2img: the picture, the strength, and as many steps asked as reverie asks (it runs steps * strength)
        picture = {"image": Image.open(args.init), "strength": args.strength} if image_mode else {
            "height": args.size, "width": args.size}
        if args.mode == "inpaint":
            picture |= {"mask_image": Image.open(args.mask), "height": args.size, "width": args.size}
        # the seed also seeds DPM++ SDE Karras's Brownian tree, as reverie seeds it (another sampler ignores it)
        pipe.scheduler = build_scheduler(args.sampler, dict(pipe.scheduler.config), [args.seed])
        pipe.set_progress_bar_config(disable=True)

        def on_step(pipe, step, timestep, tensors):
            steps_at.append(now())
            return tensors

        def seeded():
            """The seed's generator; for img2img past the starting noise reverie draws first (and
            leaves unused there), so both sides sample the same latents and noise. Inpainting
            from noise: reverie hands the pipeline its starting noise, the draw stock makes first."""
            generator = torch.Generator("cpu").manual_seed(args.seed)
            if image_mode and not (args.mode == "inpaint" and args.strength >= 1):
                torch.randn((1, 4, args.size // 8, args.size // 8), generator=generator)
            return generator

        def call(steps: int):
            if image_mode:
                from reverie.methods.diffusion.inputs import denoising_steps

                steps = denoising_steps(steps, args.strength)
            with torch.no_grad():
                return pipe(PROMPT, **picture, num_inference_steps=steps,
                            guidance_scale=args.cfg, num_images_per_prompt=args.batch,
                            generator=seeded(),
                            callback_on_step_end=on_step, output_type="pil").images[0]
    else:
        prompt = PROMPT
        if variant.startswith("lcm_lora"):
            os.environ["REVERIE_MODELS"] = str(lcm_lora_models(folder))
            prompt = f"{PROMPT} <lora:lcm-lora-random:1>"
            args.steps, args.cfg, args.sampler = LCM["steps"], LCM["cfg"], LCM["sampler"]
            info["steps"] = args.steps
        elif variant.startswith("text_lora"):
            os.environ["REVERIE_MODELS"] = str(text_lora_models(folder))
            prompt = f"{PROMPT} <lora:text-lora-random:0.8>"
        from reverie.studio import Studio, make_request

        defaults = variant in ("auto", "int8", "tiny", "lcm_lora", "lcm_lora_openvino", "lcm_lora_torch", "text_lora",
                               "text_lora_openvino", "text_lora_torch", "step_cache2", "step_cache3",
                               *TILED)  # what a user gets
        dtype = "bf16" if variant in ("bf16", "compile_bf16", "openvino_bf16") else ("auto" if cuda or defaults else "fp32")
        runtime = "openvino" if "openvino" in variant else ("auto" if defaults and not variant.endswith("_torch") else "torch")
        weights = {"fp16_weights": "fp16", "bf16_weights": "bf16"}.get(variant, "auto")
        studio = Studio(device=args.device)
        if variant in ("channels_last", "compile", "compile_bf16"):  # the cached model, changed in place first
            from reverie.methods.diffusion.run import diffusion_model

            dtype_now = torch.bfloat16 if dtype == "bf16" else compute
            components = diffusion_model(studio.models, str(folder), torch.device(args.device), dtype_now)
            if variant == "channels_last":
                components.unet.to(memory_format=torch.channels_last)
                components.vae.to(memory_format=torch.channels_last)
            else:
                components.unet.compile()

        def on_progress(event):
            if event.stage == "denoise":
                steps_at.append(now())
            elif event.message.startswith("quantizing"):
                info["quantized"] = True
            elif event.message.startswith("exporting"):  # the torch-free path's bundle, made once
                info["exports"] = info.get("exports", 0) + 1

        picture = {"mode": args.mode, "init_image": args.init, "strength": args.strength} if image_mode else {
            "width": args.size, "height": args.size}
        if args.mode == "inpaint":
            picture["mask_image"] = args.mask
        request = make_request(prompt=prompt, model=str(folder), **picture,
                               steps=args.steps, cfg_scale=args.cfg, sampler=args.sampler, seed=args.seed,
                               n_samples=args.batch, dtype=dtype, device=args.device, runtime=runtime, weights=weights,
                               upscale=1, quantize="int8" if variant == "int8" else "none",
                               decoder=str(taesd_folder(folder)) if variant == "tiny" else "vae",
                               step_cache=int(variant[-1]) if variant.startswith("step_cache") else None,
                               tile=variant in TILED)
        def call(steps: int):
            result = studio.run(request.model_copy(update={"steps": steps}), outdir=tempfile.mkdtemp(prefix="sd-speed-"),
                                grid=False, progress=on_progress)
            made = result.images[0]
            info["runtime"], info["dtype"] = made.metadata["settings"]["runtime"], made.metadata["settings"]["ran_dtype"]
            info.setdefault("load_s", result.timings["load_s"])  # the first call's: reading the model
            return made.image

    # A one-step call first (timed as `first_call_s`: loading the model included for reverie,
    # which loads on the first request, and compiling the input shape for openvino), then the
    # timed call, warm: both sides as a server or a second picture runs them.
    start = time.perf_counter()
    call(1)
    info["first_call_s"] = time.perf_counter() - start
    steps_at.clear()
    start = time.perf_counter()
    image = call(args.steps)
    total = time.perf_counter() - start
    if variant not in NOT_REVERIE:
        unet = studio.models.find(lambda key: key[0] == "openvino-unet")
        if unet is not None:
            info["exports"] = info.get("exports", 0) + unet.exports + (unet._sibling.exports if unet._sibling is not None else 0)
    np.save(args.picture, np.asarray(image))
    gaps = np.diff(steps_at) if len(steps_at) > 1 else np.array([total / args.steps])
    if cuda:
        info["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    info["rss_after_gib"] = resident_gib()  # what stays resident once loaded and run (no load peak)
    info["torch"] = "torch" in sys.modules
    per_step = np.mean(gaps) if variant.startswith("step_cache") else np.median(gaps)  # its steps alternate
    return info | {"variant": variant, "batch": args.batch, "total_s": total, "s_per_step": float(per_step),
                   "first_step_s": steps_at[0] - start if steps_at else None,
                   "peak_rss_gib": peak_gib()}


def pattern_picture(size: int, path: Path) -> Path:
    """A picture for img2img to start from: smooth colour bands and a disc, the same every run."""
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).astype(float)
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * x) * (1 - disc) + 0.5 * disc, 0.5 + 0.4 * np.cos(5 * y), 0.6 - 0.3 * x * y], -1)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def run_child(variant: str, args, picture: Path) -> dict:
    python = args.peer_python if variant == "optimum" else sys.executable
    assert python, "the optimum variant runs in a Python with optimum-intel: give --peer-python"
    command = [python, __file__, "--child", variant, "--picture", str(picture), "--folder", args.folder,
               "--size", str(args.size), "--steps", str(args.steps), "--cfg", str(args.cfg),
               "--sampler", args.sampler, "--seed", str(args.seed), "--device", args.device, "--batch", str(args.batch),
               "--mode", args.mode, "--strength", str(args.strength), "--init", args.init or "",
               "--mask", args.mask or ""]
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
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (stock diffusers and reverie in fp16 there)")
    parser.add_argument("--batches", default="1", help="pictures per call, a run of each: e.g. 1,4,8 on a GPU")
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="diffusers,auto,torch,bf16,openvino,openvino_bf16")
    parser.add_argument("--folder", help="where the random-weight SD 1.5 folder is written once and read by every "
                        "variant (default: reverie-sd15-random-seed0-<file dtype> in the temp folder)")
    parser.add_argument("--file-dtype", choices=("fp32", "fp16"), default="fp32", help="the folder's weights' dtype")
    parser.add_argument("--arch", choices=("sd15", "sdxl", "sd15-inpainting", "sd15-lcm"), default="sd15",
                        help="sdxl: SDXL base's architecture (sdxl_random.py; fp32 files), against stock "
                             "StableDiffusionXLPipeline; sd15-inpainting: SD 1.5 inpainting's (9 channels in), "
                             "for --mode inpaint; sd15-lcm: an LCM-distilled SD 1.5's, for --sampler lcm")
    parser.add_argument("--peer-python", help="a Python with optimum-intel (benchmarks/requirements-optimum.txt) "
                        "for the optimum variant")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--mode", choices=("txt2img", "img2img", "inpaint"), default="txt2img",
                        help="img2img: from a picture (a pattern drawn once at --size), --steps asked, "
                             "steps x strength run, as both pipelines do; inpaint: its right half repainted "
                             "(the PSNR then over the repainted half, 8 px in from the seam: reverie puts the "
                             "kept pixels back, stock does not)")
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--init", help=argparse.SUPPRESS)  # a child's: the picture img2img starts from
    parser.add_argument("--mask", help=argparse.SUPPRESS)  # a child's: inpaint's mask
    parser.add_argument("--picture")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    args.folder = args.folder or str(Path(tempfile.gettempdir()) / f"reverie-{args.arch}-random-seed0-{args.file_dtype}")
    if args.arch == "sdxl":
        from sdxl_random import sdxl_folder

        assert args.file_dtype == "fp32", "the SDXL folder is written with fp32 files"
        sdxl_folder(Path(args.folder))
    else:
        sd15_folder(Path(args.folder), args.file_dtype, inpainting=args.arch == "sd15-inpainting",
                    lcm=args.arch == "sd15-lcm")
    variants = args.variants.split(",")
    if any(v.startswith("lcm_lora") for v in variants):
        lcm_lora_models(Path(args.folder))
    if any(v.startswith("text_lora") for v in variants):
        text_lora_models(Path(args.folder))
    assert "diffusers" in variants, "the stock pipeline is the reference: keep `diffusers` in --variants"
    folder = Path(tempfile.mkdtemp(prefix="sd-speed-"))
    if args.mode != "txt2img":
        args.init = str(pattern_picture(args.size, folder / "init.png"))
    if args.mode == "inpaint":
        from PIL import Image

        mask = np.zeros((args.size, args.size), np.uint8)
        mask[:, args.size // 2:] = 255
        args.mask = str(folder / "mask.png")
        Image.fromarray(mask).save(args.mask)
    if any(v in TINY for v in variants):
        taesd_folder(Path(args.folder))
    for variant in (v for v in variants if "openvino" in v or v in ("auto", "int8", "tiny", "optimum", "step_cache2",
                                                                    "tile")):
        one_step = argparse.Namespace(**(vars(args) | {"steps": 1}))
        first = run_child(variant, one_step, folder / "export.npy")  # the one-time export, when not cached yet
        if first.get("exports") or first.get("quantized"):
            print(f"{variant}: {'quantized the UNet' if first.get('quantized') else 'exported the model'} "
                  f"({first['process_s']:.0f} s for that process, peak {first['peak_rss_gib']:.2f} GiB); "
                  "cached for the runs below", flush=True)
    tables = []
    for batch in (int(b) for b in args.batches.split(",")):
        args.batch = batch
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for round_ in range(args.repeats):
            for variant in variants:
                result = run_child(variant, args, folder / f"{variant}-{batch}-{round_}.npy")
                print(json.dumps(result), flush=True)
                runs[variant].append(result)
        tables.append((batch, runs))
    import torch

    gpu = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name(0) if gpu else f"CPU, {torch.get_num_threads()} threads"
    mode = f"{args.mode} at strength {args.strength:g} ({args.steps} steps asked), " if args.mode != "txt2img" else ""
    arch = {"sdxl": "SDXL base", "sd15": "SD 1.5", "sd15-inpainting": "SD 1.5 inpainting",
            "sd15-lcm": "LCM-distilled SD 1.5"}[args.arch]
    print(f"\n{arch} architecture (random weights, {args.file_dtype} files), {mode}{args.size}x{args.size}, {args.steps} steps, {args.sampler}, "
          f"CFG {args.cfg}, {machine}, torch {torch.__version__}, {args.repeats} round(s), medians")
    print(f"| variant | batch | size | steps | s/step | total s | ratio vs stock | peak {'GPU' if gpu else 'RSS'} GiB "
          f"| RSS after GiB | PSNR vs stock {'fp16' if gpu else 'fp32'} | first call s | load s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, runs in tables:
        reference = np.load(folder / f"diffusers-{batch}-0.npy")
        stock = float(np.median([r["total_s"] for r in runs["diffusers"]]))
        for variant in variants:
            rows = runs[variant]
            total = float(np.median([r["total_s"] for r in rows]))
            per_step = float(np.median([r["s_per_step"] for r in rows]))
            peak = max(r["peak_gpu_gib" if gpu else "peak_rss_gib"] for r in rows)
            made = np.load(folder / f"{variant}-{batch}-0.npy")
            region = np.s_[:, args.size // 2 + 8:] if args.mode == "inpaint" else np.s_[:]
            quality = psnr(reference[region], made[region])
            steps = rows[0].get("steps", args.steps)
            after = max(r["rss_after_gib"] for r in rows)
            first = float(np.median([r["first_call_s"] for r in rows]))
            load = f"{np.median([r['load_s'] for r in rows]):.1f}" if "load_s" in rows[0] else "-"
            label = f"{variant} ({rows[0]['runtime']}, {rows[0]['dtype']})" if "runtime" in rows[0] else variant
            label += "" if rows[0].get("torch", True) else ", no torch"
            if variant in TILED:  # a tile against the other path's tile
                other = folder / f"{TILED[variant == 'tile']}-{batch}-0.npy"
                quality = psnr(np.load(other)[region], made[region]) if other.exists() else float("nan")
            shown = "-" if steps != args.steps or variant in TINY else f"{quality:.1f}"  # another picture
            print(f"| {label} | {batch} | {args.size} | {steps} | {per_step:.2f} | {total:.1f} | "
                  f"{stock / total:.2f}x | {peak:.2f} | {after:.2f} | {shown} | {first:.1f} | {load} |")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
