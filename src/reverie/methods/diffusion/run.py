"""The diffusion method: txt2img, img2img, variations, inpaint and outpaint, from request to
written pictures.

1. Fix the seed and the model; for variations, borrow the source picture's prompt.
2. Load the model through the shared cache; fill the sampling settings the request left out
   from the model's own defaults.
3. Bring the input to the size the model works at; estimate peak memory, tile the decode when it
   would not fit whole, refuse what cannot fit at all, before any work.
4. Run the batches; with `rerank` N make N times the pictures and keep the best-scored; bring
   each picture to its final size (upscaler, kept pixels) and write it as soon as it exists.
   A resumed request (`made`) skips the batches an earlier run finished and writes only the
   pictures it does not have.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch

from ...device import available_memory, check_fits, estimate_peak_bytes, pick_device, pick_dtype, release_freed_memory
from ...errors import BadCheckpoint, BadRequest, ModelNotFound
from ...models.batch_invariance import steady_rows
from ...models.cache import ModelCache
from ...models.components import ModelComponents, unet_parked
from ...models.openvino_runtime import (ExportFailed, OpenVINOUNet, export_blocked, reloadable, resolve_runtime,
                                         why_not_openvino)
from ...models.lora import forget_loras, lora_variant
from ...models.registry import load_model
from ...models.weight_storage import storage_dtype, store_weights
from ...models.tiny_decoder import check_decoder_fits, load_tiny_decoder
from ...models.tiny_decoder_files import find_tiny_decoder
from ...outputs.files import Outputs
from ...progress import Progress, ProgressEvent
from ...prompts.extra_networks import names_a_lora
from ...prompts.picture import prompt_plan
from ...result import Result
from ..rerank import scorer_from
from . import records
from .records import scored_batches, write_batches
from .networks import lora_sets
from .batches import finish, run_batches
from .inputs import PreparedInput, prepare_input
from .request import GenerationRequest, resolve

log = logging.getLogger(__name__)


def diffusion_model(models: ModelCache, reference: str, device: torch.device, dtype: torch.dtype,
                    weights: str = "auto", torch_unet: bool = True,
                    exports_made: Callable[[object, str], bool] | None = None) -> ModelComponents:
    """The loaded model `reference` names, on `device`, computing in `dtype` with its weights
    resting in `weights` (models/weight_storage.py), from the shared cache; its UNet's pictures do
    not depend on their batch-mates (`steady_rows`). Its torch UNet may have left memory while
    its OpenVINO export serves (`park_torch_unet`): it is read again first, unless `torch_unet`
    is False (a caller that resolves the runtimes next: `on_runtimes` reads it again if one runs
    on torch); such a caller's model (a diffusers folder, a .safetensors file) is loaded without
    reading its UNet at all when the UNet's export is made already (`export_serves`; or every
    export the request runs, `exports_made(unet, source)`: a LoRA set's), and starts as one let go."""
    storage = storage_dtype(weights, dtype)

    def load(leave_unet=None) -> ModelComponents:
        # straight into the resting dtype: no fp32 copy
        components = load_model(reference, dtype=storage, leave_unet=leave_unet)
        for module in components.modules:
            if not unet_parked(module):
                module.to(device)
        steady_rows(components.unet)
        for module in components.modules:
            store_weights(module, storage, dtype)
        return components

    def export_serves(unet, source: str) -> bool:
        return storage == dtype and parks(unet) and why_not_openvino(device, dtype) is None \
            and (exports_made or OpenVINOUNet.exported)(unet, source)

    key = model_key(reference, device, dtype, storage)
    components = models.get(key, load if torch_unet else lambda: load(leave_unet=export_serves))
    if torch_unet and unet_parked(components.unet):
        with models.locked():  # one reader, whichever thread asks first
            if unet_parked(components.unet):
                log.info("reading %s's torch UNet again (its OpenVINO export served without it)", reference)
                components.unet = load().unet  # the fresh text encoder and VAE are dropped at once
                forget_loras(components)  # the fresh UNet has none: each is loaded whole again
                models.put(key, components)  # counted again at its full size
    return components


