"""The `reverie` command: a thin front door that builds requests and shows progress."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from .collector import at_exit, own_process
from .errors import ReverieError
from .terminal import progress_bar

app = typer.Typer(add_completion=False, no_args_is_help=True, help="reverie: an open-source AI art studio.")
err = Console(stderr=True, soft_wrap=True, emoji=False)
out = Console(soft_wrap=True, emoji=False)

# Options every generating command shares; the original txt2img.py spellings are aliases.
Model = Annotated[Optional[str], typer.Option("--model", "-m", "--ckpt", help="Built-in name, diffusers folder, .safetensors/.ckpt file, or hub id.")]
Negative = Annotated[str, typer.Option("--negative", "--negative-prompt", help="What the picture should not show.")]
Samples = Annotated[int, typer.Option("--n-samples", "-n", "--n_samples", help="Pictures per batch.")]
Iters = Annotated[int, typer.Option("--n-iter", "--n_iter", help="Batches to make.")]
Width = Annotated[Optional[int], typer.Option("--width", "-W", "--W", help="Width in pixels (multiple of 8).")]
Height = Annotated[Optional[int], typer.Option("--height", "-H", "--H", help="Height in pixels (multiple of 8).")]
Steps = Annotated[Optional[int], typer.Option("--steps", "--ddim_steps", "--ddim-steps", help="Denoising steps (the model's default when left out: 20 for reverie-mini, else 25).")]
Cfg = Annotated[Optional[float], typer.Option("--cfg-scale", "--scale", "--cfg", help="Classifier-free guidance scale (the model's default when left out: 4 for reverie-mini, else 7.5).")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", "-s", help="Sampler name, see `reverie samplers` (the model's default when left out: dpmpp_2m for reverie-mini, else dpmpp_2m_karras).")]
Plms = Annotated[bool, typer.Option("--plms", help="Use the PLMS sampler (alias of --sampler plms).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="First seed; picture i gets seed+i. Random when left out.")]
Outdir = Annotated[Optional[Path], typer.Option("--outdir", "-o", help="Folder for the pictures.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, fp32, bf16 or fp16.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="What runs the UNet: auto (OpenVINO on the CPU when installed, for SD and reverie-mini; else torch), torch or openvino.")]
QuantizeOpt = Annotated[str, typer.Option("--quantize", help="int8: the UNet's convolutions and most linear layers in int8 on OpenVINO (quantized once per model, minutes for SD; faster, pixels change more than bf16's; docs/speed.md). none: as --dtype says.")]
WeightsOpt = Annotated[str, typer.Option("--weights", help="The precision the model's weights rest in: auto (as computed) or fp16/bf16 (half an fp32 model's memory, each layer computed in --dtype; pixels change a little; docs/speed.md).")]
Slicing = Annotated[bool, typer.Option("--attention-slicing", help="Compute attention in slices (less memory, slower).")]
Tiling = Annotated[Optional[bool], typer.Option("--vae-tiling/--no-vae-tiling", help="Decode in tiles (large sizes); automatic when left out.")]
Strength = Annotated[Optional[float], typer.Option("--strength", help="How much to change the image: 0 keeps it, 1 replaces it.")]
Upscale = Annotated[Optional[int], typer.Option("--upscale", help="Enlarge the results 1, 2 or 4 times with the built-in upscaler (the model's default when left out).")]
Rerank = Annotated[int, typer.Option("--rerank", "--best-of", help="Make this many candidates for each picture kept and keep the ones the CLIP scores best against the prompt.")]
ScoreOpt = Annotated[bool, typer.Option("--score", help="Score every picture against the prompt with the CLIP (written into the PNG).")]
ScorerOpt = Annotated[str, typer.Option("--scorer", help="The CLIP that scores: mini (built in; emoji and icons), a `reverie train clip` export folder, or a CLIP file, as `reverie dream --clip`.")]
MaskBlur = Annotated[int, typer.Option("--mask-blur", help="Pixels over which the repainted area fades into the kept one.")]
StyleOpt = Annotated[Optional[list[str]], typer.Option("--style", help="A style preset (see `reverie styles`); repeat to combine them, applied in order.")]
Stylize = Annotated[Optional[int], typer.Option("--stylize", min=0, max=1000, help="How strongly the style presets pull, 0..1000 (100: as written; 0 drops their words). Without a preset: higher lowers the CFG scale toward the model's own taste.")]
Combinatorial = Annotated[bool, typer.Option("--combinatorial", help="One picture per combination of the prompt's {a|b} alternatives and wildcards (instead of a random variant per seed); --n-iter repeats them, --n-samples is the batch size.")]
MaxCombinations = Annotated[int, typer.Option("--max-combinations", min=1, max=256, help="Combinatorial mode: make at most this many combinations (the first ones).")]
Expand = Annotated[bool, typer.Option("--expand", help="Enrich each picture's prompt with words drawn from its seed (offline prompt expansion, as Fooocus does); the same seed, the same words.")]
RefinerOpt = Annotated[Optional[str], typer.Option("--refiner", help="SDXL: a refiner model (name or path) that does the last part of the steps.")]
StepCacheOpt = Annotated[Optional[int], typer.Option("--step-cache", min=1, max=10, help="Step caching: the UNet's deep features computed every N evaluations and reused in between (2 or 3: faster, pixels change a little; docs/speed.md).")]
DecoderOpt = Annotated[str, typer.Option("--decoder", help="What makes the pixels: vae (the model's own) or tiny (TAESD from the models folder's taesd/ or taesdxl/: much faster, a little softer), or a path to one.")]
RefinerSwitch = Annotated[float, typer.Option("--refiner-switch", min=0.01, max=0.99, help="SDXL with --refiner: the fraction of the steps the base model does (A1111's 'switch at').")]
StrictCombinations = Annotated[bool, typer.Option("--strict-combinations", help="Combinatorial mode: refuse a prompt with more combinations than --max-combinations instead of making the first ones.")]


def _common(**kw) -> dict:
    """Request fields from the shared options."""
    fields = dict(
        model=kw["model"], negative_prompt=kw["negative"], n_samples=kw["n_samples"], n_iter=kw["n_iter"],
        width=kw["width"], height=kw["height"], steps=kw["steps"], cfg_scale=kw["cfg_scale"],
        sampler="plms" if kw.get("plms") else kw["sampler"], seed=kw["seed"], dtype=kw["dtype"],
        device=kw["device"], runtime=kw.get("runtime", "auto"), weights=kw.get("weights", "auto"), attention_slicing=kw["attention_slicing"], vae_tiling=kw["vae_tiling"],
        upscale=kw.get("upscale"), rerank=kw.get("rerank", 1), score=kw.get("score", False), scorer=kw.get("scorer", "mini"),
        styles=list(kw.get("style") or []), stylize=kw.get("stylize"), combinatorial=kw.get("combinatorial", False),
        max_combinations=kw.get("max_combinations", 32), strict_combinations=kw.get("strict_combinations", False),
        expand=kw.get("expand", False),
    )
    if kw.get("step_cache"):
        fields["step_cache"] = kw["step_cache"]
    if kw.get("quantize", "none") != "none":
        fields["quantize"] = kw["quantize"]
    if kw.get("decoder", "vae") != "vae":
        fields["decoder"] = kw["decoder"]
    if kw.get("refiner"):
        fields |= {"refiner": kw["refiner"], "refiner_switch": kw.get("refiner_switch", 0.8)}
    return fields


def _run(fields, outdir: Path) -> None:
    """Build the request, run it with a progress bar, report where the pictures went."""
    from .studio import Studio, make_request

    request = make_request(fields)
    with progress_bar(err) as bar:
        images = bar.add_task("pictures", total=request.picture_count())
        steps = bar.add_task("loading model", total=None)

        def on_progress(event):
            if event.stage == "denoise":
                bar.update(steps, description=f"batch {event.batch + 1}/{event.batches} steps", completed=event.step, total=event.total)
            elif event.stage == "rerank":
                bar.update(steps, description=event.message)
            elif event.stage == "image":
                bar.update(images, completed=event.step)
            elif event.stage in ("load", "encode", "decode", "upscale", "walk"):
                bar.update(steps, description=event.stage + "…" if not event.message else event.message)

        result = Studio().run(request, outdir=outdir, progress=on_progress)
    for image in result.images:
        score = f"  score {image.score:.3f}" if image.score is not None else ""
        out.print(f"{image.path}  seed {image.seed}{score}")
    if result.grid_path:
        out.print(f"grid: {result.grid_path}")
    if getattr(result, "video", None):
        out.print(f"video: {result.video}")
    if result.interrupted:
        err.print(f"[yellow]stopped: kept the {len(result.images)} finished picture(s)[/yellow]")
        raise typer.Exit(130)


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to make.")] = None,
    prompt_opt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="The prompt (instead of the argument).")] = None,
    from_image: Annotated[Optional[Path], typer.Option("--from", help="Re-make the picture whose PNG carries these settings.")] = None,
    model: Model = None, negative: Negative = "", n_samples: Samples = 4, n_iter: Iters = 1, width: Width = None,
    height: Height = None, steps: Steps = None, cfg_scale: Cfg = None, sampler: SamplerOpt = None,
    plms: Plms = False, seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto", runtime: RuntimeOpt = "auto", weights: WeightsOpt = "auto", quantize: QuantizeOpt = "none",
    attention_slicing: Slicing = False, vae_tiling: Tiling = None, upscale: Upscale = None,
    step_cache: StepCacheOpt = None, decoder: DecoderOpt = "vae",
    rerank: Rerank = 1, score: ScoreOpt = False, scorer: ScorerOpt = "mini",
    style: StyleOpt = None, stylize: Stylize = None, combinatorial: Combinatorial = False,
    max_combinations: MaxCombinations = 32, strict_combinations: StrictCombinations = False, expand: Expand = False,
    refiner: RefinerOpt = None, refiner_switch: RefinerSwitch = 0.8,
    tile: Annotated[bool, typer.Option("--tile", help="Seamless tiles: the picture wraps around (also `--tile` typed after the prompt).")] = False,
    chaos: Annotated[Optional[int], typer.Option("--chaos", min=0, max=100, help="How different the pictures of a batch are, 0 (variations on one picture) to 100 (each its own; the default).")] = None,
    aspect: Annotated[Optional[str], typer.Option("--ar", "--aspect", help="Aspect ratio W:H, e.g. 16:9: a size of about the model's native area (width and height, when given, win).")] = None,
    truncation: Annotated[Optional[float], typer.Option("--truncation", help="GAN models: pull toward the mean picture, 0 (the mean) to 1 (full variety; default).")] = None,
    gan_class: Annotated[Optional[str], typer.Option("--class", help="GAN models: the class to draw (e.g. noto, twemoji, fluent, tabler); the prompt may name it too. Default: chosen by each picture's seed.")] = None,
    walk: Annotated[int, typer.Option("--walk", help="GAN models: also write a video walking through the pictures' latents, this many frames from one to the next.", min=0, max=240)] = 0,
):
    """Text to image; with a GAN model (--model gan:RUN) pictures from the GAN, no prompt needed."""
    if from_image is not None:
        from .studio import request_from_picture

        request = request_from_picture(from_image, model=model, device=None if device == "auto" else device,
                                       runtime=None if runtime == "auto" else runtime)
        _run(request, outdir or Path(f"outputs/{request.mode}"))
        return
    text = prompt if prompt is not None else prompt_opt
    from .studio import mode_for_model

    if mode_for_model(model) == "gan":
        fields = _gan_fields(locals(), text)
        _run(fields, outdir or Path("outputs/gan"))
        return
    if text is None:
        raise typer.BadParameter("give a prompt, or --from IMAGE to re-make a picture", param_hint="PROMPT")
    fields = _common(**locals()) | {"mode": "txt2img", "prompt": text, "tile": tile, "chaos": chaos, "aspect_ratio": aspect}
    _run(fields, outdir or Path("outputs/txt2img"))


# Diffusion options a GAN has no use for: (option, the value that means "not given").
GAN_IGNORES = (("--negative", "negative", ""), ("--steps", "steps", None), ("--cfg-scale", "cfg_scale", None),
               ("--sampler", "sampler", None), ("--plms", "plms", False), ("--width", "width", None),
               ("--height", "height", None), ("--rerank", "rerank", 1), ("--score", "score", False),
               ("--style", "style", None), ("--stylize", "stylize", None), ("--combinatorial", "combinatorial", False),
               ("--expand", "expand", False),
               ("--attention-slicing", "attention_slicing", False), ("--vae-tiling", "vae_tiling", None),
               ("--tile", "tile", False), ("--chaos", "chaos", None), ("--ar", "aspect", None),
               ("--refiner", "refiner", None), ("--step-cache", "step_cache", None), ("--decoder", "decoder", "vae"),
               ("--runtime", "runtime", "auto"), ("--weights", "weights", "auto"), ("--quantize", "quantize", "none"))


def _gan_fields(given: dict, text: str | None) -> dict:
    """The request fields of `generate` with a GAN model; a diffusion-only option is refused by name."""
    for option, name, unset in GAN_IGNORES:
        if given[name] != unset:
            raise ReverieError(f"{option}: a GAN draws its pictures in one pass at its own size, without it; leave {option} out")
    if text and given["gan_class"] and text != given["gan_class"]:
        raise ReverieError("--class: a GAN takes no prompt, only a class; give the class once (as the prompt or --class)")
    fields = {"mode": "gan", "model": given["model"], "n_samples": given["n_samples"] * given["n_iter"],
              "seed": given["seed"], "device": given["device"], "upscale": given["upscale"],
              "truncation": given["truncation"], "class_name": given["gan_class"] or text or None, "walk": given["walk"]}
    return {key: value for key, value in fields.items() if value is not None}


@app.command()
def img2img(
    prompt: Annotated[str, typer.Argument(help="What the new picture should show.")],
    init_image: Annotated[Path, typer.Option("--init-image", "-i", "--init-img", help="The picture to start from.")],
    strength: Strength = None,
    model: Model = None, negative: Negative = "", n_samples: Samples = 4, n_iter: Iters = 1, width: Width = None,
    height: Height = None, steps: Steps = None, cfg_scale: Cfg = None, sampler: SamplerOpt = None,
    plms: Plms = False, seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto", runtime: RuntimeOpt = "auto", weights: WeightsOpt = "auto", quantize: QuantizeOpt = "none",
    attention_slicing: Slicing = False, vae_tiling: Tiling = None, upscale: Upscale = None,
    step_cache: StepCacheOpt = None, decoder: DecoderOpt = "vae",
    rerank: Rerank = 1, score: ScoreOpt = False, scorer: ScorerOpt = "mini",
    style: StyleOpt = None, stylize: Stylize = None, combinatorial: Combinatorial = False,
    max_combinations: MaxCombinations = 32, strict_combinations: StrictCombinations = False, expand: Expand = False,
    refiner: RefinerOpt = None, refiner_switch: RefinerSwitch = 0.8,
):
    """Image to image: redraw a picture after a prompt (strength 0..1)."""
    fields = _common(**locals()) | {"mode": "img2img", "prompt": prompt, "init_image": str(init_image), "strength": strength}
    _run(fields, outdir or Path("outputs/img2img"))


@app.command()
def variations(
    image: Annotated[Path, typer.Argument(help="The picture to vary.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt; defaults to the picture's own, if it has one.")] = None,
    strength: Strength = None,
    model: Model = None, negative: Negative = "", n_samples: Samples = 4, n_iter: Iters = 1, width: Width = None,
    height: Height = None, steps: Steps = None, cfg_scale: Cfg = None, sampler: SamplerOpt = None,
    plms: Plms = False, seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto", runtime: RuntimeOpt = "auto", weights: WeightsOpt = "auto", quantize: QuantizeOpt = "none",
    attention_slicing: Slicing = False, vae_tiling: Tiling = None, upscale: Upscale = None,
    step_cache: StepCacheOpt = None, decoder: DecoderOpt = "vae",
    rerank: Rerank = 1, score: ScoreOpt = False, scorer: ScorerOpt = "mini",
    style: StyleOpt = None, stylize: Stylize = None, combinatorial: Combinatorial = False,
    max_combinations: MaxCombinations = 32, strict_combinations: StrictCombinations = False, expand: Expand = False,
    refiner: RefinerOpt = None, refiner_switch: RefinerSwitch = 0.8,
):
    """Variations of a picture: new seeds around the same picture."""
    fields = _common(**locals()) | {"mode": "variations", "prompt": prompt or "", "init_image": str(image), "strength": strength}
    _run(fields, outdir or Path("outputs/variations"))


@app.command()
def inpaint(
    prompt: Annotated[str, typer.Argument(help="What goes in the masked area.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="The picture to edit.")],
    mask: Annotated[Path, typer.Option("--mask", help="White where to repaint, black where to keep.")],
    strength: Strength = None, mask_blur: MaskBlur = 4,
    model: Model = None, negative: Negative = "", n_samples: Samples = 4, n_iter: Iters = 1, width: Width = None,
    height: Height = None, steps: Steps = None, cfg_scale: Cfg = None, sampler: SamplerOpt = None,
    plms: Plms = False, seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto", runtime: RuntimeOpt = "auto", weights: WeightsOpt = "auto", quantize: QuantizeOpt = "none",
    attention_slicing: Slicing = False, vae_tiling: Tiling = None, upscale: Upscale = None,
    step_cache: StepCacheOpt = None, decoder: DecoderOpt = "vae",
    rerank: Rerank = 1, score: ScoreOpt = False, scorer: ScorerOpt = "mini",
    style: StyleOpt = None, stylize: Stylize = None, combinatorial: Combinatorial = False,
    max_combinations: MaxCombinations = 32, strict_combinations: StrictCombinations = False, expand: Expand = False,
    refiner: RefinerOpt = None, refiner_switch: RefinerSwitch = 0.8,
):
    """Repaint only the masked part of a picture."""
    fields = _common(**locals()) | {"mode": "inpaint", "prompt": prompt, "init_image": str(image), "mask_image": str(mask),
                                    "strength": strength, "mask_blur": mask_blur}
    _run(fields, outdir or Path("outputs/inpaint"))


@app.command()
def outpaint(
    prompt: Annotated[str, typer.Argument(help="What the new area should show.")],
    image: Annotated[Path, typer.Option("--image", "-i", help="The picture to extend.")],
    left: Annotated[int, typer.Option("--left", help="Pixels to add on the left.")] = 0,
    right: Annotated[int, typer.Option("--right", help="Pixels to add on the right.")] = 0,
    up: Annotated[int, typer.Option("--up", help="Pixels to add at the top.")] = 0,
    down: Annotated[int, typer.Option("--down", help="Pixels to add at the bottom.")] = 0,
    mask_blur: MaskBlur = 8,
    model: Model = None, negative: Negative = "", n_samples: Samples = 4, n_iter: Iters = 1,
    steps: Steps = None, cfg_scale: Cfg = None, sampler: SamplerOpt = None,
    plms: Plms = False, seed: Seed = None, outdir: Outdir = None, dtype: Dtype = "auto", device: Device = "auto", runtime: RuntimeOpt = "auto", weights: WeightsOpt = "auto", quantize: QuantizeOpt = "none",
    attention_slicing: Slicing = False, vae_tiling: Tiling = None, upscale: Upscale = None,
    step_cache: StepCacheOpt = None, decoder: DecoderOpt = "vae",
    rerank: Rerank = 1, score: ScoreOpt = False, scorer: ScorerOpt = "mini",
    style: StyleOpt = None, stylize: Stylize = None, combinatorial: Combinatorial = False,
    max_combinations: MaxCombinations = 32, strict_combinations: StrictCombinations = False, expand: Expand = False,
    refiner: RefinerOpt = None, refiner_switch: RefinerSwitch = 0.8,
):
    """Extend the canvas and fill the new area to match."""
    fields = _common(width=None, height=None, **locals()) | {
        "mode": "outpaint", "prompt": prompt, "init_image": str(image), "mask_blur": mask_blur,
        "outpaint_left": left, "outpaint_right": right, "outpaint_up": up, "outpaint_down": down,
    }
    _run(fields, outdir or Path("outputs/outpaint"))


@app.command("upscale")
def upscale_cmd(
    image: Annotated[Path, typer.Argument(help="The picture to enlarge.")],
    factor: Annotated[int, typer.Option("--factor", "-f", help="2 or 4.")] = 4,
    outdir: Outdir = None,
):
    """Enlarge a picture with the built-in upscaler of that factor, x4 or x2 (trained on
    flat-coloured art); the result keeps the picture's own settings, with the upscale step added."""
    _run({"mode": "upscale", "init_image": str(image), "upscale": factor}, outdir or Path("outputs/upscale"))


