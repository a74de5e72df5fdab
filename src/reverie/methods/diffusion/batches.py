"""Latent diffusion batches: txt2img, img2img, variations, inpaint and outpaint on diffusers pipelines.

`prepare_input` (inputs.py) brings the input picture and mask to the size the model works at;
`run_batches` yields each finished batch as soon as it exists, so a caller can save it before
the next one starts; stopping (a flag or Ctrl-C) never loses a finished picture; `finish` brings
a batch back to the input's size with the kept pixels exactly as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from ...models.cache import ModelCache
from ...errors import BadRequest
from ...models.components import ModelComponents
from ...models.lora import apply_loras, lora_variant
from ...models.openvino_runtime import ExportFailed
from ...models.step_cache import step_cache
from ...models.tiny_decoder import tiny_decode
from ...models.weight_storage import storage_dtype
from ...pixels import to_pictures
from ...progress import Interrupted, Progress, ProgressEvent
from ...prompts.conditioning import SDXLConditioning, encode_prompt_batch, encode_sdxl_prompt_batch
from ...prompts.picture import prompt_plan
from ...samplers import build_scheduler
from ..upscale.pictures import upscaled
from .chaos import chaos_noise
from .networks import batch_prompts
from .inputs import PreparedInput, bring_back, denoising_steps
from .pipelines import circular_padding, memory_settings, pipeline_for, vae_dtype_kept
from .preview import PREVIEW_EVERY, PREVIEW_SIDE, preview_image
from .request import GenerationRequest

log = logging.getLogger(__name__)


def finish(pictures: list[Image.Image], prepared: PreparedInput, request: GenerationRequest, models: ModelCache,
           progress: Progress) -> list[Image.Image]:
    """A batch at the input's size (inputs.bring_back), enlarged by the built-in upscaler from `models`."""
    return bring_back(pictures, prepared, request.mask_blur,
                      lambda small, factor: upscaled(small, factor, models, progress, wrap=request.tile))


