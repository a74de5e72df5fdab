"""Cheap live previews of latents while a picture is still being denoised.

Decoding with the VAE at every step would cost as much as the picture itself on a CPU. Instead
each model gets a linear map from its latent channels to RGB, fitted once by encoding a few
plain-colour swatches through its own autoencoder; a preview is then one small matrix product.
A request decoding with a tiny decoder (TAESD) previews with it: a real decode, at a few
percent of the VAE's cost. The linear map's picture needs no torch (`linear_preview`: reverie-mini's
torch-free path previews with it too).
"""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

PREVIEW_EVERY = 2  # denoising steps between live previews, when the listener wants them
PREVIEW_SIDE = 256


def preview_image(latents, vae, size: int | None = None, decoder=None) -> Image.Image:
    """A picture of the batch's latents (a torch tensor) side by side, each upscaled to about
    `size` pixels (decoded by `decoder`, a tiny decoder, when given: then each is brought to
    about `size`)."""
    from ...models.latent_rgb import fit_latent_to_rgb

    if decoder is not None:
        return _decoded_preview(latents, decoder, size)
    return linear_preview(latents.detach().float().cpu().numpy(), fit_latent_to_rgb(vae).numpy(), size)


def linear_preview(latents: np.ndarray, weights: np.ndarray, size: int | None = None) -> Image.Image:
    """A picture of latents [N, C, h, w] side by side through a latent->RGB map `weights` [C+1, 3]
    (models/latent_rgb.py), each upscaled to about `size` pixels; no torch needed."""
    rgb = np.einsum("bchw,cd->hbwd", latents.astype(np.float32), weights[:-1]) + weights[-1]
    height, batch, width, _ = rgb.shape
    levels = np.round(np.clip(rgb.reshape(height, batch * width, 3) * 255.0, 0, 255)).astype(np.uint8)
    picture = Image.fromarray(levels)  # the batch side by side
    if size:
        factor = max(1, size // height)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


def _decoded_preview(latents, decoder, size: int | None) -> Image.Image:
    from ...models.tiny_decoder import tiny_decode
    from ...pixels import to_picture

    rgb = tiny_decode(decoder, latents.detach()).cpu()  # [N, 3, H, W]
    return side_by_side([to_picture(picture) for picture in rgb], size)


def side_by_side(pictures: list[Image.Image], size: int | None = None) -> Image.Image:
    """Decoded previews of a batch side by side, brought down to `size` pixels high where taller."""
    height = pictures[0].height
    picture = Image.new("RGB", (sum(p.width for p in pictures), height))
    for left, one in zip(itertools.accumulate([0] + [p.width for p in pictures]), pictures):
        picture.paste(one, (left, 0))
    if size and height > size:
        factor = size / height
        picture = picture.resize((max(1, round(picture.width * factor)), size), Image.BILINEAR)
    return picture
