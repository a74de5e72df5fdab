"""`reverie train ...`: training the built-in models from a dataset folder, and LoRAs and embeddings
of any model from a folder of your pictures (`reverie train lora|embedding FOLDER --model BASE`).

--data is a folder of pictures with same-name .txt captions (subfolders too), or a dataset
`reverie data build` made (its train/ split is trained on). Every command resumes when given
the same --out folder again, trains on --device (a CUDA GPU when there is one), shows a
progress bar with loss and rate, and writes sample grids under OUT/samples/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

train_app = typer.Typer(help="Train reverie's built-in models (resumable; CPU or GPU).", no_args_is_help=True)
out = Console(soft_wrap=True, emoji=False)

Data = Annotated[Path, typer.Option("--data", help="A folder of pictures (png, jpg, webp; subfolders too) with same-name .txt captions, or a dataset `reverie data build` made (its train/ split).")]
Pictures = Annotated[Path, typer.Option("--data", help="A folder of pictures (png, jpg, webp; subfolders too; no captions needed), or a dataset `reverie data build` made (train/ to learn, test/ for samples).")]
Out = Annotated[Path, typer.Option("--out", help="Run folder; training resumes from its checkpoint.")]
Steps = Annotated[int, typer.Option("--steps", help="Optimizer steps in all (a resumed run continues to this number).")]
Batch = Annotated[int, typer.Option("--batch-size", help="Pictures per step.")]
Lr = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
Bf16 = Annotated[bool, typer.Option("--bf16", help="bf16 autocast: faster on GPUs and on CPUs with avx512_bf16 or AMX; many times slower on other CPUs (a warning says so).")]
Fp16 = Annotated[bool, typer.Option("--fp16", help="fp16 autocast with loss scaling (CUDA GPUs).")]
Device = Annotated[str, typer.Option("--device", help="Where to train: auto (a CUDA GPU when there is one), cpu, cuda, cuda:N or mps.")]
SaveEvery = Annotated[int, typer.Option("--save-every", help="Steps between checkpoints.")]
SampleEvery = Annotated[int, typer.Option("--sample-every", help="Steps between sample grids.")]
Warmup = Annotated[int, typer.Option("--warmup", help="Steps of linear learning-rate warm-up.")]
EmaDecay = Annotated[float, typer.Option("--ema-decay", help="Decay of the EMA weights that are exported.")]


def _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device="auto", fp16=False):
    """The run's TrainConfig; the device and precision are checked here, before any data is read."""
    from .device import cpu_has_native_bf16
    from .errors import BadRequest, ReverieError
    from .training.device import Precision, training_device
    from .training.loop import TrainConfig

    if not 0.0 <= ema_decay < 1.0:
        raise ReverieError("--ema-decay: must be at least 0 and below 1 (e.g. 0.999)")
    try:
        where = training_device(device)
        Precision.choose(where, bf16, fp16)
    except BadRequest as exc:
        raise ReverieError(f"--{exc}") from None
    if bf16 and where.type == "cpu" and not cpu_has_native_bf16():
        out.print("[yellow]warning:[/] this CPU has no native bf16 (avx512_bf16 or AMX): --bf16 is emulated here and "
                  "runs many times slower than fp32; leave it out")
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, bf16=bf16, save_every=save_every,
                       sample_every=sample_every, warmup=warmup, ema_decay=ema_decay, fp16=fp16, device=device)


def _check_data(data: Path, option: str = "--data") -> None:
    from .errors import ReverieError

    if not data.is_dir():
        raise ReverieError(f"{option}: no folder at {data}; give a folder of pictures with same-name .txt captions "
                           f"(cat.png + cat.txt), or build a dataset with `reverie data build --out {data}`")


def _check_component(option: str, folder: Path, what: str, hint: str = "") -> None:
    """A diffusers model part (UNet, autoencoder) is a folder with a config.json."""
    from .errors import ReverieError

    if not (folder / "config.json").is_file():
        raise ReverieError(f"{option}: {folder} is not {what} (it has no config.json){hint}")


DEFAULT_SMALL = Path("data/build/mini-64")