@app.command("action")
def action_cmd(
    action: Annotated[str, typer.Argument(help="upscale, vary_subtle, vary_strong, zoom_out_1.5, zoom_out_2, pan_left, pan_right, pan_up, pan_down or reroll.")],
    image: Annotated[Path, typer.Argument(help="A picture reverie made: its PNG carries the settings the action starts from.")],
    n_samples: Annotated[Optional[int], typer.Option("--n-samples", "-n", help="Pictures to make (default: as many as the picture's own request made).")] = None,
    seed: Seed = None, outdir: Outdir = None, device: Device = "auto",
):
    """Midjourney's actions on one picture: U (upscale), V (vary_subtle, vary_strong), zoom out
    (zoom_out_1.5, zoom_out_2), pan (pan_left ... pan_down), reroll; made with the picture's own
    prompt, model and settings (docs/prompt-craft.md)."""
    from .studio import request_for_action

    request = request_for_action(image, action, n_samples=n_samples, seed=seed, device=None if device == "auto" else device)
    _run(request, outdir or Path(f"outputs/{action}"))


@app.command()
def samplers():
    """List the samplers."""
    from .samplers import DEFAULT_SAMPLER, SAMPLERS

    for s in SAMPLERS:
        mark = "  (default)" if s.name == DEFAULT_SAMPLER else ""
        kind = "stochastic" if s.stochastic else "deterministic"
        out.print(f"{s.name:<22} {s.label:<22} {kind}{mark}")


