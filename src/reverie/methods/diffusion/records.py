"""What each picture records of the request that made it: reverie's JSON and A1111's text in
its PNG, written as it is finished (`write_batches`). Nothing here needs torch: a request that
runs on OpenVINO alone (compiled.py) writes its pictures with it too."""

from __future__ import annotations

from ... import __version__
from ...outputs.files import Outputs
from ...outputs.metadata import a1111_parameters, reverie_metadata
from ...progress import Interrupted, Progress, ProgressEvent
from ...prompts.extra_networks import extract_pair
from ...prompts.picture import PicturePrompt
from ...result import GeneratedImage, Result
from ...samplers import get_sampler
from ..upscale.request import upscaler_name
from .request import IMAGE_MODES, GenerationRequest


def picture_settings(request: GenerationRequest, model_name: str, latent_channels: int, vae_scale: int,
                     ran_dtype: str | None = None) -> dict:
    """The settings every picture of `request` records (its metadata's `settings`): the request's
    own (its runtime as resolved: what ran), and what ran that a request does not fix (`ran_dtype`,
    the precision `dtype` auto picked: fp32, bf16 or fp16)."""
    settings = request.settings() | {"model_name": model_name, "reverie_version": __version__,
                                     "latent_channels": latent_channels, "vae_scale": vae_scale}
    if ran_dtype is not None:
        settings["ran_dtype"] = ran_dtype
    return settings


def network_fields(prompt: PicturePrompt) -> tuple[dict, dict]:
    """A1111's `Lora hashes` and `TI hashes` fields for a picture, and the same in reverie's JSON
    (each LoRA's weights and hash, each embedding's hash); empty when it used none."""
    from ...models.embeddings import embedding_names_in, list_embeddings, read_embedding

    _, _, uses = extract_pair(prompt.prompt, prompt.negative_prompt)
    fields, metadata = {}, {}
    if uses:
        from ...models.lora import find_lora, lora_info  # a .safetensors LoRA: its header alone, no torch

        infos = [lora_info(find_lora(use.name)) for use in uses]
        fields["Lora hashes"] = ", ".join(f"{use.name}: {info.hash}" for use, info in zip(uses, infos))
        metadata["loras"] = [{"name": use.name, "unet": use.unet, "text": use.text, "hash": info.hash, "base": info.base}
                             for use, info in zip(uses, infos)]
    known = list_embeddings()
    names = embedding_names_in(prompt.prompt + "\n" + prompt.negative_prompt, known) if known else []
    if names:
        embeddings = [read_embedding(known[name]) for name in names]
        fields["TI hashes"] = ", ".join(f"{e.name}: {e.hash}" for e in embeddings)
        metadata["embeddings"] = [{"name": e.name, "hash": e.hash} for e in embeddings]
    return fields, metadata


def write_picture(picture, seed: int, score, index: int, request: GenerationRequest, settings: dict, scorer,
           outputs: Outputs, prompt: PicturePrompt) -> GeneratedImage:
    networks, network_metadata = network_fields(prompt)
    metadata = reverie_metadata(settings, seed, index) | {"image_size": list(picture.size), "prompt": prompt.metadata()}
    metadata |= network_metadata
    if score is not None:
        metadata |= {"clip_score": round(score, 4), "scorer": scorer.name}
    fields = _parameter_fields(settings, seed, picture.size, request) | networks | _template_fields(prompt)
    parameters = a1111_parameters(prompt.prompt, prompt.negative_prompt, fields)
    image = GeneratedImage(picture, seed, index, metadata, parameters, score=score)
    image.path = outputs.picture(picture, seed, prompt.variant or prompt.prompt, parameters, metadata)
    return image


def _template_fields(prompt: PicturePrompt) -> dict:
    """sd-dynamic-prompts' fields: the templates, where they differ from what was encoded."""
    fields = {}
    if prompt.template != prompt.prompt:
        fields["Template"] = prompt.template
    if prompt.negative_template and prompt.negative_template != prompt.negative_prompt:
        fields["Negative Template"] = prompt.negative_template
    return fields


