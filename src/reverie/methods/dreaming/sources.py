"""Turn a `--generator` reference into a generator over a frozen network.

- `mini` (default): the built-in autoencoder's latent space (the dream takes it from the shared
  model cache, as generation loads it; here it would load as any model does);
- `pixels`: raw pixels, Fourier-parameterized;
- `vqgan:CKPT` or a `.ckpt` with a taming YAML beside it: a VQGAN;
- `biggan:DIR` or a folder with BigGAN's config.json: BigGAN;
- `gan:RUN` (a GAN `reverie train gan` made: its run folder, export folder, or name in the
  models folder) or such a folder: that GAN's z and classes;
- anything else `--model` accepts (a diffusers folder, an SD single file, a bare
  AutoencoderKL folder): that model's autoencoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...errors import BadCheckpoint, BadRequest, ModelNotFound
from .generators import BigGANGenerator, GANGenerator, Generator, LatentGenerator, PixelGenerator, VQGANGenerator

PIXELS = "pixels"


def _is_taming_checkpoint(path: Path) -> bool:
    if path.suffix.lower() not in (".ckpt", ".pt", ".pth", ".safetensors") or not path.is_file():
        return False
    yaml_file = path.with_suffix(".yaml")
    return yaml_file.is_file() and "taming." in yaml_file.read_text(errors="replace")


def _is_autoencoder_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") in ("AutoencoderKL", "VQModel")
    except (OSError, ValueError, AttributeError):
        return False


def load_network(reference: str, dtype: torch.dtype = torch.float32):
    """(kind, frozen network) for a generator reference; kind is pixels|latent|vqgan|biggan|gan."""
    from ...models.biggan import is_biggan_folder, load_biggan
    from ...models.gan import load_gan
    from ...models.gan_folders import is_gan_reference, resolve_gan
    from ...models.taming_vqgan import load_vqgan

    prefix, sep, rest = reference.partition(":")
    if reference == PIXELS:
        return "pixels", None
    if sep and prefix == "vqgan":
        return "vqgan", load_vqgan(rest, dtype=dtype)
    if sep and prefix == "biggan":
        return "biggan", load_biggan(rest, dtype=dtype)
    if is_gan_reference(reference):
        try:
            return "gan", load_gan(resolve_gan(reference), dtype=dtype)
        except (ModelNotFound, BadCheckpoint) as exc:
            raise BadRequest("generator", str(exc)) from None
    path = Path(reference)
    if _is_taming_checkpoint(path):
        return "vqgan", load_vqgan(path, dtype=dtype)
    if is_biggan_folder(path):
        return "biggan", load_biggan(path, dtype=dtype)
    if _is_autoencoder_folder(path):
        from diffusers import AutoencoderKL, VQModel

        cls = AutoencoderKL if json.loads((path / "config.json").read_text())["_class_name"] == "AutoencoderKL" else VQModel
        return ("latent" if cls is AutoencoderKL else "vqgan"), cls.from_pretrained(path, local_files_only=True).to(dtype)
    from ...models.registry import load_model

    try:
        components = load_model(reference, dtype=dtype)
    except ModelNotFound:
        raise ModelNotFound(
            f"unknown generator {reference!r}: use mini, pixels, vqgan:CHECKPOINT, biggan:FOLDER, gan:RUN, "
            "or a model whose autoencoder to dream in"
        ) from None
    return "latent", components.vae


def build_generator(kind: str, network, height: int, width: int, generator: torch.Generator,
                    truncation: float = 1.0) -> Generator:
    if kind == "pixels":
        return PixelGenerator(height, width, generator)
    network.requires_grad_(False).eval()
    if kind == "latent":
        return LatentGenerator(network, height, width, generator)
    if kind == "vqgan":
        return VQGANGenerator(network, height, width, generator)
    if kind == "gan":
        return GANGenerator(network, height, width, generator, truncation)
    return BigGANGenerator(network, height, width, generator, truncation)