def model_key(reference: str, device: torch.device, dtype: torch.dtype, storage: torch.dtype) -> tuple:
    """The shared cache's key for a loaded diffusion model."""
    return ("diffusion", reference, str(device), str(dtype)) + ((str(storage),) if storage != dtype else ())


# The torch UNet leaves memory while its export serves only when that is worth reading it again
# later: SD 1.5's is 1.6 GiB in bf16; reverie-mini's, 34 MB, stays for its tile and LoRA requests.
PARK_MIN_BYTES = 256 * 2**20


def park_torch_unet(models: ModelCache, request: GenerationRequest, components: ModelComponents,
                    device: torch.device, dtype: torch.dtype) -> None:
    """Let the torch UNet's weights leave memory while its OpenVINO export serves: OpenVINO holds
    its own copy, and the torch one (1.6 GiB for SD 1.5 in bf16) waits unused. Only for a model
    read from a file or folder, whose UNet `diffusion_model` can read again when a request needs
    it (LoRAs, tiles, `--runtime torch`), and only a UNet of PARK_MIN_BYTES or
    more. Called once no part of the job runs on torch; jobs run one at a time in a process
    (the job queue's one thread), so no other is using it."""
    if unet_parked(components.unet) or not reloadable(components.source) or not parks(components.unet):
        return
    with models.locked():
        components.unet.to("meta")
        key = model_key(request.model, device, dtype, storage_dtype(request.weights, dtype))
        if key in models:
            models.put(key, components)  # counted again, without the UNet
    release_freed_memory()


def parks(unet) -> bool:
    """Whether the UNet is large enough to leave memory while its export serves (PARK_MIN_BYTES)."""
    return unet_parameters(unet) * unet.dtype.itemsize >= PARK_MIN_BYTES


def asks_for_loras(request: GenerationRequest) -> bool:
    """Whether the request's prompts name a LoRA (A1111's `<lora:...>` / `<lyco:...>` tags)."""
    return names_a_lora(request.prompt + "\n" + request.negative_prompt)