@train_app.command()
def autoencoder(data: Pictures = Path("data/build/mini-64"), out_dir: Out = Path("runs/autoencoder"), steps: Steps = 6000,
                batch_size: Batch = 32, lr: Lr = 4e-4, bf16: Bf16 = False, save_every: SaveEvery = 250,
                sample_every: SampleEvery = 500, warmup: Warmup = 200, ema_decay: EmaDecay = 0.999,
                size: Annotated[int, typer.Option("--size", help="Picture size in pixels.")] = 64,
                init: Annotated[Path, typer.Option("--init", help="Start from this autoencoder folder (fine-tune) instead of random weights; retrain the denoiser on it after.")] = None,
                balance_colours: Annotated[bool, typer.Option("--balance-colours", help="Draw pictures more often the rarer their main colour is.")] = False,
                device: Device = "auto", fp16: Fp16 = False):
    """Train the autoencoder (pictures <-> latents)."""
    from .training.mini import run_autoencoder

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    if init is not None:
        _check_component("--init", init, "an autoencoder folder")
    export = run_autoencoder(data, out_dir, config, size=size, init=init, balance_colours=balance_colours)
    out.print(f"autoencoder saved to {export}")


@train_app.command()
def decoder(data: Pictures = Path("data/build/mini-64"), vae: Annotated[Path, typer.Option("--vae", help="The trained autoencoder to improve (RUN/vae).")] = Path("runs/autoencoder/vae"),
            out_dir: Out = Path("runs/decoder"), steps: Steps = 1500, batch_size: Batch = 32, lr: Lr = 4e-4, bf16: Bf16 = False,
            save_every: SaveEvery = 250, sample_every: SampleEvery = 500, warmup: Warmup = 50, ema_decay: EmaDecay = 0.995,
            device: Device = "auto", fp16: Fp16 = False,
            small: Annotated[Path, typer.Option("--small", help="Pictures at half the autoencoder's size for the art (first subfolders) --data lacks, enlarged by the built-in upscaler as targets (as `grow` does).")] = None,
            droplet_weight: Annotated[float, typer.Option("--droplet-weight", help="Weight of the penalty on a decoder 'droplet' (one spot of huge activations, drawn as a speck); 0.1 removed reverie-mini's.", min=0.0)] = 0.0):
    """Fine-tune only the autoencoder's decoder (colour-balanced); its latents, and the denoiser, stay valid."""
    from .training.mini import run_decoder

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    if small is not None:
        _check_data(small, "--small")
    _check_component("--vae", vae, "an autoencoder folder", "; train one with `reverie train autoencoder`")
    export = run_decoder(data, vae, out_dir, config, small=small, droplet_weight=droplet_weight)
    out.print(f"autoencoder with the new decoder saved to {export}")


@train_app.command()
def grow(data: Annotated[Path, typer.Option("--data", help="Pictures at twice the autoencoder's size: a folder (no captions needed), or a dataset `reverie data build` made.")] = Path("data/build/hires-128"),
         small: Annotated[Path, typer.Option("--small", help=f"Pictures at the autoencoder's own size for the art (first subfolders) --data lacks, enlarged by the built-in upscaler as targets. Default: {DEFAULT_SMALL} when it exists, else none.", show_default=False)] = None,
         vae: Annotated[Path, typer.Option("--vae", help="The trained autoencoder to grow (RUN/vae).")] = Path("runs/autoencoder/vae"),
         out_dir: Out = Path("runs/grown"), steps: Steps = 1500, batch_size: Batch = 32, lr: Lr = 2e-4, bf16: Bf16 = False,
         save_every: SaveEvery = 250, sample_every: SampleEvery = 250, warmup: Warmup = 50, ema_decay: EmaDecay = 0.995,
         device: Device = "auto", fp16: Fp16 = False):
    """Grow the autoencoder to twice its picture size, keeping its latents (and so the denoiser).

    DATA: e.g. vector art rendered at twice the size (reverie data build --sources fluent,tabler --size 128).
    """
    from .training.mini import run_grown

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    if small is None and DEFAULT_SMALL.is_dir():
        small = DEFAULT_SMALL
    if small is not None:
        _check_data(small, "--small")
    _check_component("--vae", vae, "an autoencoder folder", "; train one with `reverie train autoencoder`")
    export = run_grown(data, small, vae, out_dir, config)
    out.print(f"grown autoencoder saved to {export}")


