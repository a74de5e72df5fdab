"""Cheap live previews of latents while a picture is still being denoised.

Decoding with the VAE at every step would cost as much as the picture itself on a CPU. Instead
each model gets a linear map from its latent channels to RGB, fitted once by encoding a few
plain-colour swatches through its own autoencoder; a preview is then one small matrix product.
A request decoding with a tiny decoder (TAESD) previews with it: a real decode, at a few
percent of the VAE's cost.
"""

from __future__ import annotations

import itertools
import weakref

import torch
from PIL import Image

from ...models.tiny_decoder import tiny_decode
from ...pixels import to_picture

# Per autoencoder, forgotten with it (an id() key could be reused by a later model).
_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SWATCH = 64


@torch.no_grad()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """[C+1, 3]: latent channels (plus a bias) -> RGB in [0, 1], least squares over colour swatches."""
    if vae not in _FITTED:
        levels = (0.0, 0.5, 1.0)
        colours = torch.tensor(list(itertools.product(levels, levels, levels)), dtype=torch.float32)
        swatches = colours.view(-1, 3, 1, 1).expand(-1, 3, SWATCH, SWATCH)
        parameter = next(vae.parameters())
        encoded = vae.encode((swatches * 2 - 1).to(parameter.device, parameter.dtype))
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        features = latents.float().mean(dim=(2, 3)).cpu() * scaling  # the pipeline's latents are scaled
        design = torch.cat([features, torch.ones(len(features), 1)], dim=1)
        _FITTED[vae] = torch.linalg.lstsq(design, colours).solution
    return _FITTED[vae]


def preview_image(latents: torch.Tensor, vae, size: int | None = None, decoder=None) -> Image.Image:
    """A picture of the batch's latents side by side, each upscaled to about `size` pixels
    (decoded by `decoder`, a tiny decoder, when given: then each is brought to about `size`)."""
    if decoder is not None:
        return _decoded_preview(latents, decoder, size)
    weights = fit_latent_to_rgb(vae)
    latents = latents.detach().float().cpu()
    rgb = torch.einsum("bchw,cd->dhbw", latents, weights[:-1]) + weights[-1].view(3, 1, 1, 1)
    channels, height, batch, width = rgb.shape
    picture = to_picture(rgb.reshape(channels, height, batch * width))  # the batch side by side
    if size:
        factor = max(1, size // height)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


def _decoded_preview(latents: torch.Tensor, decoder, size: int | None) -> Image.Image:
    rgb = tiny_decode(decoder, latents.detach()).cpu()  # [N, 3, H, W]
    batch, channels, height, width = rgb.shape
    picture = to_picture(rgb.permute(1, 2, 0, 3).reshape(channels, height, batch * width))
    if size and height > size:
        factor = size / height
        picture = picture.resize((max(1, round(picture.width * factor)), size), Image.BILINEAR)
    return picture
