"""Tiny decoders (TAESD, TAESDXL: madebyollin's distilled autoencoders) from the user's disk.

A tiny decoder turns a Stable Diffusion model's latents into pixels in a few percent of its
VAE's time and memory, a little softer. reverie ships none: the user puts one in the models
folder, `taesd/` for SD 1/2 models and `taesdxl/` for SDXL, in either layout:

- diffusers' (madebyollin/taesd, madebyollin/taesdxl on the hub): `config.json` and
  `diffusion_pytorch_model.safetensors`;
- A1111's single decoder file (`taesd_decoder.safetensors` or `.pth`, `taesdxl_decoder.*`):
  the original TAESD's `nn.Sequential` keys, whose layer 0 is a clamp diffusers does in code,
  so layer N there is `decoder.layers.N-1` here. A `.pth` is read with `weights_only=True`.

TAESD decodes the pipeline's (scaled) latents as they are: its config's scaling factor is 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import load_file

from ..errors import BadCheckpoint, BadRequest
from .tiny_decoder_files import misfit_message

DECODER_CHOICES = ("vae", "tiny")
def load_tiny_decoder(path: Path, dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """An AutoencoderTiny from a diffusers folder, or one holding a single decoder file's weights
    (its encoder then stays unused)."""
    if path.is_dir():
        try:
            return AutoencoderTiny.from_pretrained(path, torch_dtype=dtype).eval()
        except (OSError, ValueError, RuntimeError) as error:
            raise BadCheckpoint(f"{path} is not a tiny decoder (diffusers AutoencoderTiny) folder: {error}") from None
    if path.suffix == ".pth":
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a pickle with code in it, or not a state dict at all
            raise BadCheckpoint(f"{path}: not a plain state dict of tensors ({error}); use the .safetensors file") from None
    else:
        weights = load_file(path)
    model = AutoencoderTiny()
    try:
        model.decoder.load_state_dict(a1111_decoder_keys(weights))
    except (RuntimeError, ValueError) as error:
        raise BadCheckpoint(f"{path} is not a TAESD decoder (its keys or shapes differ: {str(error)[:200]})") from None
    return model.to(dtype=dtype).eval()


def a1111_decoder_keys(weights: dict) -> dict:
    """The original TAESD decoder's keys (`3.conv.0.weight`) as diffusers' (`layers.2.conv.0.weight`)."""
    renamed = {}
    for key, value in weights.items():
        key = key.removeprefix("decoder.")
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1:
            raise ValueError(f"unexpected key {key!r}")
        renamed[f"layers.{int(index) - 1}.{rest}"] = value
    return renamed


def check_decoder_fits(decoder: AutoencoderTiny, latent_channels: int, scale: int, model: str) -> None:
    """A tiny decoder must read the model's latents: as many channels, enlarged as many times
    as its VAE enlarges them (8 for every SD model)."""
    config = decoder.config
    channels = config.latent_channels
    enlarges = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels) - 1)
    if (channels, enlarges) != (latent_channels, scale):
        raise BadRequest("decoder", misfit_message(channels, enlarges, model, latent_channels, scale))


@torch.no_grad()
def tiny_decode(decoder: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """Pipeline latents [N, C, h, w] -> pictures [N, 3, H, W] in [0, 1], one picture at a time
    (as the VAE decodes: a picture does not depend on its batch-mates)."""
    parameter = next(decoder.parameters())
    pictures = [decoder.decode(latent[None].to(parameter.device, parameter.dtype)).sample for latent in latents]
    return (torch.cat(pictures).float() / 2 + 0.5).clamp(0, 1)