@train_app.command()
def unet(data: Data = Path("data/build/mini-64"), vae: Annotated[Path, typer.Option("--vae", help="The trained autoencoder (RUN/vae).")] = Path("runs/autoencoder/vae"),
         out_dir: Out = Path("runs/unet"), steps: Steps = 20000, batch_size: Batch = 64, lr: Lr = 3e-4, bf16: Bf16 = False,
         save_every: SaveEvery = 250, sample_every: SampleEvery = 1000, warmup: Warmup = 200, ema_decay: EmaDecay = 0.999,
         init: Annotated[Path, typer.Option("--init", help="Start from this diffusers UNet folder (fine-tune) instead of random weights.")] = None,
         balance_colours: Annotated[bool, typer.Option("--balance-colours", help="Draw pictures of rare main colours more often (gently).")] = False,
         device: Device = "auto", fp16: Fp16 = False):
    """Train the text-conditioned denoiser on the autoencoder's latents."""
    from .training.mini import run_denoiser

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    _check_component("--vae", vae, "an autoencoder folder", "; train one with `reverie train autoencoder`")
    if init is not None:
        _check_component("--init", init, "a diffusers UNet folder")
    export = run_denoiser(data, vae, out_dir, config, init=init, balance_colours=balance_colours)
    out.print(f"unet saved to {export}")


@train_app.command("package")
def package_cmd(vae: Annotated[Path, typer.Option("--vae")] = Path("runs/autoencoder/vae"),
                unet_dir: Annotated[Path, typer.Option("--unet")] = Path("runs/unet/unet"),
                dest: Annotated[Path, typer.Option("--dest", help="Where the built-in model lives.")] = None,
                clip_dir: Annotated[Path, typer.Option("--clip", help="The trained CLIP image encoder, shipped as the judge (RUN/export).")] = Path("runs/clip/export"),
                guide_dir: Annotated[Path, typer.Option("--dream-guide", help="The CLIP image encoder shipped as the dreaming guide (RUN/export).")] = Path("runs/clip-guide/export"),
                upscaler_dir: Annotated[Path, typer.Option("--upscaler", help="The trained x4 upscaler (RUN/export).")] = Path("runs/upscaler/export"),
                upscaler_x2_dir: Annotated[Path, typer.Option("--upscaler-x2", help="The trained x2 upscaler (RUN/export).")] = Path("runs/upscaler-x2/export")):
    """Write the trained parts as the built-in models (fp16 safetensors; the denoiser in diffusers layout)."""
    from .models.mini import MINI_DIR
    from .training.mini import package, package_extras

    folder = package(vae, unet_dir, dest or MINI_DIR)
    out.print(f"reverie-mini written to {folder}")
    for written in package_extras(clip_dir, upscaler_dir, guide_dir, upscaler_x2_dir):
        out.print(f"written: {written}")


@train_app.command()
def clip(data: Data = Path("data/build/mini-64"), out_dir: Out = Path("runs/clip"), steps: Steps = 3000,
         batch_size: Batch = 256, lr: Lr = 1e-3, bf16: Bf16 = False, save_every: SaveEvery = 250,
         sample_every: SampleEvery = 1000, warmup: Warmup = 200, ema_decay: EmaDecay = 0.999,
         robust: Annotated[bool, typer.Option("--robust", help="Train on noisy, zoomed random views, as dreaming's cutouts see pictures (smoother guidance).")] = False,
         device: Device = "auto", fp16: Fp16 = False):
    """Train the small CLIP's image encoder against frozen MiniLM sentence vectors."""
    from .training.mini import run_clip

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    export = run_clip(data, out_dir, config, robust=robust)
    out.print(f"image encoder saved to {export}")


@train_app.command()
def upscaler(data: Pictures = Path("data/build/hires-256"), out_dir: Annotated[Path, typer.Option("--out", help="Run folder; training resumes from its checkpoint. Default: runs/upscaler, or runs/upscaler-x2 for --scale 2.", show_default=False)] = None, steps: Steps = 2000,
             batch_size: Batch = 16, lr: Lr = 5e-4, bf16: Bf16 = False, save_every: SaveEvery = 250,
             sample_every: SampleEvery = 500, warmup: Warmup = 200, ema_decay: EmaDecay = 0.999,
             size: Annotated[int, typer.Option("--size", help="High-resolution picture size (at least 128).")] = 256,
             scale: Annotated[int, typer.Option("--scale", help="4, or 2: the x2 network, which starts from the built-in x4's weights.")] = 4,
             device: Device = "auto", fp16: Fp16 = False):
    """Train the x4 (or x2) upscaler on large pictures, e.g. vector art rendered large (reverie data build --sources fluent,tabler --size 256)."""
    from .errors import ReverieError
    from .models.upscaler import SCALES
    from .training.mini import run_upscaler
    from .training.upscaler import PATCH

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    if size < PATCH:
        raise ReverieError(f"--size: the upscaler learns from {PATCH} px crops; use at least {PATCH}")
    if scale not in SCALES:
        raise ReverieError(f"--scale: the upscaler doubles a picture's side once or twice; give 2 or 4, not {scale}")
    _check_data(data)
    export = run_upscaler(data, out_dir or Path("runs/upscaler" if scale == 4 else "runs/upscaler-x2"), config,
                          size=size, scale=scale)
    out.print(f"upscaler saved to {export}")