@app.command()
def styles():
    """List the style presets (`generate --style NAME`, repeatable to combine; the studio's style menu)."""
    from .prompts.styles import load_styles

    for style in load_styles():
        extra = f"   (negative: {style.negative})" if style.negative else ""
        if style.settings:
            extra += "   (settings: " + ", ".join(f"{key} {value}" for key, value in style.settings.items()) + ")"
        out.print(f"{style.name:<16} {style.prompt}{extra}", markup=False, highlight=False)


@app.command()
def wildcards():
    """List the wildcards a prompt can use as __name__, and the folders they come from."""
    from .prompts.templates import wildcard_folders, wildcard_manager

    manager = wildcard_manager()
    for name in sorted(manager.get_collection_names()):
        values = list(manager.get_values(name).string_values)
        shown = ", ".join(values[:6]) + (", ..." if len(values) > 6 else "")
        out.print(f"__{name}__  ({len(values)}): {shown}", markup=False, highlight=False)
    folders = ", ".join(f"{folder}{'' if folder.is_dir() else ' (absent)'}" for folder in wildcard_folders())
    out.print(f"(wildcard folders, later ones winning: {folders}; set REVERIE_WILDCARDS to add one)", markup=False,
              highlight=False)


@app.command()
def models():
    """List the models reverie can load here."""
    from .models.registry import list_models, models_dir
    from .models.embeddings import list_embedding_entries
    from .models.lora import list_lora_entries
    from .models.style_network import list_style_networks

    for entry in [*list_models(), *list_style_networks(), *list_lora_entries(), *list_embedding_entries()]:
        out.print(f"{entry.name:<28} {entry.kind:<12} {entry.location}  {entry.note}")
    out.print(f"(models folder: {models_dir()}; set REVERIE_MODELS to change it)")


