"""diffusers pipelines over one set of loaded components (built once, sharing the modules)."""

from __future__ import annotations

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
    """The `kind` pipeline for these components, with `scheduler` set for this run.

    Prompts are encoded by reverie (weights, long prompts), so the pipelines only ever see
    ready embeddings; the safety checker is not part of reverie's pipelines.
    """
    cache = components.extras.setdefault("pipelines", {})
    if kind not in cache:
        cache[kind] = _KINDS[kind](
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=components.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        cache[kind].set_progress_bar_config(disable=True)
    pipe = cache[kind]
    pipe.scheduler = scheduler
    if components.extras.get("attention_slicing"):
        pipe.enable_attention_slicing()
    else:
        pipe.disable_attention_slicing()
    return pipe