@train_app.command("style")
def style_cmd(style: Annotated[Path, typer.Argument(help="The style picture the network learns to paint in.")],
              data: Pictures = Path("data/build/hires-128"), out_dir: Out = Path("runs/style"), steps: Steps = 1000,
              batch_size: Batch = 4, lr: Lr = 2e-3, bf16: Bf16 = False, save_every: SaveEvery = 100,
              sample_every: SampleEvery = 100, warmup: Warmup = 20,
              size: Annotated[int, typer.Option("--size", help="Content picture size in pixels while training (the network then takes any size).")] = 128,
              features: Annotated[str, typer.Option("--features", help="The feature network that defines style and content: builtin, random, clip, vgg16:FILE or vgg19:FILE.")] = "builtin",
              strength: Annotated[float, typer.Option("--strength", "--style-weight", help="How much style weighs against content.")] = 1.0,
              smoothness: Annotated[float, typer.Option("--smoothness", "--tv", help="Total-variation weight: damps the network's fine hatching.")] = 0.02,
              seed: Annotated[int, typer.Option("--seed")] = 0,
              device: Device = "auto", fp16: Fp16 = False):
    """Train a feed-forward style network for one style (Johnson et al.); apply it with `reverie style --model RUN`."""
    from PIL import Image

    from .errors import BadRequest, ImageInputError, ReverieError
    from .models.style_feature_names import parse_features
    from .models.style_features import load_features
    from .models.style_network import StyleNetworkConfig
    from .training.style import content_pictures, train_style_network

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, 0.0, device, fp16)
    config.seed = seed
    if smoothness < 0 or strength < 0:
        raise ReverieError("--strength and --smoothness: give 0 or more")
    if not 32 <= size <= 1024 or size % 4:
        raise ReverieError("--size: give a multiple of 4 between 32 and 1024 (e.g. 128)")
    if not style.is_file():
        raise ImageInputError(f"STYLE: no picture at {style}")
    try:
        parse_features(features)
    except ValueError as exc:
        raise BadRequest("--features", str(exc)) from None
    try:
        with Image.open(style) as opened:
            picture = opened.convert("RGB")
    except (OSError, SyntaxError) as exc:
        raise ImageInputError(f"STYLE: {style} is not a readable picture ({exc})") from None
    _check_data(data)
    network = load_features(features)
    images, samples = content_pictures(data, size)
    train_style_network(picture, images, out_dir, config,
                        StyleNetworkConfig(style=style.name, features=features, size=size, strength=strength,
                                           smoothness=smoothness),
                        features=network, samples=samples)
    out.print(f"style network saved to {out_dir / 'export'}; apply it with: reverie style --model {out_dir} PICTURE")