@app.command()
def info(image: Annotated[Path, typer.Argument(help="A PNG made by reverie or A1111, or a video made by reverie.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print only the reverie JSON.")] = False):
    """Print the settings a picture (or a video) carries."""
    from .outputs.metadata import read_png_info
    from .outputs.video import VIDEO_SUFFIXES, video_info

    if image.suffix.lower() in VIDEO_SUFFIXES and image.is_file():
        video = video_info(image)
        if not video.metadata:
            raise ReverieErrorExit(f"{image} carries no generation settings")
        if not as_json:
            out.print(f"{video.frames} frames at {video.fps:g} fps, {video.width}x{video.height}", markup=False)
        out.print_json(json.dumps(video.metadata))
        return
    data = read_png_info(image)
    if not data["parameters"] and not data["reverie"]:
        raise ReverieErrorExit(f"{image} carries no generation settings")
    if as_json:
        out.print_json(json.dumps(data["reverie"]))
        return
    prompt = (data["reverie"] or {}).get("prompt")
    if prompt:
        for label, key in (("template", "template"), ("variant", "variant"), ("expanded", "expanded"), ("prompt", "prompt"),
                           ("negative template", "negative_template"), ("negative prompt", "negative_prompt")):
            if prompt.get(key):
                out.print(f"{label + ':':<19}{prompt[key]}", markup=False, highlight=False)
        out.print("")
    if data["parameters"]:
        out.print(data["parameters"], markup=False, highlight=False)
    typed = ((data["reverie"] or {}).get("settings") or {}).get("prompt_parameters")
    if typed:
        from .prompts.parameters import format_parameters

        out.print(f"\nparameters typed after the prompt: {format_parameters(typed)}", markup=False, highlight=False)
    if data["reverie"]:
        out.print("\nreverie:", markup=False)
        out.print_json(json.dumps(data["reverie"]))


