"""diffusers pipelines over one set of loaded components, and the per-request settings they run with.

Components come from the shared model cache, so nothing of one request may stay on them: a
pipeline is a light wrapper made for each request, and the memory settings (VAE slicing and
tiling, attention slicing), which diffusers keeps on the modules themselves, are put back as they
were when the request ends.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from ...models.components import ModelComponents

_KINDS = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}


def pipeline_for(components: ModelComponents, kind: str, scheduler):
    """A `kind` pipeline over these components, with `scheduler`.

    Prompts are encoded by reverie (weights, long prompts), so the pipelines only ever see
    ready embeddings; the safety checker is not part of reverie's pipelines.
    """
    pipe = _KINDS[kind](
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def memory_settings(components: ModelComponents, vae_tiling: bool, attention_slicing: bool):
    """Run with these memory settings, then put the modules back as they were.

    The VAE always decodes one picture at a time (same pixels, a fraction of the memory).
    """
    vae, unet = components.vae, components.unet
    saved = (vae.use_slicing, vae.use_tiling, unet.attn_processors if attention_slicing else None)
    vae.enable_slicing()
    vae.enable_tiling() if vae_tiling else vae.disable_tiling()
    if attention_slicing:
        unet.set_attention_slice("auto")
    try:
        yield
    finally:
        vae.use_slicing, vae.use_tiling = saved[0], saved[1]
        if saved[2] is not None:
            unet.set_attn_processor(saved[2])


@contextmanager
def circular_padding(components: ModelComponents, tile: bool):
    """With `tile`, run with every Conv2d of the UNet and the VAE (decoder and encoder) padding
    circularly, so the picture wraps around into a seamless tile; put back as it was afterwards,
    also when the request fails. (diffusers' VAE encoder downsamplers pad one side with zeros
    themselves: an encoded input is not quite circular, the picture made from it is.)"""
    if not tile:
        yield
        return
    convs = [m for module in (components.unet, components.vae) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved):
            conv.padding_mode = mode