def _parameter_fields(settings: dict, seed: int, size: tuple[int, int], request: GenerationRequest) -> dict:
    """The `Key: value` fields of A1111's text for one picture (the CFG scale it guided with)."""
    fields = {
        "Steps": settings["steps"],
        "Sampler": get_sampler(settings["sampler"]).label,
        "CFG scale": f"{request.guidance_scale():g}",
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model": settings.get("model_name") or settings.get("model") or "",
    }
    if settings["mode"] in IMAGE_MODES:
        fields["Denoising strength"] = f"{request.effective_strength:g}"  # the mode's default where none was asked
    if settings["mode"] in ("inpaint", "outpaint"):
        fields["Mask blur"] = settings.get("mask_blur", 0)
    if settings.get("tile"):
        fields["Tiling"] = True  # as A1111 writes its tiling option
    if settings.get("refiner"):
        fields["Refiner"] = settings["refiner"]  # as A1111 records its refiner
        fields["Refiner switch at"] = f"{settings['refiner_switch']:g}"
    if settings.get("step_cache"):
        fields["Step cache"] = settings["step_cache"]
    if settings.get("decoder", "vae") != "vae":
        fields["Decoder"] = settings["decoder"]
    if settings.get("runtime") == "openvino":
        fields["Runtime"] = "openvino"  # what ran the UNet, when not torch
    if settings.get("quantize", "none") != "none":
        fields["Quantize"] = settings["quantize"]  # the UNet's convolutions and most linear layers in int8
    if settings.get("weights", "auto") != "auto":
        fields["Weights"] = settings["weights"]  # the precision the weights rested in
    if (settings.get("upscale") or 1) > 1:
        fields["Hires upscale"] = settings["upscale"]
        fields["Hires upscaler"] = upscaler_name(settings["upscale"])
    return fields


def write_batches(result: Result, batches, index: int, settings: dict, scorer, outputs: Outputs, plan,
                  progress: Progress, finish=lambda pictures: pictures) -> Result:
    """Write each batch [(picture, seed, score)] as soon as it comes, its pictures brought to
    their final size by `finish`, numbered from `index` (those before `result.request.made` an
    earlier run wrote), then the grid of all; a stop (Interrupted, Ctrl-C) keeps every picture
    written. `plan` gives each seed's own prompt (a PromptPlan)."""
    request = result.request
    try:
        for batch in batches:
            pictures = finish([picture for picture, _, _ in batch])
            for picture, (_, seed, score) in zip(pictures, batch):
                if index >= request.made:
                    result.images.append(write_picture(picture, seed, score, index, request, settings, scorer, outputs,
                                                       plan(seed)))
                    progress(ProgressEvent("image", index + 1, request.picture_count(), payload=result.images[-1]))
                index += 1
    except (Interrupted, KeyboardInterrupt):
        result.interrupted = True
    if result.images:
        first = result.images[0]
        result.grid_path = outputs.grid_of([image.image for image in result.images], request.prompt, first.parameters,
                                           first.metadata)
    return result


def scored_batches(batches, result: Result, scorer, plan, progress: Progress):
    """The batches to write, from the batches made [(picture, seed)]: with best-of-N (`rerank`
    above 1) one batch, the best-scored candidates (`result.interrupted` when a stop came
    first), else each batch as it comes; as [(picture, seed, score)], each scored against its own
    prompt (`plan(seed).prompt`) by `scorer`, the score None without one (no torch imported)."""
    request = result.request
    if request.rerank > 1:
        from ..rerank import best_candidates  # the scorer is a torch CLIP

        progress(ProgressEvent("rerank", 0, request.candidate_count(), message=(
            f"making {request.candidate_count()} candidates, keeping the best {request.picture_count()}")))
        kept, result.interrupted = best_candidates(batches, scorer, lambda seed: plan(seed).prompt,
                                                   request.picture_count(), request.candidate_count(), progress)
        return [[(candidate.picture, candidate.seed, candidate.score) for candidate in kept]]
    if scorer is None:
        return ([(picture, seed, None) for picture, seed in batch] for batch in batches)
    from ..rerank import with_scores

    return (with_scores(batch, scorer, plan) for batch in batches)