def initial_noise(seeds: list[int], shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Starting latents, one CPU generator per image, so a seed gives the same picture on any
    device and at any batch size; the generators go on to feed the samplers' fresh noise."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    noise = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return noise, generators


def run_batches(
    request: GenerationRequest,
    components: ModelComponents,
    prepared: PreparedInput,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress,
    first: int = 0,
    refiner: ModelComponents | None = None,
    decoder=None,
    previewer=None,
    unet=None,
    refiner_unet=None,
) -> Iterator[list[tuple[Image.Image, int]]]:
    """Yield [(picture, seed), ...] at the working size for each of the request's batches, from
    batch number `first` on (the earlier ones were made by an earlier run). `refiner` (SDXL)
    does the last part of each picture's steps (`refine`); `decoder` (a tiny decoder, or None
    for the model's VAE) makes the pixels; `previewer` (a tiny decoder) the live previews; `unet`
    runs in place of the model's own UNet (the OpenVINO runtime's), `refiner_unet` in place of
    the refiner's.

    `request` has its sampling settings filled in (`with_defaults`). Each picture's prompt is its
    own (`picture_prompt`: the template's variant for its seed, styled); equal prompts are
    encoded once.
    """
    seeds = request.image_seeds()
    plan = prompt_plan(request)
    if plan.capped:
        progress(ProgressEvent("encode", message=(
            f"the prompt has more than {request.max_combinations} combinations: making the first "
            f"{request.max_combinations} (raise max_combinations to make more)")))
    progress(ProgressEvent("encode", message="encoding prompt"))
    encoded: dict = {}
    strength = request.effective_strength
    with memory_settings(components, bool(request.vae_tiling), request.attention_slicing), \
            circular_padding(components, request.tile), vae_dtype_kept(components):
        for batch in range(first, request.batch_count()):
            if progress.stop_requested():
                raise Interrupted()
            batch_seeds = seeds[batch * request.n_samples : (batch + 1) * request.n_samples]
            if request.mode in ("img2img", "variations") and strength == 0:
                # Nothing to denoise: the honest answer is the picture itself, untouched.
                images = [prepared.image.copy() for _ in batch_seeds]
            else:
                # LoRA tags out, embedding names in as their tokens; the LoRAs on only for this batch.
                pairs, uses = batch_prompts(components, [plan(seed) for seed in batch_seeds])
                if uses and storage_dtype(request.weights, dtype) != dtype:
                    raise BadRequest("weights", "LoRAs are not applied to weights kept in 16 bits yet; "
                                                "leave --weights out (auto) to use them")
                cache = encoded.setdefault(tuple(uses), {})
                with apply_loras(components, uses) as infos:
                    runs = unet_with_loras(unet, components, uses, infos, progress)
                    if components.is_sdxl:
                        images = denoise_sdxl_batch(request, components, prepared, batch_seeds, pairs, cache, device,
                                                    dtype, batch, progress, refiner, decoder, previewer, unet=runs,
                                                    refiner_unet=refiner_unet)
                    else:
                        cond, uncond = encode_prompt_batch(pairs, components.tokenizer, components.text_encoder,
                                                           device=device, cache=cache)
                        cond, uncond = cond.to(device, dtype), uncond.to(device, dtype)
                        images = denoise_batch(request, components, prepared, batch_seeds, cond, uncond, device, dtype,
                                               batch, progress, decoder=decoder, previewer=previewer, unet=runs)
            yield list(zip(images, batch_seeds))


def unet_with_loras(unet, components: ModelComponents, uses, infos, progress: Progress | None = None):
    """The UNet stand-in that runs a batch with the LoRAs `uses` on (inside `apply_loras`, `infos`
    its yield): for the OpenVINO runtime, the export of the UNet with them on at their weights
    (`OpenVINOUNet.for_variant`: made once per LoRA set and weights, minutes for SD, then read
    from the cache), or without LoRAs the model's own export (made now if a request naming
    LoRAs left it for later: `runtime_unet`); torch's (None) is the components' own UNet, the
    LoRAs on it. On OpenVINO the set's text encoder is exported too (`text_encoder_with_loras`)."""
    if unet is None:
        return unet

    def exporting(label: str | None) -> None:
        if progress is not None:
            with_loras = f" with {label}" if label else ""
            progress(ProgressEvent("load", message=f"exporting the UNet{with_loras} to OpenVINO (once)"))

    try:
        runs = unet.for_variant(components.unet, lora_variant(uses, infos) if uses else None, exporting)
    except ExportFailed as exc:
        what = "the UNet with these LoRAs" if uses else "this request"
        raise BadRequest("runtime", f"openvino cannot run {what}: {exc}; use --runtime torch or auto") from None
    text_encoder_with_loras(components, uses, infos, progress)
    return runs


def text_encoder_with_loras(components: ModelComponents, uses, infos, progress: Progress | None = None) -> None:
    """Export the text encoder (SDXL's two) with the LoRAs `uses` on (inside `apply_loras`), where
    their set has text-encoder layers at a weight above 0 and the model is one an SD bundle
    serves, once: with the UNet's export of the set, the bundle then runs the set without torch
    (models/sd_bundle.py, `export_lora_text_encoder`; methods/diffusion/compiled.py). A failure
    leaves the set to this pipeline, as before."""
    from ...models.openvino_bundle import bundle_made
    from ...models.sd_bundle import export_lora_text_encoder, lora_text_encoder_folder, sd_source

    variant = lora_variant(uses, infos, part="text") if uses else None
    source = sd_source(Path(components.source)) if variant and components.source else None
    if source is None:
        return
    encoders = {"text_encoder": components.text_encoder}
    if components.is_sdxl:
        encoders["text_encoder_2"] = components.text_encoder_2
    precision = "bf16" if components.text_encoder.dtype == torch.bfloat16 else "f32"
    folder = lora_text_encoder_folder(source, precision, variant)
    if bundle_made(folder):
        return
    if progress is not None:
        message = f"exporting the text encoder with {variant['label']} to OpenVINO (once)"
        progress(ProgressEvent("load", message=message))
    try:
        export_lora_text_encoder(folder, source, precision, encoders, variant)
    except Exception as exc:  # the exporter, a full disk: the set keeps running here
        log.warning("the text encoder with %s could not be exported (%s); the set runs on torch", variant["label"], exc)


def latent_shape(components: ModelComponents, width: int, height: int) -> tuple[int, int, int]:
    scale = components.vae_scale_factor
    return components.vae.config.latent_channels, height // scale, width // scale


def denoise_batch(request: GenerationRequest, components: ModelComponents, prepared: PreparedInput, seeds: list[int],
                  cond: torch.Tensor, uncond: torch.Tensor, device, dtype, batch: int, progress: Progress,
                  noise: torch.Tensor | None = None, sdxl: dict | None = None,
                  refine_with: tuple | None = None, decoder=None, previewer=None, unet=None) -> list[Image.Image]:
    """One batch of pictures at the working size, one per seed, from encoded prompts.

    Each seed's CPU generator draws its starting latents and then feeds the sampler's fresh
    noise. `noise` [N, C, h, w], when given, replaces the starting latents the seeds would draw
    (a video's walk slerps it between seeds); the generators still feed the sampler.
    `sdxl` holds an SDXL model's further pipeline arguments (pooled text, size/crop time ids);
    `refine_with` = (refiner, its conditioning, prepared, its UNet stand-in or None): the base
    stops at the switch and the refiner finishes. `decoder`: a tiny decoder to make the pixels
    (and previews) with, in place of the model's VAE; `previewer`: a tiny decoder for the
    previews (default: `decoder`; without either, the linear latent->RGB map). With
    `request.step_cache` the UNet reuses its deep features between evaluations
    (models/step_cache.py; an OpenVINO UNet its export split: openvino_step_cache.py). `unet`,
    when given, runs in place of the model's own UNet (the OpenVINO runtime's)."""
    count = len(seeds)
    drawn, generators = initial_noise(seeds, latent_shape(components, prepared.width, prepared.height))
    if noise is None:
        noise = (torch.from_numpy(chaos_noise(drawn.numpy(), seeds[0], request.chaos)) if request.chaos is not None
                 else drawn)
    scheduler = build_scheduler(request.sampler, components.scheduler_config, seeds)
    stopped = {"flag": False}
    previewer = decoder if previewer is None else previewer

    def on_step(pipe, step, timestep, tensors):
        done, total = step + 1, pipe.num_timesteps
        preview = None
        if progress.previews and (done % PREVIEW_EVERY == 0 or done == total):
            preview = preview_image(tensors["latents"], components.vae, PREVIEW_SIDE, decoder=previewer)
        progress(ProgressEvent("denoise", done, total, batch, request.batch_count(), preview=preview))
        if done == total and unet is not None:
            unet.release_memory()  # the decode comes next: OpenVINO's working memory goes first
        if progress.stop_requested():
            stopped["flag"] = True
            pipe._interrupt = True  # diffusers then skips the remaining steps
        return tensors

    common = dict(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        guidance_scale=request.guidance_scale(),
        eta=request.eta,
        generator=generators,
        callback_on_step_end=on_step,
        output_type="pt" if decoder is None else "latent",
    )
    if sdxl is not None:
        common |= sdxl
        if refine_with is not None:
            common |= {"denoising_end": switch_point(request), "output_type": "latent"}
    with step_cache(unet or components.unet, request.step_cache):
        out = _denoise(request, components, prepared, count, noise, scheduler, device, dtype, common, unet)
    if stopped["flag"]:
        raise Interrupted()  # the batch was cut short: its half-made pictures are not results
    if refine_with is not None:
        out = refine(request, *refine_with, out.images, seeds, generators, on_step, decoder)
        if stopped["flag"]:
            raise Interrupted()
    progress(ProgressEvent("decode", batch=batch, batches=request.batch_count()))
    return to_pictures(out.images if decoder is None else tiny_decode(decoder, out.images))


def _denoise(request: GenerationRequest, components: ModelComponents, prepared: PreparedInput, count: int,
             noise: torch.Tensor, scheduler, device, dtype, common: dict, unet=None):
    """The mode's pipeline run over a batch (denoise_batch's arguments)."""
    strength = request.effective_strength
    if request.mode == "txt2img":
        pipe = pipeline_for(components, "txt2img", scheduler, unet)
        out = pipe(height=prepared.height, width=prepared.width, num_inference_steps=request.steps,
                   latents=noise.to(device, dtype), **common)
    elif request.mode in ("img2img", "variations"):
        pipe = pipeline_for(components, "img2img", scheduler, unet)
        out = pipe(image=[prepared.image] * count, strength=strength,
                   num_inference_steps=denoising_steps(request.steps, strength), **common)
    else:  # inpaint, outpaint
        pipe = pipeline_for(components, "inpaint", scheduler, unet)
        full = strength >= 1.0
        out = pipe(image=[prepared.image] * count, mask_image=[prepared.mask] * count,
                   height=prepared.height, width=prepared.width, strength=strength,
                   num_inference_steps=request.steps if full else denoising_steps(request.steps, strength),
                   latents=noise.to(device, dtype) if full else None, **common)
    return out


# ----------------------------------------------------------------------------- SDXL


def sdxl_conditioning(components: ModelComponents, pairs: list[tuple[str, str]], device, dtype,
                      cache: dict) -> SDXLConditioning:
    """A batch's SDXL conditioning from the model's own encoders (the refiner has only bigG).
    Empty negative prompts are zeros for the base, as its published pipeline config asks
    (`force_zeros_for_empty_prompt`); the refiner encodes them."""
    encoders = [(components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2)]
    encoders = [pair for pair in encoders if pair[1] is not None]
    encoded = encode_sdxl_prompt_batch(pairs, encoders, device=device, cache=cache,
                                       zero_empty_negative=components.family == "sdxl")
    return encoded.to(device, dtype)


def sdxl_arguments(conditioning: SDXLConditioning, prepared: PreparedInput) -> dict:
    """An SDXL pipeline's pooled text and size/crop conditioning. The time ids say: a picture of
    this very size (original = target = the working size), not cropped (top-left 0, 0), which is
    what SDXL draws best at."""
    size = (prepared.height, prepared.width)
    return dict(pooled_prompt_embeds=conditioning.pooled, negative_pooled_prompt_embeds=conditioning.negative_pooled,
                original_size=size, target_size=size, crops_coords_top_left=(0, 0))


def switch_point(request: GenerationRequest) -> float:
    """Where the refiner takes over, as diffusers' `denoising_end`/`denoising_start` (a fraction of
    the whole noise schedule). `refiner_switch` is a fraction of the steps that are run (A1111's
    meaning), which for an image mode start at `strength`: the switch moves with it."""
    return 1.0 - request.effective_strength * (1.0 - request.refiner_switch)


def denoise_sdxl_batch(request: GenerationRequest, components: ModelComponents, prepared: PreparedInput,
                       seeds: list[int], pairs: list[tuple[str, str]], cache: dict, device, dtype, batch: int,
                       progress: Progress, refiner: ModelComponents | None, decoder=None,
                       previewer=None, unet=None, refiner_unet=None) -> list[Image.Image]:
    """One batch of an SDXL model, optionally finished by a refiner (each with its own encoders);
    `unet` and `refiner_unet` run in place of the base's and the refiner's own (as denoise_batch's)."""
    conditioning = sdxl_conditioning(components, pairs, device, dtype, cache)
    refine_with = None
    if refiner is not None:
        refined = sdxl_conditioning(refiner, pairs, device, dtype, cache.setdefault("refiner", {}))
        refine_with = (refiner, refined, prepared, refiner_unet)
    return denoise_batch(request, components, prepared, seeds, conditioning.cond, conditioning.uncond, device, dtype,
                         batch, progress, sdxl=sdxl_arguments(conditioning, prepared), refine_with=refine_with,
                         decoder=decoder, previewer=previewer, unet=unet)


def refine(request: GenerationRequest, refiner: ModelComponents, conditioning: SDXLConditioning,
           prepared: PreparedInput, unet, latents: torch.Tensor, seeds: list[int], generators, on_step, decoder=None):
    """The refiner's stage: the base's half-denoised latents, denoised from the switch to the end.

    Every mode refines through the img2img pipeline (the latents are the picture): inpaint and
    outpaint get their kept pixels put back exactly afterwards anyway (`finish`). The same
    per-picture generators go on feeding the sampler's fresh noise.
    """
    scheduler = build_scheduler(request.sampler, refiner.scheduler_config, seeds)
    pipe = pipeline_for(refiner, "img2img", scheduler, unet)  # `unet`: the refiner's OpenVINO stand-in, or None
    strength = request.effective_strength
    steps = request.steps if request.mode == "txt2img" or strength >= 1 else denoising_steps(request.steps, strength)
    with vae_dtype_kept(refiner), step_cache(unet or refiner.unet, request.step_cache):
        return pipe(image=latents.to(refiner.unet.dtype), num_inference_steps=steps, strength=max(strength, 1e-3),
                    denoising_start=switch_point(request), prompt_embeds=conditioning.cond,
                    negative_prompt_embeds=conditioning.uncond, guidance_scale=request.guidance_scale(),
                    eta=request.eta, generator=generators, callback_on_step_end=on_step,
                    output_type="pt" if decoder is None else "latent", **sdxl_arguments(conditioning, prepared))