@train_app.command()
def gan(folder: Annotated[Optional[Path], typer.Argument(help="A folder of pictures (png, jpg, webp; subfolders too; no captions needed), or a dataset `reverie data build` made (its train/ split). Default: data/build/mini-64.", show_default=False)] = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="The same as FOLDER.")] = None,
        out_dir: Out = Path("runs/gan"), steps: Steps = 3000, batch_size: Batch = 8, lr: Annotated[float, typer.Option("--lr", help="The generator's learning rate.")] = 2e-4,
        save_every: SaveEvery = 250, sample_every: SampleEvery = 250, warmup: Warmup = 50, ema_decay: EmaDecay = 0.999,
        size: Annotated[int, typer.Option("--size", help="Picture side in pixels: 16, 32, 64, 128 or 256.")] = 64,
        width: Annotated[int, typer.Option("--width", help="The generator's channels at 4 and 8 px, halved each block above (at least --least).", min=8, max=1024)] = 128,
        d_width: Annotated[int, typer.Option("--d-width", help="The discriminator's channels at 4 and 8 px, halved each block above.", min=8, max=1024)] = 128,
        least: Annotated[int, typer.Option("--least", help="No block of either network narrower than this.", min=4, max=512)] = 16,
        z_dim: Annotated[int, typer.Option("--z-dim", help="Length of the noise vector z (and of w).", min=8, max=1024)] = 128,
        r1: Annotated[float, typer.Option("--r1", help="R1 penalty weight (gamma) on real pictures, applied lazily.", min=0.0)] = 0.1,
        d_lr: Annotated[float, typer.Option("--d-lr", help="The discriminator's learning rate (twice the generator's, by default: a discriminator that learns slower sat at chance and the generator collapsed).")] = 4e-4,
        d_steps: Annotated[int, typer.Option("--d-steps", help="Discriminator updates per generator update.", min=1, max=10)] = 3,
        conditional: Annotated[Optional[bool], typer.Option("--conditional/--unconditional", help="One class per first subfolder (a built dataset: noto, twemoji, fluent, tabler). Default: conditional when the pictures lie in two or more subfolders.", show_default=False)] = None,
        augment: Annotated[bool, typer.Option("--augment/--no-augment", help="DiffAugment (colour, translation, cutout) on everything the discriminator sees.")] = True,
        fp32_export: Annotated[bool, typer.Option("--fp32-export", help="Export fp32 weights instead of fp16.")] = False,
        bf16: Bf16 = False, device: Device = "auto", fp16: Fp16 = False):
    """Train a small class-conditional GAN (StyleGAN-lite generator, R1, DiffAugment, EMA); export to OUT/export."""
    from .errors import ReverieError
    from .models.gan import check_size
    from .training.gan import GANSettings, run_gan

    if folder is not None and data is not None and folder != data:
        raise ReverieError(f"--data: give the pictures once, as FOLDER or as --data (got {folder} and {data})")
    data = folder or data or Path("data/build/mini-64")
    try:
        check_size(size)
    except ValueError as exc:
        raise ReverieError(f"--size: {exc}") from None
    if batch_size < 2:
        raise ReverieError("--batch-size: a GAN needs at least 2 pictures per step")
    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, ema_decay, device, fp16)
    _check_data(data)
    settings = GANSettings(size=size, z_dim=z_dim, w_dim=z_dim, g_base=width, d_base=d_width, least=least, r1_gamma=r1,
                           d_lr=d_lr, d_steps=d_steps, augment=augment)
    export = run_gan(data, out_dir, config, settings, conditional=conditional, half=not fp32_export)
    out.print(f"GAN saved to {export}; make pictures with `reverie generate --model gan:{out_dir}`")


Folder = Annotated[Path, typer.Argument(help="A folder of 10 or more pictures of the concept (png, jpg, webp; subfolders too), each with an optional same-name .txt caption.")]
BaseModel = Annotated[str, typer.Option("--model", help="The base model to teach: mini, a diffusers folder, an SD 1.x/2.x single file, or a name in the models folder.")]
Resolution = Annotated[Optional[int], typer.Option("--resolution", help="Training pictures of about this side squared in pixels (default: the model's native size: 128 for mini, 512 for SD 1.x).", show_default=False)]
Buckets = Annotated[bool, typer.Option("--buckets/--no-buckets", help="Group pictures by aspect ratio (each batch one shape) instead of cropping all to squares.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the batches, noise and the adapters' start.")]


def _run_folder(out_dir: Optional[Path], kind: str, name: str) -> Path:
    import re

    return out_dir or Path("runs") / f"{kind}-{re.sub(r'[^A-Za-z0-9_-]+', '', name) or kind}"


def _concept_run(folder: Path, out_dir: Path | None, kind: str, word: str) -> Path:
    """The run folder of a LoRA or an embedding taught from the pictures in `folder` (which must exist)."""
    from .errors import ReverieError

    if not folder.is_dir():
        raise ReverieError(f"FOLDER: no folder at {folder}; give a folder of 10 or more pictures of the concept")
    return _run_folder(out_dir, kind, word)