data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Training data for reverie's built-in models.")
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build(
    npm: Annotated[Path, typer.Option("--npm", help="The installed art packages (`npm ci --prefix data/npm`).")] = Path("data/npm/node_modules"),
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder to write; data/build/mini-SIZE when left out.")] = None,
    size: Annotated[int, typer.Option("--size", help="Picture size in pixels.")] = 64,
    include_flags: Annotated[bool, typer.Option("--include-flags", help="Also take flag emoji (hard to learn; left out by default).")] = False,
    sources: Annotated[str, typer.Option("--sources", help="Comma-separated sources: noto, twemoji, fluent, tabler.")] = "noto,twemoji,fluent,tabler",
):
    """Build the training dataset (PNG + captions, split by concept) from the pinned emoji and icon art."""
    from rich.table import Table

    from .training.data.build import build_dataset

    target = out_dir or Path(f"data/build/mini-{size}")
    with progress_bar(err) as bar:
        task = bar.add_task("pictures", total=None)
        manifest = build_dataset(npm, target, size=size, include_flags=include_flags,
                                 sources=tuple(name.strip() for name in sources.split(",") if name.strip()),
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    table = Table(title=f"{target} ({manifest['size']} px)")
    for name, justify in (("source", "left"), ("style", "left"), ("licence", "left"), ("train", "right"), ("test", "right")):
        table.add_column(name, justify=justify)
    for i, (name, s) in enumerate(manifest["sources"].items(), 1):
        table.add_row(name, s["style"], s["license"], str(s["train"]), str(s["test"]), end_section=i == len(manifest["sources"]))
    splits, concepts = manifest["splits"], manifest["concepts"]
    table.add_row("pictures", "", "", str(splits["train"]), str(splits["test"]))
    table.add_row("concepts", "", "", str(concepts["train"]), str(concepts["test"]))
    out.print(table)
    out.print(f"manifest: {target / 'manifest.json'}  attribution: {target / 'ATTRIBUTION.md'}")


@data_app.command("styled")
def data_styled(
    source: Annotated[Path, typer.Option("--from", help="The dataset to restyle (its train/ split): one `reverie data build` made.")] = Path("data/build/mini-64"),
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (replaced when it is an earlier styled dataset).")] = Path("data/build/styled-64"),
    per_picture: Annotated[int, typer.Option("--per-picture", help="Looks each picture is rendered in, beside the original.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Chooses the looks per picture and the filters' textures.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Picture size in pixels.")] = 64,
    original_share: Annotated[float, typer.Option("--original-share", help="Share of the pictures also kept as they are (0 to 1), so the model keeps its own looks.")] = 1.0,
):
    """Restyle a dataset through the project's style filters (pixel art, ink sketch, watercolour, ...), captioned with their words."""
    from .training.data.styled import build_styled

    with progress_bar(err) as bar:
        task = bar.add_task("pictures", total=None)
        manifest = build_styled(source, out_dir, per_picture=per_picture, seed=seed, size=size, original_share=original_share,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"{out_dir}: {manifest['original']} originals, {sum(manifest['styled'].values())} styled "
              f"({', '.join(f'{name} {n}' for name, n in manifest['styled'].items())})")


def _add_train_app() -> None:
    from .cli_train import train_app

    app.add_typer(train_app, name="train")


_add_train_app()


def _add_dream_command() -> None:
    from .cli_dream import dream
    from .cli_style import style
    from .cli_txt2img import txt2img

    app.command("dream")(dream)
    app.command("style")(style)
    app.command("txt2img")(txt2img)
    from .cli_video import video_app

    app.add_typer(video_app, name="video")


_add_dream_command()


def _add_studio_commands() -> None:
    from .cli_serve import serve, users_app, worker

    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(users_app, name="users")


_add_studio_commands()


def _add_grid_command() -> None:
    from .cli_grid import grid

    app.command("grid")(grid)


_add_grid_command()


class ReverieErrorExit(ReverieError):
    pass


def main() -> None:
    """Entry point: user mistakes become one clear line and exit code 2, not a traceback."""
    try:
        status = app(standalone_mode=False)  # a command's `typer.Exit(code)` comes back as its code
        if isinstance(status, int) and status:
            sys.exit(status)
    except ReverieError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]stopped[/yellow]")
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors (bad flag, bad number): click's own message
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))

def entry() -> None:
    """The `reverie` command: `main` in a process of its own (collector.py: its big imports are
    frozen, and its shutdown does not walk them again)."""
    own_process()
    try:
        main()
    finally:
        at_exit()


if __name__ == "__main__":
    entry()