def request_runtime(request: GenerationRequest, components: ModelComponents, prepared: PreparedInput,
                    device: torch.device, dtype: torch.dtype) -> str:
    """The runtime (torch or openvino) that runs the request's UNet (models/openvino_runtime.py).
    An export that failed earlier, or one not made yet that would not fit on the cache's disk,
    keeps `auto` on torch, and is a BadRequest for `openvino` that says why."""
    levels = len(getattr(components.unet.config, "block_out_channels", None) or [0]) - 1
    odd = any((side // components.vae_scale_factor) % 2**levels for side in (prepared.width, prepared.height))
    return resolve_runtime(request.runtime, device, dtype, tile=request.tile,
                           loras=asks_for_loras(request), odd_latents=odd,
                           cast_weights=storage_dtype(request.weights, dtype) != dtype,
                           parameters=unet_parameters(components.unet), from_file=reloadable(components.source),
                           free_bytes=available_memory(device),
                           loras_exported=lambda: lora_exports_made(request, components.unet, components.source),
                           export_blocked=lambda: export_blocked(components.unet, components.source))


def lora_exports_made(request: GenerationRequest, unet, source: str, plain: bool = False) -> bool:
    """Whether every LoRA set the request's pictures (and best-of candidates) run, at their UNet
    weights, has its OpenVINO export of the model (`unet`, read from `source`) made already
    (`unet_with_loras` reads it); with `plain`, also the model's own where a picture runs none."""
    candidates = request.model_copy(update={"n_iter": request.n_iter * request.rerank})
    variants = [lora_variant(uses) for uses in lora_sets(candidates)]
    return all(OpenVINOUNet.exported(unet, source, variant=variant) for variant in variants if variant or plain)


def needs_torch_unet(request: GenerationRequest, components: ModelComponents) -> bool:
    """Whether the resolved `request` needs the torch UNet's weights in memory: it runs on torch,
    or on OpenVINO with LoRAs whose export (or the model's own, for pictures without) is still
    to be made from it. Exports made already run without it: LCM-LoRA after its first request."""
    if request.runtime != "openvino":
        return True
    return asks_for_loras(request) and not lora_exports_made(request, components.unet, components.source, plain=True)


def unet_parameters(unet) -> int:
    """How many parameters the UNet has (0 for one that is not a torch module)."""
    return sum(p.numel() for p in unet.parameters()) if isinstance(unet, torch.nn.Module) else 0


def runtime_unet(models: ModelCache, request: GenerationRequest, components: ModelComponents, device: torch.device,
                 dtype: torch.dtype):
    """The UNet stand-in the request's runtime runs (None: the components' own torch UNet). The
    OpenVINO export is kept in the shared cache beside the model, and on disk. A request naming
    LoRAs gets it only named: its batches run exports of the UNet with their LoRAs on
    (`unet_with_loras`), and the model's own is made only when one of them runs none."""
    if request.runtime != "openvino":
        return None
    key = ("openvino-unet", request.model, str(device), str(components.unet.dtype))
    runner = models.get(key, lambda: OpenVINOUNet.named(components.unet, components.source))
    if not runner.is_ready and not asks_for_loras(request):
        unet = components.unet
        if unet_parked(unet) and not OpenVINOUNet.exported(unet, components.source):  # the export was removed
            unet = diffusion_model(models, request.model, device, dtype, request.weights).unet
        runner.ready(unet)
    return runner


def on_runtimes(models: ModelCache, requests: list[GenerationRequest], components: ModelComponents,
                prepared: PreparedInput, device: torch.device, dtype: torch.dtype
                ) -> tuple[list[GenerationRequest], ModelComponents, dict]:
    """Requests for one model with their runtimes resolved, each as alone (`request_runtime`: a
    LoRA's prompt runs on torch under auto until its LoRA sets' exports are made, the others on
    OpenVINO where auto picks it); their components
    (the torch UNet read again when any runs on torch); and each runtime's UNet stand-in
    ({"openvino": ...}; torch's is None: the components' own), the torch UNet let go while no
    request needs it. An export that fails (`ExportFailed`) is recorded, and the runtimes are
    resolved again: auto then runs torch, and openvino is refused with the reason.
    `components` may come with `torch_unet=False`."""
    for attempt in range(2):
        resolved = [request.model_copy(update={"runtime": request_runtime(request, components, prepared, device, dtype)})
                    for request in requests]
        try:
            unets = {request.runtime: runtime_unet(models, request, components, device, dtype) for request in resolved}
            break
        except ExportFailed:
            if attempt:
                raise
    first = resolved[0]
    # Its weights are read again if an OpenVINO request let them go; LoRAs on OpenVINO need them
    # too while their export is to be made from the torch UNet with the LoRAs on (`unet_with_loras`).
    if any(needs_torch_unet(request, components) for request in resolved):
        components = diffusion_model(models, first.model, device, dtype, first.weights)
    else:
        park_torch_unet(models, first, components, device, dtype)
    return resolved, components, unets


def on_runtime(models: ModelCache, request: GenerationRequest, components: ModelComponents, prepared: PreparedInput,
               device: torch.device, dtype: torch.dtype) -> tuple[GenerationRequest, ModelComponents, object]:
    """`on_runtimes` for one request: the request, its components and its runtime's UNet
    stand-in (None: the torch UNet)."""
    (request,), components, unets = on_runtimes(models, [request], components, prepared, device, dtype)
    return request, components, unets[request.runtime]


def run(request: GenerationRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    """Make the pictures `request` asks for, writing each to `outputs` as soon as it is finished.

    Stopping (`progress.stop_requested()` or Ctrl-C) ends the run early: the result then holds
    every picture finished so far and `interrupted` is True.
    """
    request = resolve(request)
    if request.quantize != "none":  # the bundle's UNet only (compiled.py), which turned this request down
        from .compiled import int8_refused

        raise BadRequest("quantize", int8_refused(request))
    device = pick_device(request.device)
    dtype = pick_dtype(request.dtype, device)
    started = time.perf_counter()
    progress(ProgressEvent("load", message=f"loading {request.model}"))
    # A request whose UNet runs on torch in any case (`why_not_openvino`) has it read at once.
    on_torch = request.runtime == "torch" or request.tile
    # LoRAs whose exports are made run without it too (`needs_torch_unet`).
    exports = (lambda unet, source: lora_exports_made(request, unet, source, plain=True)) if asks_for_loras(request) else None
    components = diffusion_model(models, request.model, device, dtype, request.weights, torch_unet=on_torch,
                                 exports_made=exports)
    request = request.with_defaults(components.sampling)
    prepared = prepare_input(request, components)
    asked = request  # its runtime as asked (auto): the refiner's is resolved on its own
    request, components, unet = on_runtime(models, request, components, prepared, device, dtype)
    refiner, refiner_unet = refiner_model(models, asked, components, prepared, device, dtype)
    decoder = tiny_decoder(models, request, components, device, dtype)
    previewer = decoder or (preview_decoder(models, components, device, dtype) if progress.previews else None)
    request = fit_memory(request, components, prepared, device, dtype)
    scorer = scorer_from(models, request.scorer) if request.score or request.rerank > 1 else None
    loaded = time.perf_counter()

    plan = prompt_plan(request)  # each picture's own prompt (template variant, styles)
    candidates = request.model_copy(update={"n_iter": request.n_iter * request.rerank})
    skipped = request.batches_done()  # resuming: what an earlier run finished
    batches = run_batches(candidates, components, prepared, device, dtype, progress, first=skipped, refiner=refiner,
                          decoder=decoder, previewer=previewer, unet=unet, refiner_unet=refiner_unet)
    if request.keep_only is not None:
        batches = ([batch[request.keep_only]] for batch in batches)
    result = Result(request=request)
    batches = scored_batches(batches, result, scorer, plan, progress)
    settings = picture_settings(request, components, dtype)
    write_batches(result, batches, skipped * request.n_samples, settings, scorer, outputs, plan, progress,
                  lambda pictures: finish(pictures, prepared, request, models, progress))
    result.timings = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
    return result


def picture_settings(request: GenerationRequest, components: ModelComponents, dtype: torch.dtype | None = None) -> dict:
    """`records.picture_settings` for a model loaded on torch: its latent channels and VAE scale,
    and the precision `dtype` auto picked."""
    ran = None if dtype is None else {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    return records.picture_settings(request, components.name, components.vae.config.latent_channels,
                                    components.vae_scale_factor, ran)


def fit_memory(request: GenerationRequest, components: ModelComponents, prepared: PreparedInput,
                device: torch.device, dtype: torch.dtype) -> GenerationRequest:
    """Tile the decode where a whole one would not fit; refuse what cannot fit at all. Sized from
    the picture the model will really work on (the input's, for the image modes)."""
    def estimate(tiled: bool) -> int:
        return estimate_peak_bytes(
            width=prepared.width, height=prepared.height, batch=request.n_samples,
            latent_channels=components.vae.config.latent_channels, vae_scale=components.vae_scale_factor,
            dtype=dtype, vae_tiling=tiled, **sdxl_memory(components, dtype),
        )

    tiling = request.vae_tiling
    if tiling is None:
        # Tile the decode only when it would not fit whole: tiling leaves faint seams.
        tiling = estimate(False) > available_memory(device) * 0.8
    check_fits(estimate(tiling), device)
    updates = {"vae_tiling": tiling, "upscale": prepared.factor}
    if request.mode == "txt2img":
        updates |= {"width": prepared.width, "height": prepared.height}
    return request.model_copy(update=updates)


def refiner_model(models: ModelCache, request: GenerationRequest, components: ModelComponents,
                  prepared: PreparedInput, device: torch.device,
                  dtype: torch.dtype) -> tuple[ModelComponents | None, object]:
    """(the refiner the request names, loaded through the cache, its UNet's runtime stand-in or
    None); (None, None) when it names none. Only an SDXL model continues an SDXL base's picture.
    Its UNet's runtime is resolved from the request's as asked (`on_runtime`: auto takes
    OpenVINO for it by the same rules as for the base), and is left unread when its export is made."""
    if not request.refiner:
        return None, None
    if not components.is_sdxl:
        raise BadRequest("refiner", f"a refiner finishes an SDXL model's pictures; {request.model} is "
                                    f"{components.family}: leave the refiner out or use an SDXL model")
    refiner = diffusion_model(models, request.refiner, device, dtype, request.weights, torch_unet=False)
    if not refiner.is_sdxl:
        raise BadRequest("refiner", f"{request.refiner} is a {refiner.family} model, not an SDXL refiner "
                                    "(or SDXL base); name an SDXL model")
    _, refiner, unet = on_runtime(models, request.model_copy(update={"model": request.refiner}), refiner, prepared,
                                  device, dtype)
    return refiner, unet


def tiny_decoder(models: ModelCache, request: GenerationRequest, components: ModelComponents,
                 device: torch.device, dtype: torch.dtype):
    """The tiny decoder the request names (models/tiny_decoder.py), loaded through the cache, on
    `device` in `dtype`; None for the model's own VAE."""
    if request.decoder == "vae":
        return None
    return _fitting_tiny_decoder(models, request.decoder, components, device, dtype, request.model)


def preview_decoder(models: ModelCache, components: ModelComponents, device: torch.device, dtype: torch.dtype):
    """The models folder's tiny decoder for this model's live previews, when there is one that
    fits (previews only: the pictures stay the VAE's); None otherwise, also when its files are
    broken (a preview is not worth failing a request the VAE can make)."""
    try:
        return _fitting_tiny_decoder(models, "tiny", components, device, dtype, components.name)
    except (ModelNotFound, BadCheckpoint, BadRequest):
        return None


def _fitting_tiny_decoder(models: ModelCache, name: str, components: ModelComponents, device: torch.device,
                          dtype: torch.dtype, model_name: str):
    """The tiny decoder `name` finds for the model's family, from the cache, checked to fit it."""
    path = find_tiny_decoder(name, components.family)
    decoder = models.get(("tiny-decoder", str(path.resolve()), str(device), str(dtype)),
                         lambda: load_tiny_decoder(path, dtype).to(device))
    check_decoder_fits(decoder, components.vae.config.latent_channels, components.vae_scale_factor, model_name)
    return decoder


def sdxl_memory(components: ModelComponents, dtype: torch.dtype) -> dict:
    """The memory estimate's corrections for SDXL: its UNet carries more (and deeper) activations
    per latent pixel than SD's, and its VAE runs in float32 even when the rest is float16
    (diffusers upcasts it: it overflows in float16)."""
    if not components.is_sdxl:
        return {}
    upcast = dtype == torch.float16 and getattr(components.vae.config, "force_upcast", False)
    return {"unet_scale": SDXL_UNET_SCALE, "vae_dtype": torch.float32 if upcast else dtype}


# SDXL's UNet holds about twice SD's activations per latent pixel (wider middle levels, up to
# ten transformer layers a block); a deliberately generous factor, as the rest of the estimate.
SDXL_UNET_SCALE = 2.0