@train_app.command("lora")
def lora_cmd(folder: Folder, model: BaseModel = "mini",
             trigger: Annotated[str, typer.Option("--trigger", help="The word that calls up the concept in prompts; put in front of every caption.")] = "sks",
             rank: Annotated[int, typer.Option("--rank", help="The adapters' rank (ss_network_dim).", min=1, max=256)] = 8,
             alpha: Annotated[float, typer.Option("--alpha", help="LoRA alpha: the update is scaled alpha/rank (ss_network_alpha).")] = 8.0,
             lr: Lr = 1e-4, steps: Steps = 200, batch_size: Batch = 2, resolution: Resolution = None, buckets: Buckets = True,
             text_encoder: Annotated[bool, typer.Option("--text-encoder", help="Adapters on the text encoder too (CLIP encoders: SD 1.x/2.x; reverie-mini's MiniLM LoRAs are UNet-only).")] = False,
             prior_preservation: Annotated[bool, typer.Option("--prior-preservation", help="Keep the class as the base model draws it: its pictures (made once into the run folder) trained alongside.")] = False,
             class_prompt: Annotated[Optional[str], typer.Option("--class-prompt", help="What the concept is, e.g. \"a photo of a cat\": captions pictures that have none (TRIGGER CLASS) and draws the class pictures.")] = None,
             class_images: Annotated[int, typer.Option("--class-images", help="Class pictures for prior preservation.", min=1)] = 50,
             prior_weight: Annotated[float, typer.Option("--prior-weight", help="Weight of the class pictures' loss.", min=0.0)] = 1.0,
             name: Annotated[Optional[str], typer.Option("--name", help="The file's name, used in prompts as <lora:NAME:1> (default: the run folder's name).", show_default=False)] = None,
             out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/lora-TRIGGER); training resumes from its checkpoint.", show_default=False)] = None,
             save_every: SaveEvery = 50, sample_every: Annotated[int, typer.Option("--sample-every", help="Steps between sample grids (fixed seeds; 0: none).", min=0)] = 100,
             warmup: Warmup = 10, seed: Seed = 0,
             fp32_export: Annotated[bool, typer.Option("--fp32-export", help="Write fp32 tensors instead of fp16.")] = False,
             bf16: Bf16 = False, device: Device = "auto", fp16: Fp16 = False):
    """Teach a model a concept from your pictures as a LoRA (DreamBooth-style); writes a kohya .safetensors."""
    from .training.lora import LoraSettings, train_lora

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, 0.0, device, fp16)
    config.seed = seed
    run = _concept_run(folder, out_dir, "lora", trigger)
    settings = LoraSettings(trigger=trigger, rank=rank, alpha=alpha, resolution=resolution, buckets=buckets,
                            text_encoder=text_encoder, prior_preservation=prior_preservation, class_prompt=class_prompt,
                            class_images=class_images, prior_weight=prior_weight, name=name or "", half=not fp32_export)
    trained = train_lora(folder, model, run, config, settings)
    stem = trained.file.stem
    out.print(f"LoRA saved to {trained.file}; copy it into models/Lora/ and write <lora:{stem}:1> {trigger} in a prompt",
              markup=False, highlight=False)


@train_app.command("embedding")
def embedding_cmd(folder: Folder, model: BaseModel = "mini",
                  token: Annotated[str, typer.Option("--token", help="The new word, e.g. \"<my-cat>\".")] = "<my-concept>",
                  init_word: Annotated[str, typer.Option("--init-word", help="A word near the concept to start from, e.g. cat.")] = "*",
                  vectors: Annotated[int, typer.Option("--vectors", help="Vectors (tokens) per use of the word.", min=1, max=75)] = 1,
                  lr: Lr = 5e-3, steps: Steps = 200, batch_size: Batch = 2, resolution: Resolution = None, buckets: Buckets = True,
                  fmt: Annotated[str, typer.Option("--format", help="safetensors (emb_params) or pt (A1111's string_to_param dict).")] = "safetensors",
                  name: Annotated[Optional[str], typer.Option("--name", help="The file's name, the word in prompts (default: the token without <>).", show_default=False)] = None,
                  out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/embedding-TOKEN); training resumes from its checkpoint.", show_default=False)] = None,
                  save_every: SaveEvery = 50, sample_every: Annotated[int, typer.Option("--sample-every", help="Steps between sample grids (fixed seeds; 0: none).", min=0)] = 100,
                  warmup: Warmup = 10, seed: Seed = 0, bf16: Bf16 = False, device: Device = "auto", fp16: Fp16 = False):
    """Teach a model a new word for a concept from your pictures (textual inversion); writes A1111's embedding format."""
    from .training.embedding import EmbeddingSettings, train_embedding

    config = _config(steps, batch_size, lr, bf16, save_every, sample_every, warmup, 0.0, device, fp16)
    config.seed = seed
    run = _concept_run(folder, out_dir, "embedding", token)
    settings = EmbeddingSettings(token=token, init_word=init_word, vectors=vectors, resolution=resolution, buckets=buckets,
                                 name=name or "", fmt=fmt)
    trained = train_embedding(folder, model, run, config, settings)
    out.print(f"embedding saved to {trained.file}; copy it into models/embeddings/ and write {trained.file.stem} in a prompt",
              markup=False, highlight=False)
