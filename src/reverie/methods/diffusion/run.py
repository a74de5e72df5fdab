"""Latent diffusion: txt2img, img2img, variations, inpaint and outpaint on diffusers pipelines.

`run_batches` yields each finished batch as soon as it exists, so a caller can save it before
the next one starts; stopping (a flag or Ctrl-C) never loses a finished picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from ...models.components import ModelComponents
from ...progress import Interrupted, ProgressCallback, ProgressEvent, StopCheck
from ...prompts.conditioning import encode_prompt_pair
from ...request import GenerationRequest
from ...samplers import build_scheduler
from .images import composite, feathered_alpha, load_image, load_mask, outpaint_canvas, pad_to_multiple, to_rgb
from .pipelines import pipeline_for


@dataclass
class PreparedInput:
    """The picture and mask a run starts from, at a size the model accepts."""

    width: int
    height: int
    image: Image.Image | None = None  # padded/resized to width x height
    mask: Image.Image | None = None  # 255 = repaint
    crop: tuple[int, int] | None = None  # final size to cut the output back to


def prepare_input(request: GenerationRequest, components: ModelComponents) -> PreparedInput:
    """Resolve the working size and load the init image / mask the mode needs."""
    if request.mode == "txt2img":
        size = components.native_size
        return PreparedInput(request.width or size, request.height or size)
    image = to_rgb(load_image(request.init_image, "init_image"))
    if request.mode == "outpaint":
        canvas, mask, _origin = outpaint_canvas(image, *request.outpaint_extents)
        return PreparedInput(canvas.width, canvas.height, canvas, mask)
    mask = load_mask(request.mask_image, image.size) if request.mode == "inpaint" else None
    if request.width or request.height:
        width = request.width or _round8(image.width * request.height / image.height)
        height = request.height or _round8(image.height * request.width / image.width)
        image = image.resize((width, height), Image.LANCZOS)
        mask = mask.resize((width, height), Image.NEAREST) if mask else None
        return PreparedInput(width, height, image, mask)
    # Keep the user's size exactly: pad to a multiple of 8 now, cut the padding off afterwards.
    crop = image.size
    image = pad_to_multiple(image)
    if mask is not None:
        # The padding is marked "keep" so nothing is painted that will be cut off anyway.
        padded = Image.new("L", image.size, 0)
        padded.paste(mask, (0, 0))
        mask = padded
    return PreparedInput(image.width, image.height, image, mask, crop if crop != image.size else None)


def _round8(value: float) -> int:
    return max(64, int(round(value / 8)) * 8)


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Starting latents, one CPU generator per image, so a seed gives the same picture on any
    device and at any batch size; the generators go on to feed the samplers' fresh noise."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return noise, generators


def denoising_steps(steps: int, strength: float) -> int:
    """Steps to ask of an img2img pipeline so it runs at least one step (it runs steps*strength)."""
    return max(steps, math.ceil(1 / strength)) if strength > 0 else steps


def run_batches(
    request: GenerationRequest,
    components: ModelComponents,
    device: torch.device,
    dtype: torch.dtype,
    progress: ProgressCallback,
    should_stop: StopCheck,
) -> Iterator[list[tuple[Image.Image, int]]]:
    """Yield [(picture, seed), ...] for each of the request's n_iter batches."""
    request = request.with_defaults(components.extras.get("defaults"))
    prepared = prepare_input(request, components)
    seeds = request.image_seeds()
    progress(ProgressEvent("encode", message="encoding prompt"))
    cond, uncond = encode_prompt_pair(
        request.prompt, request.negative_prompt, components.tokenizer, components.text_encoder, device=device
    )
    cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
    strength = request.effective_strength
    for batch in range(request.n_iter):
        if should_stop():
            raise Interrupted()
        batch_seeds = seeds[batch * request.n_samples : (batch + 1) * request.n_samples]
        if request.mode in ("img2img", "variations") and strength == 0:
            # Nothing to denoise: the honest answer is the picture itself, untouched.
            images = [prepared.image.copy() for _ in batch_seeds]
        else:
            images = _one_batch(request, components, prepared, batch_seeds, cond, uncond, device, dtype, batch, progress, should_stop)
        if prepared.mask is not None:
            alpha = feathered_alpha(prepared.mask, request.mask_blur)
            images = [composite(prepared.image, img, alpha) for img in images]
        if prepared.crop:
            images = [img.crop((0, 0) + prepared.crop) for img in images]
        yield list(zip(images, batch_seeds))


def _one_batch(request, components, prepared, seeds, cond, uncond, device, dtype, batch, progress, should_stop):
    count = len(seeds)
    scale = components.vae_scale_factor
    latent_shape = (components.vae.config.latent_channels, prepared.height // scale, prepared.width // scale)
    noise, generators = initial_noise(seeds, latent_shape)
    scheduler = build_scheduler(request.sampler, components.scheduler_config, seeds)
    stopped = {"flag": False}

    def on_step(pipe, step, timestep, tensors):
        # The current latents ride along for live previews (see preview.py); listeners must not change them.
        progress(ProgressEvent("denoise", step + 1, pipe.num_timesteps, batch, request.n_iter, payload=tensors.get("latents")))
        if should_stop():
            stopped["flag"] = True
            pipe._interrupt = True  # diffusers then skips the remaining steps
        return tensors

    common = dict(
        prompt_embeds=cond.expand(count, -1, -1),
        negative_prompt_embeds=uncond.expand(count, -1, -1),
        guidance_scale=request.cfg_scale,
        generator=generators,
        callback_on_step_end=on_step,
        output_type="np",
    )
    strength = request.effective_strength
    if request.mode == "txt2img":
        pipe = pipeline_for(components, "txt2img", scheduler)
        out = pipe(height=prepared.height, width=prepared.width, num_inference_steps=request.steps,
                   latents=noise.to(device, dtype), **common)
    elif request.mode in ("img2img", "variations"):
        pipe = pipeline_for(components, "img2img", scheduler)
        out = pipe(image=[prepared.image] * count, strength=strength,
                   num_inference_steps=denoising_steps(request.steps, strength), **common)
    else:  # inpaint, outpaint
        pipe = pipeline_for(components, "inpaint", scheduler)
        full = strength >= 1.0
        out = pipe(image=[prepared.image] * count, mask_image=[prepared.mask] * count,
                   height=prepared.height, width=prepared.width, strength=strength,
                   num_inference_steps=request.steps if full else denoising_steps(request.steps, strength),
                   latents=noise.to(device, dtype) if full else None, **common)
    if stopped["flag"]:
        raise Interrupted()  # the batch was cut short: its half-made pictures are not results
    progress(ProgressEvent("decode", batch=batch, batches=request.n_iter))
    return [_to_pil(array) for array in out.images]


def _to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array * 255 + 0.5, 0, 255).astype(np.uint8))
