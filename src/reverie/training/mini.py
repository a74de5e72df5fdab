"""The recipe for reverie-mini: autoencoder, then denoiser on its latents, then packaging.

Each stage reads a dataset folder (one `reverie data build` made, whose train/ split it trains
on and whose test/ split it shows in samples, or any folder of pictures with captions), writes
a run folder that resumes when started again, and ends with an export of the EMA weights.
Stages train on `config.device`; their exports do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..models.components import ModelComponents
from ..models.mini import MINI_DIR, save_mini
from ..models.minilm import WINDOW, load_minilm
from ..outputs.files import atomic_write
from ..outputs.grid import make_grid
from .autoencoder import balancing_weights, colour_classes, encode_all, latent_scaling_factor, train_autoencoder
from .data.folder import ImageCaptionFolder, read_splits
from .denoiser import SCHEDULE, CaptionStates, train_denoiser
from .device import training_device
from .loop import TrainConfig

SAMPLE_PROMPTS = (
    "red apple, Noto emoji",
    "a cat face, Twemoji",
    "rocket, flat Fluent emoji",
    "house line icon",
    "blue car, Noto emoji",
    "smiling face with sunglasses, Twemoji",
    "green tree, flat Fluent emoji",
    "umbrella line icon",
)

DENOISER_BALANCE = 0.5  # the power of colour balancing in the denoiser's sampling (the autoencoder's is 0.75)


def read_dataset(data: str | Path, size: int, split: str = "train") -> ImageCaptionFolder:
    """One split of a built dataset (the benchmarks read test/); training reads folders with `read_splits`."""
    return ImageCaptionFolder(data, size=size, split=split)


def _held_out(test: ImageCaptionFolder | None) -> torch.Tensor | None:
    return test.images if test is not None else None


def run_autoencoder(data: str | Path, out: str | Path, config: TrainConfig, size: int = 64, quiet: bool = False,
                    init: str | Path | None = None, balance_colours: bool = False) -> Path:
    """Train (or resume) the autoencoder; export it with its latent scaling factor to out/vae.

    `init` (an autoencoder folder) fine-tunes from those weights; its picture size wins over `size`.
    Captions are not needed: the autoencoder learns from pictures alone.
    """
    if init is not None:
        size = int(AutoencoderKL.load_config(init, local_files_only=True)["sample_size"])
    train, test = read_splits(data, size, need_captions=False)
    vae = train_autoencoder(train.images, out, config, held_out=_held_out(test), quiet=quiet, init=init,
                            balance_colours=balance_colours)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, train.images[:2048]))
    export = Path(out) / "vae"
    vae.save_pretrained(export, safe_serialization=True)
    return export


def run_decoder(data: str | Path, vae_dir: str | Path, out: str | Path, config: TrainConfig, quiet: bool = False,
                small: str | Path | None = None, droplet_weight: float = 0.0) -> Path:
    """Fine-tune (or resume) the decoder of a trained autoencoder; export the whole autoencoder to out/vae.

    The encoder and the latent scaling factor stay as they are, so the denoiser trained on
    `vae_dir`'s latents works unchanged with the export. `small` adds art at half the size,
    enlarged, as `run_grown` does; `droplet_weight` as in `finetune_decoder`.
    """
    from .autoencoder import finetune_decoder

    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, dtype=torch.float32)
    pictures, test = _pictures_with_enlarged(data, small, int(vae.config.sample_size), config)
    vae = finetune_decoder(vae, pictures, out, config, held_out=_held_out(test), quiet=quiet, droplet_weight=droplet_weight)
    export = Path(out) / "vae"
    vae.save_pretrained(export, safe_serialization=True)
    return export


def _pictures_with_enlarged(data: str | Path, small: str | Path | None, size: int,
                            config: TrainConfig) -> tuple[torch.Tensor, ImageCaptionFolder | None]:
    """(`data`'s training pictures at `size`, plus the art only `small` has, enlarged; `data`'s test split).

    The sources `data` lacks (the first subfolders of `small` that `data` has not, as a built
    dataset's noto/ and twemoji/) are read from `small` at half the size and enlarged by the
    built-in upscaler as targets; `small` None adds nothing. Captions are not needed.
    """
    from ..models.upscaler import load_upscaler
    from .grow import teacher_pictures

    large, test = read_splits(data, size, need_captions=False)
    pictures = large.images
    if small is not None:
        covered = {large.top_folder(i) for i in range(len(large))}
        raster = read_splits(small, size // 2, need_captions=False).train
        keep = [i for i in range(len(raster)) if raster.top_folder(i) not in covered]
        if keep:
            upscaler = load_upscaler().float().eval().to(training_device(config.device))
            pictures = torch.cat([pictures, teacher_pictures(raster.images[keep], upscaler)])
    return pictures, test


def run_grown(data: str | Path, small: str | Path | None, vae_dir: str | Path, out: str | Path, config: TrainConfig,
              quiet: bool = False) -> Path:
    """Grow a trained autoencoder to twice its size (training/grow.py); export it to out/vae.

    `data` holds art rendered at twice the autoencoder's size, and `small` the art it lacks at
    the autoencoder's size (`_pictures_with_enlarged`). The latent space and scaling factor
    stay, so the denoiser needs no retraining. Captions are not needed.
    """
    from .grow import train_grown

    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True, dtype=torch.float32)
    pictures, test = _pictures_with_enlarged(data, small, 2 * int(vae.config.sample_size), config)
    grown = train_grown(vae, pictures, out, config, held_out=_held_out(test), quiet=quiet)
    export = Path(out) / "vae"
    grown.save_pretrained(export, safe_serialization=True)
    return export


def run_denoiser(data: str | Path, vae_dir: str | Path, out: str | Path, config: TrainConfig, quiet: bool = False,
                 init: str | Path | None = None, balance_colours: bool = False) -> Path:
    """Train (or resume) the UNet on the autoencoder's latents; export it to out/unet.

    `init` (a diffusers UNet folder) fine-tunes from those weights instead of starting fresh.
    `balance_colours` draws pictures of rare main colours more often, more gently than the
    autoencoder does (power DENOISER_BALANCE), so the denoiser's sense of what is common survives.
    """
    device = training_device(config.device)  # the autoencoder and text encoder run there too (latents, captions, samples)
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval().to(device)
    size = int(vae.config.sample_size)
    train = read_splits(data, size).train
    latents = cached_latents(Path(out) / LATENT_CACHE, vae, vae_dir, train)
    tokenizer, text_encoder = load_minilm()
    text_encoder.to(device)
    states = CaptionStates(tokenizer, text_encoder, WINDOW)

    def sample(unet: UNet2DConditionModel, step: int, folder: Path) -> None:
        sample_grid(unet, vae, tokenizer, text_encoder, folder / f"unet-{step:06d}.png")

    weights = balancing_weights(colour_classes(train.images), DENOISER_BALANCE) if balance_colours else None
    unet = train_denoiser(latents, train.captions, states, out, config, sample_fn=sample, quiet=quiet, init=init,
                          weights=weights)
    export = Path(out) / "unet"
    unet.save_pretrained(export, safe_serialization=True)
    return export


LATENT_CACHE = "latents.pt"


def cached_latents(cache: Path, vae: AutoencoderKL, vae_dir: str | Path, pictures: ImageCaptionFolder) -> torch.Tensor:
    """The scaled latents of `pictures`, read from `cache` when it holds those of the same pictures and
    autoencoder (a resumed run on a CPU skips minutes of encoding), else encoded and written there."""
    import hashlib

    weights = sorted(Path(vae_dir).glob("*.safetensors"))
    key = hashlib.sha1("\n".join([str(Path(vae_dir).resolve()), *(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights),
                                  *(str(p) for p in pictures.paths)]).encode("utf-8")).hexdigest()
    key += hashlib.sha1(pictures.images.numpy().tobytes()).hexdigest()
    if cache.is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            return stored["latents"]
    latents = encode_all(vae, pictures.images)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda partial: torch.save({"key": key, "latents": latents}, partial))
    return latents


def components_from(unet, vae, tokenizer, text_encoder) -> ModelComponents:
    return ModelComponents("mini-training", unet, vae, text_encoder, tokenizer, dict(SCHEDULE), family="mini")


@torch.no_grad()
def sample_grid(unet, vae, tokenizer, text_encoder, path: Path, prompts=SAMPLE_PROMPTS, steps: int = 20) -> Path:
    """One picture per prompt, through the same engine users run, on the UNet's device (in fp32).

    The autoencoder and the text encoder must be on that device too.
    """
    from ..studio import Studio, make_request

    device = str(unet.device)
    studio = Studio(device=device)
    studio.add_model("mini-training", components_from(unet, vae, tokenizer, text_encoder), device=device)
    pictures = []
    for i, prompt in enumerate(prompts):
        request = make_request(prompt=prompt, model="mini-training", steps=steps, cfg_scale=4.0, seed=i,
                               n_samples=1, sampler="dpmpp_2m", device=device, dtype="fp32")
        pictures.append(studio.generate(request).images[0].image)
    make_grid(pictures, columns=len(prompts)).save(path)
    return path


def package(vae_dir: str | Path, unet_dir: str | Path, dest: str | Path = MINI_DIR) -> Path:
    """Copy the trained parts into the shipped folder as fp16, with the noise schedule."""
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    return save_mini(unet, vae, dict(SCHEDULE), Path(dest))


def run_clip(data: str | Path, out: str | Path, config: TrainConfig, quiet: bool = False, robust: bool = False) -> Path:
    """Train (or resume) the small CLIP's image encoder; export it to out/image_encoder."""
    from ..models.mini_clip import IMAGE_SIZE, save_clip
    from .clip import train_clip

    train = read_splits(data, IMAGE_SIZE).train
    tokenizer, text_encoder = load_minilm()
    encoder = train_clip(train.images, train.captions, tokenizer, text_encoder, out, config, quiet=quiet, robust=robust)
    return save_clip(encoder, Path(out) / "export", half=False)


def run_upscaler(data: str | Path, out: str | Path, config: TrainConfig, size: int = 256, quiet: bool = False,
                 scale: int = 4) -> Path:
    """Train (or resume) the x`scale` upscaler on high-resolution pictures (no captions needed);
    export to out/export. The x2 one starts from the built-in x4's weights (`x2_from_x4`)."""
    from ..models.upscaler import load_upscaler, save_upscaler
    from .upscaler import train_upscaler, x2_from_x4

    train = read_splits(data, size, need_captions=False).train
    start = x2_from_x4(load_upscaler().float()) if scale == 2 else None
    model = train_upscaler(train.images, out, config, quiet=quiet, scale=scale, start=start)
    return save_upscaler(model, Path(out) / "export", half=False)


def package_extras(clip_dir: str | Path, upscaler_dir: str | Path, guide_dir: str | Path | None = None,
                   upscaler_x2_dir: str | Path | None = None) -> list[Path]:
    """Copy the trained CLIP image encoders (judge, dreaming guide) and upscalers (x4, x2) into
    the shipped folders as fp16; a source folder that does not exist is skipped."""
    from ..models.mini_clip import CLIP_DIR, GUIDE_WEIGHTS, WEIGHTS as CLIP_WEIGHTS, ImageEncoder
    from ..models.upscaler import Upscaler
    from ..models.upscaler_files import UPSCALER_DIR, WEIGHTS as UPSCALER_WEIGHTS, WEIGHTS_X2
    from ..models.weights import load_weights, save_weights

    written = []
    for source, build, dest, name, shipped_as in (
        (Path(clip_dir), ImageEncoder, CLIP_DIR, CLIP_WEIGHTS, CLIP_WEIGHTS),
        (Path(guide_dir) if guide_dir else None, ImageEncoder, CLIP_DIR, CLIP_WEIGHTS, GUIDE_WEIGHTS),
        (Path(upscaler_dir), Upscaler, UPSCALER_DIR, UPSCALER_WEIGHTS, UPSCALER_WEIGHTS),
        (Path(upscaler_x2_dir) if upscaler_x2_dir else None, lambda: Upscaler(scale=2), UPSCALER_DIR, WEIGHTS_X2,
         WEIGHTS_X2),
    ):
        if source is not None and (source / name).is_file():
            model = load_weights(build(), source / name, str(source))
            written.append(save_weights(model, dest / shipped_as, half=True))
    return written
