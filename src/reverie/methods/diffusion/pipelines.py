"""diffusers pipelines over one set of loaded components, and the per-request settings they run with.

Components come from the shared model cache, so nothing of one request may stay on them: a
pipeline is a light wrapper made for each request, and the memory settings (VAE slicing and
tiling, attention slicing), which diffusers keeps on the modules themselves, are put back as they
were when the request ends.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from ...models.components import ModelComponents
from ...models.seamless import circular_convolutions

_KINDS = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}


def pipeline_for(components: ModelComponents, kind: str, scheduler, unet=None):
    """A `kind` pipeline over these components, with `scheduler`; `unet`, when given, runs in
    place of the components' own (the OpenVINO runtime's stand-in, models/openvino_runtime.py).

    Prompts are encoded by reverie (weights, long prompts), so the pipelines only ever see
    ready embeddings; the safety checker is not part of reverie's pipelines.
    """
    if components.is_sdxl:
        return sdxl_pipeline_for(components, kind, scheduler, unet)
    pipe = _KINDS[kind](
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet if unet is not None else components.unet,
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
    circularly (models/seamless.py), so the picture wraps around into a seamless tile; put back
    as it was afterwards, also when the request fails. (diffusers' VAE encoder downsamplers pad
    one side with zeros themselves: an encoded input is not quite circular, the picture made
    from it is.)"""
    if not tile:
        yield
        return
    with circular_convolutions(components.unet, components.vae):
        yield


# ----------------------------------------------------------------------------- SDXL

_SDXL_KINDS = {"txt2img": "StableDiffusionXLPipeline", "img2img": "StableDiffusionXLImg2ImgPipeline",
               "inpaint": "StableDiffusionXLInpaintPipeline"}


def sdxl_pipeline_for(components: ModelComponents, kind: str, scheduler, unet=None):
    """A `kind` SDXL pipeline (base or refiner) over these components, with `scheduler`; `unet`
    as pipeline_for's.

    The refiner's time ids carry an aesthetic score in place of the target size
    (`requires_aesthetics_score`); no invisible watermark is added (reverie writes its own
    provenance). Empty negative prompts are zeroed by reverie's encoder, not here.
    """
    import diffusers

    refiner = components.family == "sdxl-refiner"
    if refiner and kind == "txt2img":
        kind = "img2img"  # never asked: the refiner only continues a picture (batches.refine)
    options = {"requires_aesthetics_score": refiner} if kind != "txt2img" else {}
    pipe = getattr(diffusers, _SDXL_KINDS[kind])(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=unet if unet is not None else components.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
        **options,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def vae_dtype_kept(components: ModelComponents):
    """Put the VAE back in its own dtype afterwards, also when a request fails midway.

    SDXL's VAE overflows in float16, so diffusers' SDXL pipelines move it to float32 for each
    encode and decode (`force_upcast` in its config) and back after; the cached VAE must not be
    left in float32 by a decode that was interrupted.
    """
    vae = components.vae
    dtype = vae.dtype
    try:
        with warnings.catch_warnings():
            # diffusers calls its own deprecated `upcast_vae` for this; the user can do nothing about it.
            warnings.filterwarnings("ignore", message=".*upcast_vae.*")
            yield
    finally:
        if vae.dtype != dtype:
            vae.to(dtype=dtype)
