"""Every diffusion mode on OpenVINO alone, without torch or diffusers: reverie-mini and Stable
Diffusion (issue 22).

A cold `reverie generate "red apple" -n 4` spent 5.8 of its 8 s importing torch and diffusers'
model classes, for four 128 px pictures that take a second to make; an SD 1.5 picture at 512 px
peaked at 3.71 GiB, 0.8 of it torch's and diffusers' imports. `serves` says, without importing
either, whether a request is one this path runs: txt2img, img2img, variations, inpaint or
outpaint on reverie-mini or on a Stable Diffusion model a bundle serves (models/sd_bundle.py: an
SD pipeline folder, LCM-distilled ones included, an SD 1.x or 2.x .safetensors file, SDXL base's
folder or .safetensors file, inpainting models of each), on the CPU
under runtime `auto` or `openvino`, with a sampler numpy_sampler.py ports (DPM++ 2M with or
without Karras sigmas, DPM++ 2M SDE Karras, DPM++ 2S Karras, Euler with or without, Euler a,
Heun, DPM2, DPM2 a, LMS with or without, DDIM, DDPM, PLMS, LCM, UniPC, DEIS, DPM++ SDE Karras:
all of reverie's), at most 512 px a side for mini, 768 for SD and 1536 for SDXL (multiples of
64; a batch with more pixels than one UNet evaluation takes here, four 512 px pictures or one
1024 px SDXL picture, runs in groups that fit); for an image mode
that is the size the input picture is worked at (mini works on a larger one at half its size and
enlarges the result back).
A prompt with weights, a negative, templates, styles and textual-inversion embeddings (SDXL's
pairs too), and one set of LoRAs once run.py has made its exports of the UNet and the text
encoder (SDXL's two) with them on (`_lora_variant`); Midjourney's chaos (chaos.py, as the torch
path draws it); prompt expansion (the prompt plan's, torch-free); step caching (the UNet split
where it keeps its deep features: models/openvino_step_cache.py); seamless tiles (the UNet,
decoder and encoder exported again with circular padding, once, and run in their parts' places:
openvino_bundle.make_tile_parts; mini's upscale given a margin of the tile wrapped around it, as
run.py's), not with LoRAs or int8; `--upscale` (mini's x2 by its bundle's upscaler up to 192
px, any other by the built-in upscaler on torch: `_bundle_upscales`); not a refiner, which only
the torch pipeline has. A tiny decoder (`decoder tiny`: TAESD in
the models folder, or a path to one) makes the pictures from its own bundle
(models/tiny_decoder_bundle.py) and draws the live previews, as does the models folder's for a
request decoded by the VAE, where it fits the model (else the VAE's linear latent->RGB map
draws them, as on the torch pipeline); best-of-N and scores import torch for their CLIP, and
an upscale the bundle has no network for imports it for the upscaler; the pictures still come
from here.
`run` then makes its pictures from the model's bundle (models/openvino_bundle.py: its text
encoder, UNet, VAE decoder and encoder, and mini's x2 upscaler, exported once, on the first such
request: the one time torch is imported) the way run.py's pipeline does, step for step: the text
encoder's token states (prompts/tokens.py frames them; SDXL's two encoders' side by side, with
bigG's pooled text and the size/crop ids beside them), each seed's starting noise as torch's
CPU generator draws it (torch_noise.py) or, for an image mode, the input picture's latents
noised to where its strength enters the schedule (`Start`), classifier-free guidance over the
CFG batch (a UNet distilled with guidance, LCM's, is given the scale's embedding instead, one
pass a step, as diffusers does), the sampler (the stochastic ones' fresh noise drawn from the
same generators, after the starting draws, as diffusers' pipelines hand them to the
scheduler; DPM++ SDE Karras's from each seed's Brownian tree, as diffusers' from torchsde's;
inpaint and outpaint: the kept area put back after each step, `Kept`), the decode,
mini's upscale, the input's kept pixels put back (inputs.bring_back, as run.py).
Between the parts the values stay in fp32 (the torch pipeline holds its latents in the request's
dtype: rounding them to bf16 here too brought the pictures no closer), so the pictures are the
torch path's up to the runtimes' kernels and that rounding: the same pictures to the eye
(tests/test_mini_compiled.py, tests/test_sd_compiled.py).
Anything else runs on run.py, as before.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
from PIL import Image

from ...errors import BadCheckpoint, BadRequest, ImageInputError, ModelNotFound
from ...host import is_x86, this_cpu_native_bf16
from ...models.cache import ModelCache
from ...models.components import LCM_DEFAULTS, SamplingDefaults
from ...models.mini import DEFAULT_UPSCALE, MINI_DIR, MINI_NAME, SAMPLING_DEFAULTS, mini_installed
from ...models.embeddings import written_as_tokens
from ...models import int8_unet
from ...models import openvino_step_cache
from ...models.mini_bundle import bundle_folder, make_bundle, make_tile_bundle
from ...models.openvino_bundle import (TILE_PARTS, UNET_IR_NAME, OpenVINOBundle, bundle_facts, bundle_made,
                                       fingerprint_of, openvino_cache_dir, part_ir, precision_of, tile_folder,
                                       unet_export_made)
from ...models.registry import find_path
from ...models.sd_bundle import (SDSource, lora_text_encoder_folder, make_sd_bundle, make_sd_tile_bundle,
                                 sd_bundle_folder, sd_source)
from ...models.seamless import enlarged_seamlessly
from ...outputs.files import Outputs, one_process_at_a_time
from ...progress import Interrupted, Progress, ProgressEvent
from ...prompts.extra_networks import extract_pair
from ...prompts.picture import prompt_plan
from ...prompts.tokens import TokenChunk, chunk_tokens, frame_rows, framing
from ...result import Result
from ...torch_noise import TorchCPUGenerator
from .chaos import chaos_noise
from .inputs import PreparedInput, bring_back, denoising_steps, prepare_input
from .numpy_sampler import make_sampler
from .preview import PREVIEW_EVERY, PREVIEW_SIDE, linear_preview, side_by_side
from .records import picture_settings, scored_batches, write_batches
from .request import GENERATION_DEFAULTS, GenerationRequest

log = logging.getLogger(__name__)

MAX_SIDE = 512  # mini's working pixels a side: larger pictures go to run.py (its decode and memory checks)
UPSCALE_MAX_SIDE = 192  # the upscaler's whole-picture pass (models/upscaler.py tiles larger ones)
SD_MAX_SIDE = 768
SDXL_MAX_SIDE = 1536  # SDXL draws 1024 px, and its other trained sizes up to 1536 x 640
SDXL_MAX_BATCH_PIXELS = 1024 * 1024  # its activations are about twice SD's a pixel
SD_SIZE_MULTIPLE = 64  # the UNet's export traces diffusers' "upsample to the skip's size" branch as not taken
SD_MIN_PARAMETERS = 10_000_000  # smaller (toy) UNets stay on torch, as runtime auto keeps them (openvino_runtime)
# The most pixels an SD UNet evaluation takes here (its activations): a batch with more runs in groups that fit
SD_MAX_BATCH_PIXELS = 4 * 512 * 512
SERVED_MODES = ("txt2img", "img2img", "variations", "inpaint", "outpaint")
MASKED_MODES = ("inpaint", "outpaint")


@dataclass(frozen=True)
class ModelFacts:
    """What a model's configs say that a request's size, sampler and records need."""

    name: str  # as pictures record it
    native_size: int  # pixels a side it draws at by default
    size_multiple: int  # its sides are multiples of this here
    latent_channels: int
    vae_scale: int
    scheduler_config: dict
    sampling: SamplingDefaults  # what a request leaves out
    max_side: int  # pixels a side this path draws at most (larger: run.py)
    default_upscale: int  # the upscale factor a request leaves out asks for
    text_widths: tuple[int, ...]  # each text encoder's token width (an embedding's vectors must be as wide)
    inpainting: bool = False  # a 9-channel UNet: it serves inpaint and outpaint only
    guidance_embedding: int | None = None  # a guidance-distilled UNet's (LCM's): the scale goes in, no CFG pass
    unet_key: dict | None = None  # what names its UNet's exports (an SD bundle's, once made): LoRA sets' too
    sdxl: bool = False  # SDXL base: two text encoders, pooled text and size/crop ids (sd_bundle.SDSource.sdxl)
    max_batch_pixels: int | None = None  # the most pixels one UNet evaluation takes (None: as many as asked)

    @property
    def tiny_family(self) -> str:
        """The family whose tiny decoder fits its latents (TAESD's or TAESDXL's)."""
        return "sdxl" if self.sdxl else "sd1"


@cache
def mini_facts(folder: Path = MINI_DIR) -> ModelFacts:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return ModelFacts(MINI_NAME, int(unet["sample_size"]) * scale, scale * 2 ** (len(unet["block_out_channels"]) - 1),
                      int(vae["latent_channels"]), scale,
                      json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), SAMPLING_DEFAULTS,
                      MAX_SIDE, DEFAULT_UPSCALE, (_minilm_width(),))


def _minilm_width() -> int:
    from ...models.minilm import model_path

    return int(json.loads((Path(model_path()) / "config.json").read_text())["hidden_size"])


def sd_facts(source: SDSource, folder: Path | None = None) -> ModelFacts:
    """An SD model's facts: from its bundle's marker once made (`folder`), else from its files
    (a folder's scheduler config, the shipped one single_file.py loads a file with)."""
    done = bundle_facts(folder) if folder is not None else {}
    if done:
        config, name, latent_channels, vae_scale = (done["scheduler_config"], done["name"], done["latent_channels"],
                                                    done["vae_scale"])
    else:
        config = source.scheduler_config()
        name, latent_channels, vae_scale = (source.path.name if source.path.is_dir() else source.path.stem), 4, 8
    sampling = LCM_DEFAULTS if source.guidance_embedding else GENERATION_DEFAULTS  # as run.py: the folder's loader
    made = (done.get("text_width"), done.get("text_width_2"))  # the bundle's encoders, once made
    text_widths = tuple(made[n] or width for n, width in enumerate(source.text_widths))
    return ModelFacts(name, done.get("native_size", source.native_size), SD_SIZE_MULTIPLE, latent_channels, vae_scale,
                      config, sampling, SDXL_MAX_SIDE if source.sdxl else SD_MAX_SIDE, 1, text_widths,
                      source.inpainting, source.guidance_embedding, done.get("unet_key"), source.sdxl,
                      SDXL_MAX_BATCH_PIXELS if source.sdxl else SD_MAX_BATCH_PIXELS)


def served_model(request: GenerationRequest) -> tuple[SDSource | None, ModelFacts] | None:
    """(its SD source, None for reverie-mini; its facts) for a model this path runs, else None."""
    if request.model == MINI_NAME:
        return (None, mini_facts()) if mini_installed() else None
    source = sd_source(find_path(request.model)) if request.model else None
    if source is None or source.unet_parameters < SD_MIN_PARAMETERS:
        return None
    dtype = ran_dtype(request)
    return source, sd_facts(source, sd_bundle_folder(source, precision_of(dtype)) if dtype else None)


def ran_dtype(request: GenerationRequest) -> str | None:
    """The precision the request runs in on this CPU (fp32 or bf16), None where this path cannot
    run it: `auto` is bf16 where the CPU computes it natively, as device.pick_dtype says."""
    if request.dtype == "auto":
        return "bf16" if this_cpu_native_bf16() else "fp32"
    return request.dtype if request.dtype in ("fp32", "bf16") else None


def _accelerator_visible() -> bool:
    """Whether torch might find a GPU for `device auto` (an NVIDIA or AMD driver's device, a Mac):
    such a request is run.py's, which asks torch."""
    return sys.platform == "darwin" or any(Path(node).exists() for node in ("/dev/nvidiactl", "/dev/kfd"))


@dataclass(frozen=True)
class Served:
    """What `served` found out about a request this path runs, which `run` starts from."""

    source: SDSource | None  # the SD model's files; None for reverie-mini
    facts: ModelFacts
    prepared: PreparedInput  # the working size; an image mode's input picture (and mask) loaded
    loras: dict | None = None  # the request's LoRA set (`_lora_variant`): its exports run in the parts' places


def serves(request: GenerationRequest) -> bool:
    """Whether this path runs `request` (resolved: its model and seed fixed) — see the module
    docstring; decided without importing torch."""
    return served(request) is not None


def served(request: GenerationRequest) -> Served | None:
    """`serves`, answering with what it found (for `run`), None where run.py runs the request."""
    if request.mode not in SERVED_MODES:
        return None
    if request.runtime == "torch" or importlib.util.find_spec("openvino") is None:
        return None
    if request.device not in ("auto", "cpu") or (request.device == "auto" and _accelerator_visible()):
        return None
    dtype = ran_dtype(request)
    if dtype is None or (dtype == "bf16" and not is_x86()) or request.weights not in ("auto", dtype):
        return None
    model = served_model(request)
    if model is None:
        return None
    source, facts = model
    if facts.inpainting and request.mode not in MASKED_MODES:  # run.py's pipelines say what such a model does
        return None
    int8 = request.quantize == "int8"
    if int8 and (not int8_unet.available() or facts.sdxl or request.tile):  # run.py refuses it, naming what to change
        return None
    if _bundle_key(source, precision_of(dtype), int8, tile=request.tile) in _failed:  # failed earlier in this process
        return None
    if request.decoder != "vae" and _tiny_decoder_path(request.decoder, facts.tiny_family) is None:  # run.py says where
        return None
    if request.refiner or request.vae_tiling or request.attention_slicing:
        return None
    if request.mode in MASKED_MODES and request.effective_strength == 0:  # diffusers refuses: run.py says so
        return None
    try:
        prepared = prepare_input(request, facts)
    except (ImageInputError, BadRequest):  # run.py says what is wrong with the picture, the mask or the canvas
        return None
    width, height = prepared.width, prepared.height
    if prepared.crop:  # an input padded to a multiple of 8: run.py cuts the padding off again
        return None
    if width % facts.size_multiple or height % facts.size_multiple or max(width, height) > facts.max_side:
        return None
    if source is not None and width * height > facts.max_batch_pixels:
        return None
    steps = sampler_steps(request.mode, request.steps or facts.sampling.steps, request.effective_strength)
    if not _sampler_runs(request.sampler or facts.sampling.sampler, facts.scheduler_config, steps):
        return None
    if _embeddings_unserved(request, facts):
        return None
    named, loras = _lora_variant(request, source)
    if named and (loras is None or int8 or request.tile):
        return None  # run.py says why the LoRAs cannot run here (their exports do not pad circularly)
    # A bundle not made yet is tried; else run.py makes the set's exports (--runtime openvino) or runs it on torch.
    if loras and facts.unet_key is not None and _lora_parts(source, facts, precision_of(dtype), loras) is None:
        return None
    return Served(source, facts, prepared, loras)


def int8_refused(request: GenerationRequest) -> str:
    """Why `quantize int8` cannot run `request` (one `served` turned down), naming what to change."""
    if not int8_unet.available():
        return "int8 needs NNCF: pip install -r requirements-speed.txt, or leave quantize out"
    model, dtype = served_model(request), ran_dtype(request)
    failed = _failed.get(_bundle_key(model[0], precision_of(dtype), int8=True)) if model and dtype else None
    if failed:
        return f"the model's UNet could not be quantized to int8 in this process ({failed}); leave quantize out"
    return ("int8 runs where reverie runs the model on OpenVINO without torch: reverie-mini or an SD 1.x/2.x "
            "(not SDXL) "
            ".safetensors file or folder, on the CPU in fp32 or bf16, runtime auto or openvino, txt2img or an image "
            "mode at sides that are multiples of 64 up to 768 px (SD), "
            "without LoRAs, seamless tiles or a refiner; change those or leave "
            "quantize out")


def _sampler_runs(name: str, scheduler_config: dict, steps: int) -> bool:
    """Whether numpy_sampler.py runs sampler `name` for this schedule and step count (a few
    schedules repeat a timestep at hundreds of steps, which diffusers cannot run either: run.py
    then answers as before, an unknown sampler's name too)."""
    try:
        make_sampler(name, scheduler_config, steps)
    except (BadRequest, ValueError):
        return False
    return True


def sampler_steps(mode: str, steps: int, strength: float) -> int:
    """The step count the sampler is made for: an image mode's schedule is longer where its
    strength would leave no step (as the torch pipeline asks of diffusers: denoising_steps);
    txt2img's, and inpaint's at strength 1, are the steps asked."""
    whole = mode == "txt2img" or (mode in MASKED_MODES and strength >= 1.0)
    return steps if whole else denoising_steps(steps, strength)


def _tiny_decoder_path(reference: str, family: str) -> Path | None:
    """The tiny decoder `reference` names for `family`'s latents ("sd1": reverie-mini's and SD
    1.x/2.x's, "tiny" the models folder's taesd/; "sdxl": its taesdxl/), None where there is none."""
    from ...models.tiny_decoder_files import find_tiny_decoder

    try:
        return find_tiny_decoder(reference, family)
    except ModelNotFound:
        return None


def tiny_decoders(models: ModelCache, request: GenerationRequest, facts: ModelFacts, precision: str,
                  previews: bool) -> tuple[OpenVINOBundle | None, OpenVINOBundle | None]:
    """(the tiny decoder's bundle making the pictures, that drawing the previews), None for the
    VAE's decode and its linear map. The request's own (`decoder` other than vae) does both, and
    is refused where it does not fit the model (as run.py refuses it); the models folder's draws
    the previews of a request wanting them where it fits, its files are readable and its export
    can be made, the linear map otherwise (a preview is not worth failing a request)."""
    from ...models.tiny_decoder_bundle import fits, tiny_bundle
    from ...models.tiny_decoder_files import misfit_message

    def bundle_of(path: Path) -> OpenVINOBundle:
        return models.get(("tiny-decoder-bundle", str(path.resolve()), precision), lambda: tiny_bundle(path, precision))

    if request.decoder != "vae":
        decoder = bundle_of(_tiny_decoder_path(request.decoder, facts.tiny_family))
        if not fits(decoder, facts.latent_channels, facts.vae_scale):
            raise BadRequest("decoder", misfit_message(decoder.facts["latent_channels"], decoder.facts["scale"],
                                                       request.model, facts.latent_channels, facts.vae_scale))
        return decoder, decoder
    path = _tiny_decoder_path("tiny", facts.tiny_family) if previews else None
    if path is None:
        return None, None
    try:
        decoder = bundle_of(path)
    except Exception as error:  # damaged files, an export that fails: the previews fall back to the linear map
        log.warning("the tiny decoder at %s cannot draw previews (%s); the linear map draws them", path, error)
        return None, None
    return None, (decoder if fits(decoder, facts.latent_channels, facts.vae_scale) else None)


def _lora_variant(request: GenerationRequest, source: SDSource | None) -> tuple[bool, dict | None]:
    """(whether the request's prompts name LoRAs, the variants of the model's UNet and text
    encoder they make where this path runs them: {"unet": ..., "text": ...}, each
    `lora.lora_variant`'s, which names the export run.py makes of that part with them on, or
    None where the set leaves the part as it is). It runs one set of LoRAs for the whole request
    (best-of's candidates too), from .safetensors files; LoRAs that change nothing stay run.py's."""
    from ...models.lora import find_lora, lora_info, lora_variant
    from .networks import lora_sets

    sets = lora_sets(request.model_copy(update={"n_iter": request.n_iter * request.rerank}))
    if sets == {()}:
        return False, None
    if source is None or len(sets) != 1:
        return True, None
    (uses,) = sets
    try:
        infos = [lora_info(find_lora(use.name)) for use in uses]
    except (ModelNotFound, BadCheckpoint, OSError):
        return True, None
    if any(info.path.suffix.lower() != ".safetensors" for info in infos):
        return True, None
    variants = {"unet": lora_variant(uses, infos), "text": lora_variant(uses, infos, part="text")}
    return True, variants if any(variants.values()) else None


def _lora_parts(source: SDSource, facts: ModelFacts, precision: str, loras: dict) -> dict[str, Path] | None:
    """The IRs that run in the bundle's parts' places for the LoRA set `loras` (`_lora_variant`):
    the export run.py made of the UNet with them on (its first request for them with runtime
    openvino: OpenVINOUNet.for_variant), named by what the model's bundle keeps (`unet_key`), and
    of the text encoder (SDXL's two: batches.text_encoder_with_loras), named by the bundle; None
    where one is not made, or the bundle is not made yet."""
    parts = {}
    if loras["unet"] is not None:
        if facts.unet_key is None:
            return None
        folder = openvino_cache_dir() / fingerprint_of(facts.unet_key, loras["unet"])
        if not unet_export_made(folder):
            return None
        parts["unet"] = folder / UNET_IR_NAME
    if loras["text"] is not None:
        folder = lora_text_encoder_folder(source, precision, loras["text"])
        if not bundle_made(folder):
            return None
        parts |= {part: part_ir(folder, part) for part in TEXT_PARTS[:2 if source.sdxl else 1]}
    return parts


def _embeddings_unserved(request: GenerationRequest, facts: ModelFacts) -> bool:
    """Whether any picture's prompt names an embedding this model's text encoders cannot take
    here (unreadable, of another width; an SDXL pair for SD, one without bigG's vectors for
    SDXL): run.py says why."""
    from ...models.embeddings import embedding_names_in, list_embeddings, read_embedding

    plan, known = prompt_plan(request), list_embeddings()
    named: set[str] = set()
    for seed in request.image_seeds():
        prompt = plan(seed)
        if known:
            named.update(embedding_names_in(prompt.prompt + "\n" + prompt.negative_prompt, known))
    for name in named:
        try:
            embedding = read_embedding(known[name])
        except (BadCheckpoint, OSError):
            return True
        if "clip_g" in embedding.vectors and not facts.sdxl:
            return True
        rows = [embedding.rows(key) for key in EMBEDDING_KEYS[:len(facts.text_widths)]]
        if any(vectors is None or vectors.shape[-1] != width for vectors, width in zip(rows, facts.text_widths)):
            return True
    return False


# ----------------------------------------------------------------------------- the run


def run(request: GenerationRequest, models: ModelCache, progress: Progress, outputs: Outputs,
        found: Served | None = None) -> Result:
    """Make the pictures `request` asks for (one `serves` accepts), writing each to `outputs` as
    soon as it is finished; stopping keeps every picture finished, as run.py does. `found`: what
    `served` answered for it (else found again)."""
    started = time.perf_counter()
    dtype = ran_dtype(request)
    if found is None:
        source, facts = served_model(request)
        found = Served(source, facts, prepare_input(request, facts), _lora_variant(request, source)[1])
    source, facts, prepared = found.source, found.facts, found.prepared
    factor = prepared.factor
    # What ran, as run.py records it: the runtime, the upscale, no tiled decode; txt2img's size drawn at.
    ran = {"runtime": "openvino", "upscale": factor, "vae_tiling": False}
    if request.mode == "txt2img":
        ran |= {"width": prepared.width, "height": prepared.height}
    request = request.with_defaults(facts.sampling).model_copy(update=ran)
    progress(ProgressEvent("load", message=f"loading {request.model}"))
    bundle = load_bundle(models, source, precision_of(dtype), progress, int8=request.quantize == "int8",
                         tile=request.tile)
    if source is not None:
        facts = sd_facts(source, bundle.folder)  # what the made bundle says (its name, schedule, channels)
    if found.loras is not None:  # the bundle made first where it was not: it names the LoRA set's exports
        parts = _lora_parts(source, facts, precision_of(dtype), found.loras)
        if parts is None:
            raise BundleUnavailable("the LoRA set's exports are not made yet")  # run.py's, before any picture
        bundle = load_bundle(models, source, precision_of(dtype), progress, replaced=parts)
    tokenizers = models.get(("bundle-tokenizers", str(bundle.folder)), lambda: BundleTokenizer.all_of(bundle))
    decoders = tiny_decoders(models, request, facts, precision_of(dtype), progress.previews)
    scorer = None
    if request.score or request.rerank > 1:
        from ..rerank import scorer_from  # the scorer is a torch CLIP: only such requests import torch

        scorer = scorer_from(models, request.scorer)
    loaded = time.perf_counter()
    own_upscaler = _bundle_upscales(source, prepared)
    # A seamless tile is enlarged with a margin of itself around it (as run.py's upscaler does)
    margin = bundle_facts(tile_folder(bundle.folder))["upscale_margin"] if request.tile and own_upscaler else 0
    if factor > 1 and not own_upscaler:
        from ..upscale.pictures import check_upscale_fits  # torch: for this upscale alone

        check_upscale_fits((prepared.width, prepared.height), factor, "upscale")  # before any step

    plan = prompt_plan(request)
    settings = picture_settings(request, facts.name, facts.latent_channels, facts.vae_scale, dtype)
    if plan.capped:
        progress(ProgressEvent("encode", message=(
            f"the prompt has more than {request.max_combinations} combinations: making the first "
            f"{request.max_combinations} (raise max_combinations to make more)")))
    progress(ProgressEvent("encode", message="encoding prompt"))
    result = Result(request=request)
    # Best-of-N makes N times the pictures and keeps the best-scored, scored at the size drawn.
    candidates = request.model_copy(update={"n_iter": request.n_iter * request.rerank})
    batches = make_batches(candidates, bundle, tokenizers, plan, prepared, facts, progress, decoders)
    batches = scored_batches(batches, result, scorer, plan, progress)

    def enlarged(pictures: list[Image.Image], factor: int) -> list[Image.Image]:
        if not own_upscaler:
            from ..upscale.pictures import upscaled

            return upscaled(pictures, factor, models, progress, wrap=request.tile)
        progress(ProgressEvent("upscale", message=f"upscaling x{factor}"))
        return [enlarged_seamlessly(picture, factor, margin, lambda p: upscale(bundle, p)) for picture in pictures]

    def final_size(pictures: list[Image.Image]) -> list[Image.Image]:
        return bring_back(pictures, prepared, request.mask_blur, enlarged)  # as run.py: batches.finish

    write_batches(result, batches, request.batches_done() * request.n_samples, settings, scorer, outputs, plan, progress,
                  final_size)
    result.timings = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
    return result


def _bundle_upscales(source: SDSource | None, prepared: PreparedInput) -> bool:
    """Whether the bundle's own x2 upscaler enlarges the pictures: mini's, in one pass, up to
    UPSCALE_MAX_SIDE. Any other upscale (x4, larger pictures, SD's) is the built-in upscaler's
    on torch, tiled as run.py runs it (methods/upscale/pictures.py): torch is imported for that
    alone, as best-of's CLIP is, the pictures still made here."""
    return source is None and prepared.factor == 2 and max(prepared.width, prepared.height) <= UPSCALE_MAX_SIDE


def make_batches(request: GenerationRequest, bundle: OpenVINOBundle, tokenizers: tuple["BundleTokenizer", ...], plan,
                 prepared: PreparedInput, facts: ModelFacts, progress: Progress,
                 decoders: tuple[OpenVINOBundle | None, OpenVINOBundle | None] = (None, None)):
    """[(picture at the size drawn, seed)] for each batch still to make (`batches_to_make`), as
    soon as it is finished. `tokenizers`: its text encoders' (`BundleTokenizer.all_of`).
    `decoders`: tiny decoders' bundles for the pictures and the previews (`tiny_decoders`), None
    for the VAE and its linear map."""
    pictures, previews = decoders

    def preview(latents: np.ndarray) -> Image.Image:
        if previews is None:
            return linear_preview(latents, bundle.latent_rgb, PREVIEW_SIDE)
        return side_by_side(decode(previews, latents), PREVIEW_SIDE)

    encoded: dict = {}
    start = Start(request, prepared, facts)
    for batch, seeds, first_seed in batches_to_make(request):
        if progress.stop_requested():
            raise Interrupted()
        if start.untouched:  # an image mode at strength 0: nothing to denoise, the picture itself
            yield [(prepared.image.copy(), seed) for seed in seeds]
            continue
        # LoRA tags taken out and embedding names written as their tokens, as the torch path's
        # networks.batch_prompts does
        pairs = [extract_pair(plan(seed).prompt, plan(seed).negative_prompt)[:2] for seed in seeds]
        texts, used = written_as_tokens([text for pair in pairs for text in pair])
        for tokenizer, key in zip(tokenizers, EMBEDDING_KEYS):  # SDXL's bigG: the embeddings' own rows
            tokenizer.add_embeddings(used, key)
        conditioning = encode_pairs(list(zip(texts[0::2], texts[1::2])), tokenizers, bundle, encoded,
                                    zero_empty_negative=facts.sdxl)
        for part in TEXT_PARTS[:len(tokenizers)]:  # a large one (SDXL's bigG) not held through the steps
            if bundle.large(part):
                bundle.forget(part)
        groups = _groups(len(seeds), prepared, facts)
        latents = np.concatenate([
            denoise(request, bundle, start, seeds[rows], conditioning.rows(rows), batch, progress, preview,
                    (number, len(groups)), first_seed)
            for number, rows in enumerate(groups)])
        progress(ProgressEvent("decode", batch=batch, batches=request.batch_count()))
        yield list(zip(decode(pictures or bundle, latents), seeds))


def _groups(count: int, prepared: PreparedInput, facts: ModelFacts) -> list[slice]:
    """A batch of `count` pictures as the groups its UNet evaluations take, each within the
    model's `max_batch_pixels` (a picture does not depend on its batch-mates: the same to the
    bit in any group); one group for reverie-mini."""
    most = facts.max_batch_pixels
    size = count if most is None else max(1, most // (prepared.width * prepared.height))
    return [slice(start, start + size) for start in range(0, count, size)]


def batches_to_make(request: GenerationRequest):
    """(batch number, its seeds, the whole batch's first seed) for each batch still to make: from
    the first an earlier run did not finish (`batches_done`), or only the picture `keep_only`
    picks (a picture here does not depend on its batch-mates, so it is made alone; chaos still
    mixes its noise toward its batch's first seed's)."""
    seeds, size = request.image_seeds(), request.n_samples
    if request.keep_only is not None:
        yield 0, [seeds[request.keep_only]], seeds[0]
        return
    for batch in range(request.batches_done(), request.batch_count()):
        yield batch, seeds[batch * size : (batch + 1) * size], seeds[batch * size]


class BundleUnavailable(RuntimeError):
    """The bundle could not be made or read; this process runs the model on the torch pipeline
    from then on (`serves` says no), as `auto` does when a UNet's export fails."""


_failed: dict[tuple, str] = {}  # (model, precision) -> why its bundle could not be had, in this process


def _bundle_key(source: SDSource | None, precision: str, int8: bool = False,
                replaced: dict[str, Path] | None = None, tile: bool = False) -> tuple:
    return ((str(source.path) if source is not None else MINI_NAME, precision) + (("int8",) if int8 else ())
            + (("tile",) if tile else ())
            + tuple(f"{part}:{path.parent.name}" for part, path in sorted((replaced or {}).items())))


def load_bundle(models: ModelCache, source: SDSource | None, precision: str,
                progress: Progress | None = None, int8: bool = False,
                replaced: dict[str, Path] | None = None, tile: bool = False) -> OpenVINOBundle:
    """The bundle of reverie-mini (`source` None) or of an SD model for `precision`, from the
    model cache, read from disk, or made first (once: about 11 s for mini, a minute or more for
    SD, whose UNet export takes most of it unless the torch path made it already; the only time
    this path imports torch); `int8`: with its UNet quantized to int8 (models/int8_unet.py),
    quantized first where it is not yet; `replaced`: with those IRs in those parts' places (a
    LoRA set's exports, `_lora_parts`); `tile`: with its UNet, decoder and encoder padding
    circularly, for seamless tiles (openvino_bundle.make_tile_parts: exported once, as long again
    as the model's own UNet). BundleUnavailable when that fails."""
    key = _bundle_key(source, precision, int8, replaced, tile)
    mini = source is None

    def say(message: str) -> None:
        if progress is not None:
            progress(ProgressEvent("load", message=message))

    def load() -> OpenVINOBundle:
        folder = bundle_folder(precision) if mini else sd_bundle_folder(source, precision)
        try:
            precisions = dict.fromkeys(("text_encoder", "unet", "decoder", "encoder"), precision)
            if mini:  # the upscaler in bf16 where the CPU has it, whatever the dtype, as torch's autocast runs it
                precisions["upscaler"] = "bf16" if this_cpu_native_bf16() and is_x86() else "f32"
            def missing() -> bool:
                return (not bundle_made(folder) or (int8 and not int8_unet.int8_made(folder))
                        or (tile and not bundle_made(tile_folder(folder))))

            if missing():  # made once, by one process: another making it is waited for, then found made
                with one_process_at_a_time(folder, lambda: say(f"waiting for another process making {key[0]}'s bundle")):
                    if not bundle_made(folder):
                        say(f"exporting {key[0]} to OpenVINO (once)")
                        make_bundle(folder, precision) if mini else make_sd_bundle(source, folder, precision)
                    if int8 and not int8_unet.int8_made(folder):
                        say(f"quantizing {key[0]}'s UNet to int8 (once: minutes for SD)")
                        facts = mini_facts() if mini else sd_facts(source, folder)
                        int8_unet.quantize_unet(folder, lambda: calibration_inputs(OpenVINOBundle(folder, precisions), facts))
                    if tile and not bundle_made(tile_folder(folder)):
                        say(f"exporting {key[0]} for seamless tiles (once)")
                        make_tile_bundle(folder, precision) if mini else make_sd_tile_bundle(source, folder, precision)
            if bundle_facts(folder).get("sdxl"):
                precisions["text_encoder_2"] = precision
            if int8:
                parts = {"unet": int8_unet.int8_folder(folder) / int8_unet.IR_NAME}
            elif tile:  # (never with int8 or a LoRA set: `served`)
                parts = {part: part_ir(tile_folder(folder), part) for part in TILE_PARTS}
            else:
                parts = replaced
            return OpenVINOBundle(folder, precisions, store_compiled=mini, replaced=parts,
                                  views=openvino_step_cache.VIEWS)
        except Exception as exc:  # the exporter meets a layer it cannot trace, a full disk, a damaged file...
            _failed[key] = f"{type(exc).__name__}: {exc}"[:300]
            what = " with an int8 UNet" if int8 else " for seamless tiles" if tile else ""
            log.warning("%s's OpenVINO bundle%s could not be had (%s); %s", key[0], what,
                        _failed[key], "int8 requests are refused" if int8 else "it runs on torch")
            raise BundleUnavailable(_failed[key]) from exc

    return models.get(("openvino-bundle",) + key, load)


class _Recording:
    """A bundle that keeps a copy of the inputs of each call of its UNet."""

    def __init__(self, bundle: OpenVINOBundle):
        self.bundle, self.latent_rgb, self.unet_inputs = bundle, bundle.latent_rgb, []

    def __call__(self, part: str, *inputs: np.ndarray, **options) -> np.ndarray:
        if part == "unet":
            self.unet_inputs.append(tuple(np.array(x, copy=True) for x in inputs))
        return self.bundle(part, *inputs, **options)

    def release_memory(self, part: str) -> None:
        self.bundle.release_memory(part)


def calibration_inputs(bundle: OpenVINOBundle, facts: ModelFacts) -> list[tuple[np.ndarray, ...]]:
    """The UNet's inputs (latents, timestep, text states on the CFG pair) while the model
    denoises int8_unet's CALIBRATION_PROMPTS from noise, with its default sampler and guidance,
    in CALIBRATION_STEPS steps, at CALIBRATION_SIDE px (its own side where smaller): the
    examples NNCF reads the int8 ranges from. An inpainting model repaints the right half of a
    grey-to-white ramp instead (its mask and masked latents are inputs too)."""
    recording, tokenizers = _Recording(bundle), BundleTokenizer.all_of(bundle)
    side = min(int8_unet.CALIBRATION_SIDE, facts.native_size) // facts.size_multiple * facts.size_multiple
    for seed, prompt in enumerate(int8_unet.CALIBRATION_PROMPTS):
        fields = dict(prompt=prompt, width=side, height=side, steps=int8_unet.CALIBRATION_STEPS, seed=seed)
        if facts.inpainting:
            request = GenerationRequest(mode="inpaint", init_image="ramp", mask_image="right half", **fields)
            prepared = _calibration_picture(side)
        else:
            request = GenerationRequest(**fields)
            prepared = prepare_input(request, facts)
        request = request.with_defaults(facts.sampling)
        conditioning = encode_pairs([(prompt, "")], tokenizers, recording, {})
        denoise(request, recording, Start(request, prepared, facts), [seed], conditioning, 0, Progress())
    return recording.unet_inputs


def _calibration_picture(side: int) -> PreparedInput:
    """A `side` px picture (a horizontal ramp from grey to white) with its right half to repaint."""
    ramp = np.tile(np.linspace(128, 255, side, dtype=np.uint8), (side, 1))
    mask = np.zeros((side, side), np.uint8)
    mask[:, side // 2:] = 255
    picture = Image.fromarray(ramp).convert("RGB")
    return PreparedInput(side, side, picture, Image.fromarray(mask), target=picture, target_mask=Image.fromarray(mask))


class BundleTokenizer:
    """A text encoder's tokenizer read from its tokenizer.json by the `tokenizers` library
    (transformers is not imported), answering as transformers' does where prompts/tokens.py asks
    it (its special tokens, its window); the same token ids (tests/test_mini_compiled.py,
    tests/test_sd_compiled.py). `masks`: whether its encoder takes an attention mask (MiniLM
    does; SD's CLIP runs unmasked)."""

    bos_token_id = eos_token_id = cls_token_id = sep_token_id = pad_token_id = None

    def __init__(self, path: Path, special: dict, masks: bool, vocab: int, width: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.vocab, self.width = vocab, width  # the text encoder's table: its rows and their width
        self._added: dict[str, np.ndarray] = {}  # textual-inversion tokens and their rows, in id order
        for name, value in special.items():
            setattr(self, name, value)
        self.masks = masks

    @classmethod
    def of(cls, bundle: OpenVINOBundle, suffix: str = "") -> "BundleTokenizer":
        """The tokenizer of a bundle's text encoder: SD's in the bundle, MiniLM's beside its
        weights; `suffix` "_2": SDXL's second (bigG's, which pads with "!")."""
        facts = bundle.facts
        table = facts["vocab" + suffix], facts["text_width" + suffix]
        if "tokenizer" in facts:
            return cls(bundle.folder / f"tokenizer{suffix}.json", facts["tokenizer" + suffix], facts["text_mask"],
                       *table)
        return cls.minilm(*table)

    @classmethod
    def all_of(cls, bundle: OpenVINOBundle) -> tuple["BundleTokenizer", ...]:
        """Each of the bundle's text encoders' tokenizers, in TEXT_PARTS's order."""
        return (cls.of(bundle),) + ((cls.of(bundle, "_2"),) if bundle.facts.get("sdxl") else ())

    def add_embeddings(self, embeddings, key: str = "clip_l") -> None:
        """Take the tokens of textual-inversion `embeddings` (models/embeddings.py: their names
        written as these tokens), once each: token ids from the encoder's table size on, their
        rows the embeddings' vectors for this encoder (`key`: "clip_l", SD's or CLIP ViT-L's;
        "clip_g", SDXL's bigG's: `Embedding.rows`), given to the text encoder with every call (`rows`)."""
        from tokenizers import AddedToken

        for embedding in embeddings:
            for token, vector in zip(embedding.tokens(), embedding.rows(key)):
                if token in self._added:
                    continue
                self._tokenizer.add_tokens([AddedToken(token)])
                if self._tokenizer.token_to_id(token) != self.vocab + len(self._added):
                    raise BadRequest("prompt", f"embedding {embedding.name}'s token {token} did not get the next id "
                                               "after the text encoder's table; run it with --runtime torch")
                self._added[token] = vector

    def rows(self) -> np.ndarray:
        """[E, width]: the added tokens' rows, in id order (one row of zeros when none: no id reads it)."""
        if not self._added:
            return np.zeros((1, self.width), np.float32)
        return np.stack(list(self._added.values())).astype(np.float32)

    @classmethod
    def minilm(cls, vocab: int, width: int) -> "BundleTokenizer":
        """reverie-mini's: MiniLM's, from its tokenizer.json (its table: `vocab` rows `width` wide)."""
        from ...models.minilm import WINDOW, model_path

        tokenizer = cls(Path(model_path()) / "tokenizer.json", {"model_max_length": WINDOW}, True, vocab, width)
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id = (
            tokenizer._tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]", "[PAD]"))
        return tokenizer

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


TEXT_PARTS = ("text_encoder", "text_encoder_2")  # SD's (or mini's) one; SDXL's CLIP ViT-L, then bigG
EMBEDDING_KEYS = ("clip_l", "clip_g")  # an embedding's vectors for each of them (`Embedding.rows`)


@dataclass(frozen=True)
class Conditioning:
    """A batch's text conditioning, one row per picture."""

    cond: np.ndarray  # [N, n_chunks * L, D] the prompts' states
    uncond: np.ndarray  # the negative prompts'
    pooled: np.ndarray | None = None  # SDXL: [N, P] the prompts' pooled text
    negative_pooled: np.ndarray | None = None

    def rows(self, rows: slice) -> "Conditioning":
        """Those pictures' conditioning."""
        return Conditioning(*(None if part is None else part[rows]
                              for part in (self.cond, self.uncond, self.pooled, self.negative_pooled)))


def encode_pairs(pairs: list[tuple[str, str]], tokenizers: tuple[BundleTokenizer, ...], bundle: OpenVINOBundle,
                 encoded: dict, zero_empty_negative: bool = False) -> Conditioning:
    """The conditioning for one (prompt, negative) pair per picture, as conditioning.py makes it
    (encode_prompt_batch for one text encoder, encode_sdxl_prompt_batch for SDXL's two): each
    encoder's windows encoded (their padding masked where the encoder takes a mask), token weights
    applied, every row padded with empty windows to the longest; SDXL's encoders' states side by
    side, its pooled text bigG's of the first window, unweighted, and with `zero_empty_negative`
    (SDXL base's `force_zeros_for_empty_prompt`) an empty negative all zeros. `encoded` keeps
    them by pair and window count across batches."""
    windows = [framing(tokenizer, None, None) for tokenizer in tokenizers]
    chunked = {pair: [[chunk_tokens(text, tokenizer, window) for text in pair]
                      for tokenizer, window in zip(tokenizers, windows)]
               for pair in dict.fromkeys(pairs)}
    n_chunks = max(len(chunks) for per_encoder in chunked.values() for sides in per_encoder for chunks in sides)
    for pair, per_encoder in chunked.items():
        if (pair, n_chunks) in encoded:
            continue
        sides = []
        for side, text in enumerate(pair):
            outputs = [_encode_chunks(sides_[side] + [TokenChunk() for _ in range(n_chunks - len(sides_[side]))],
                                      window, tokenizer, bundle, part)
                       for sides_, window, tokenizer, part in zip(per_encoder, windows, tokenizers, TEXT_PARTS)]
            states = np.concatenate([states for states, _ in outputs], axis=-1)
            pooled = outputs[-1][1]
            if side == 1 and zero_empty_negative and not text.strip():
                states, pooled = np.zeros_like(states), (None if pooled is None else np.zeros_like(pooled))
            sides.append((states, pooled))
        encoded[(pair, n_chunks)] = sides
    rows = [encoded[(pair, n_chunks)] for pair in pairs]

    def joined(side: int, index: int) -> np.ndarray | None:
        parts = [row[side][index] for row in rows]
        return None if parts[0] is None else np.concatenate(parts)

    return Conditioning(joined(0, 0), joined(1, 0), joined(0, 1), joined(1, 1))


def _encode_chunks(chunks: list[TokenChunk], window, tokenizer: BundleTokenizer, bundle: OpenVINOBundle,
                   part: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(states [1, n_chunks * L, D], weighted; the first window's pooled text [1, P] where the
    encoder gives one, SDXL's bigG, else None) of one text's windows by text encoder `part`."""
    ids, mask, weights = frame_rows(chunks, window)
    inputs = (np.asarray(ids, np.int64),) + ((np.asarray(mask, np.int64),) if tokenizer.masks else ())
    hidden, *pooled = bundle(part, *inputs, tokenizer.rows(), every_output=True)
    hidden = apply_weights(hidden, np.asarray(weights, np.float32))
    return hidden.reshape(1, -1, hidden.shape[-1]), (pooled[0][:1] if pooled else None)


def apply_weights(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """conditioning._apply_weights on arrays: each token's state scaled by its weight, each
    window brought back to its unweighted mean (unless the weights would flip its sign)."""
    if (weights == 1.0).all():
        return hidden
    original = hidden.mean(axis=(1, 2), keepdims=True)
    weighted = hidden * weights[..., None]
    weighted_mean = weighted.mean(axis=(1, 2), keepdims=True)
    usable = original * weighted_mean > 0
    return weighted * np.where(usable, original / np.where(usable, weighted_mean, 1.0), 1.0)


class Start:
    """Where a request's pictures start and what holds them, as the torch pipeline does it:
    txt2img from each seed's noise over the whole schedule; img2img and variations from the input
    picture's latents, noised to where `strength` enters the schedule (diffusers' img2img
    pipeline: get_timesteps, then add_noise); inpaint and outpaint as diffusers' inpaint pipeline
    runs a plain (4-channel) UNet: from noise at strength 1, else from the picture's latents
    noised as img2img's, and after every step the kept area put back (`Kept`). Each seed's CPU
    generator draws, in the torch path's order, the starting noise (which img2img leaves unused;
    inpaint at strength 1 starts from it, and noises the kept area with it), then the latents'
    sample of the encoder's distribution, then (below strength 1) the noise added, then (inpaint and
    outpaint) a sample of the masked picture's latents, which a plain UNet leaves unused; the
    stochastic samplers' fresh noise comes after, from the same generators (`Begun.draw`). An
    inpainting model (a 9-channel UNet) is run as diffusers' inpaint pipeline runs one: no picture
    encoded at strength 1, no kept area put back, and beside the latents at every step the mask
    and the sample of the masked picture's latents (`Begun.extra`)."""

    def __init__(self, request: GenerationRequest, prepared: PreparedInput, facts: ModelFacts):
        self.request, self.prepared, self.facts = request, prepared, facts
        self.image_mode = request.mode != "txt2img"
        self.masked = request.mode in MASKED_MODES
        self.inpainting = facts.inpainting
        self.strength = request.effective_strength if self.image_mode else 1.0
        self.untouched = self.image_mode and not self.masked and self.strength == 0
        self.steps = sampler_steps(request.mode, request.steps, self.strength)
        self.shape = (facts.latent_channels, prepared.height // facts.vae_scale, prepared.width // facts.vae_scale)
        self._encoded: np.ndarray | None = None
        self._masked_encoded: np.ndarray | None = None

    def sampler(self, seeds: list[int]):
        """A fresh sampler for the pictures of `seeds` (DPM++ SDE Karras's trees are theirs), at the
        timestep they start from."""
        sampler = make_sampler(self.request.sampler, self.facts.scheduler_config, self.steps, eta=self.request.eta,
                               seeds=seeds)
        if self.image_mode:
            # As diffusers' get_timesteps: a two-pass sampler's (Heun's) entry is twice as far in.
            sampler.begin_at(sampler.order * (self.steps - min(int(self.steps * self.strength), self.steps)))
        return sampler

    def latents(self, bundle: OpenVINOBundle, seeds: list[int], sampler, first_seed: int | None = None) -> "Begun":
        """Each seed's starting latents for `sampler` (made by `sampler()`), for inpaint and
        outpaint what keeps the unmasked area, and the seeds' generators' next draws. The
        starting noise mixed by the request's `chaos` toward the noise of its batch's first seed
        (`first_seed`: the whole batch's, where `seeds` are a group of it), as batches.py mixes it."""
        generators = [TorchCPUGenerator(seed) for seed in seeds]

        def draw() -> np.ndarray:
            return np.stack([generator.randn(self.shape) for generator in generators])

        noise = draw()
        if self.request.chaos is not None:  # txt2img, or inpaint and outpaint from noise (request.py checks)
            noise = chaos_noise(noise, seeds[0] if first_seed is None else first_seed, self.request.chaos)
        if not self.image_mode:
            return Begun(noise * np.float32(sampler.init_noise_sigma), None, draw)
        from_noise = self.masked and self.strength >= 1.0
        sampled = None
        if from_noise and self.inpainting:  # diffusers encodes no picture for a 9-channel UNet from noise
            latents = noise * np.float32(sampler.init_noise_sigma)
        else:
            mean, spread = np.split(self.encoded(bundle)[0], 2)
            sampled = mean + spread * draw()
            if from_noise:  # inpaint from noise: the first draw noises the kept area too
                latents = noise * np.float32(sampler.init_noise_sigma)
            else:
                noise = draw()
                latents = sampler.add_noise(sampled, noise)
        if not self.masked:
            return Begun(latents, None, draw)
        if not self.inpainting:
            draw()  # diffusers' inpaint pipeline samples the masked picture's latents too, unused by a 4-channel UNet
            return Begun(latents, Kept(sampled, noise, self.latent_mask()), draw)
        mean, spread = np.split(self.masked_encoded(bundle)[0], 2)
        mask = np.broadcast_to(self.latent_mask(), (len(seeds), 1) + self.shape[1:])
        return Begun(latents, None, draw, np.concatenate([mask, mean + spread * draw()], axis=1))

    def encoded(self, bundle: OpenVINOBundle) -> np.ndarray:
        """The input picture's latent distribution [1, 2C, h, w] (mean, spread; scaled), encoded once."""
        if self._encoded is None:
            self._encoded = _encode(bundle, self._pixels())
        return self._encoded

    def masked_encoded(self, bundle: OpenVINOBundle) -> np.ndarray:
        """The same of the masked picture an inpainting UNet is given: the input with the pixels
        to repaint set to 0 (mid grey), as diffusers' inpaint pipeline makes it."""
        if self._masked_encoded is None:
            mask = np.asarray(self.prepared.mask.convert("L"), dtype=np.float32) / np.float32(255.0)
            self._masked_encoded = _encode(bundle, self._pixels() * (mask < 0.5).astype(np.float32)[None, None])
        return self._masked_encoded

    def _pixels(self) -> np.ndarray:
        """[1, 3, H, W]: the input picture in [-1, 1], as diffusers' image processor makes it."""
        pixels = np.asarray(self.prepared.image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        return (np.float32(2.0) * pixels - np.float32(1.0)).transpose(2, 0, 1)[None]

    def latent_mask(self) -> np.ndarray:
        """[1, 1, h, w], 1 where the picture is repainted: the mask binarized at half and taken at
        every vae_scale-th pixel (diffusers' mask processor, then nearest interpolation)."""
        mask = np.asarray(self.prepared.mask.convert("L"), dtype=np.float32) / np.float32(255.0)
        scale = self.facts.vae_scale
        return (mask >= 0.5).astype(np.float32)[::scale, ::scale][None, None]


@dataclass(frozen=True)
class Begun:
    """A batch's start (`Start.latents`)."""

    latents: np.ndarray  # [N, C, h, w] where the first step starts
    kept: "Kept | None"  # inpaint and outpaint with a plain UNet: what keeps the unmasked area
    draw: Callable[[], np.ndarray]  # [N, C, h, w]: each seed's generator's next noise, in turn
    extra: np.ndarray | None = None  # [N, 1 + C, h, w] an inpainting UNet's mask and masked latents


@dataclass(frozen=True)
class Kept:
    """What inpaint and outpaint put back after every step outside the mask: the input's latents
    noised to the next step's level (the last step: as they are), as diffusers' inpaint pipeline
    does with a 4-channel UNet."""

    image: np.ndarray  # [N, C, h, w] the input picture's sampled latents
    noise: np.ndarray  # [N, C, h, w] the noise they are noised with
    mask: np.ndarray  # [1, 1, h, w] 1 where repainted

    def put_back(self, latents: np.ndarray, sampler) -> np.ndarray:
        """`latents` after a step of `sampler`, the kept area replaced."""
        proper = self.image
        if sampler.step_index < len(sampler.timesteps):
            proper = sampler.add_noise(self.image, self.noise)
        return (np.float32(1.0) - self.mask) * proper + self.mask * latents


def denoise(request: GenerationRequest, bundle: OpenVINOBundle, start: Start, seeds: list[int],
            conditioning: Conditioning, batch: int, progress: Progress,
            preview: Callable[[np.ndarray], Image.Image] | None = None, group: tuple[int, int] = (0, 1),
            first_seed: int | None = None) -> np.ndarray:
    """One batch's latents after the request's steps, from where `start` says; `preview` draws
    the live previews (default: the VAE's linear latent->RGB map). With `step_cache` the UNet
    reuses its deep features between evaluations, as on the torch pipeline. SDXL's UNet is also
    given the pooled text and the size/crop time ids: a picture of this very size, not cropped
    (as batches.sdxl_arguments asks of diffusers' SDXL pipelines, the negative's the same).
    `first_seed`: the whole batch's first seed (chaos's shared noise, where `seeds` are a group of
    it or the one picture `keep_only` makes; default `seeds[0]`).
    `group`: (which, of how many) groups of the batch these pictures are (`_groups`), for the
    progress, which counts the whole batch's steps."""
    unet = openvino_step_cache.CachedUNet(bundle, request.step_cache)
    sampler = start.sampler(seeds)
    begun = start.latents(bundle, seeds, sampler, first_seed)
    latents, kept = begun.latents, begun.kept
    scale = request.guidance_scale()
    width = start.facts.guidance_embedding
    # As diffusers: no unconditioned pass at CFG 1 or below, nor for a UNet given the scale itself.
    guided = scale > 1 and width is None
    cond, uncond = conditioning.cond, conditioning.uncond
    states = np.concatenate([uncond, cond]) if guided else cond
    embedded = () if width is None else (guidance_embedding(scale - 1.0, width, len(cond)),)
    if conditioning.pooled is not None:  # SDXL
        pooled = (np.concatenate([conditioning.negative_pooled, conditioning.pooled]) if guided
                  else conditioning.pooled)
        height, width_px = start.prepared.height, start.prepared.width
        time_ids = np.array([[height, width_px, 0, 0, height, width_px]], np.float32).repeat(len(pooled), axis=0)
        embedded += (pooled, time_ids)
    timesteps = sampler.timesteps[sampler.step_index:]
    total = len(timesteps)
    for step, timestep in enumerate(timesteps):
        scaled = sampler.scale_model_input(latents)
        if begun.extra is not None:  # an inpainting UNet's further channels, as they are
            scaled = np.concatenate([scaled, begun.extra], axis=1)
        model_input = np.concatenate([scaled, scaled]) if guided else scaled
        out = unet(model_input, np.float32(timestep), states, *embedded)
        if guided:
            out_uncond, out_cond = np.split(out, 2)
            out = out_uncond + np.float32(scale) * (out_cond - out_uncond)
        latents = sampler.step(out, latents, begun.draw() if sampler.wants_noise else None)
        if kept is not None:
            latents = kept.put_back(latents, sampler)
        done = step + 1
        shown = None
        if progress.previews and (done % PREVIEW_EVERY == 0 or done == total):
            shown = preview(latents) if preview else linear_preview(latents, bundle.latent_rgb, PREVIEW_SIDE)
        progress(ProgressEvent("denoise", group[0] * total + done, group[1] * total, batch, request.batch_count(),
                               preview=shown))
        if progress.stop_requested():
            raise Interrupted()  # the batch was cut short: its half-made pictures are not results
    bundle.release_memory("unet")  # its activations: the decode does not stand on them
    return latents


def guidance_embedding(w: float, width: int, count: int) -> np.ndarray:
    """[count, width] float32: a guidance-distilled UNet's embedding of guidance `w` (the CFG
    scale less 1), as diffusers' pipelines make it: sines then cosines of w * 1000 at
    frequencies 10000 ** (-i / (width / 2 - 1)), padded with a 0 where `width` is odd."""
    half = width // 2
    rate = np.float32(math.log(10000.0)) / np.float32(half - 1)
    angles = np.float32(np.float32(w) * np.float32(1000.0)) * np.exp(np.arange(half, dtype=np.float32) * -rate)
    row = np.concatenate([np.sin(angles), np.cos(angles), np.zeros(width % 2, np.float32)]).astype(np.float32)
    return np.repeat(row[None], count, axis=0)


def _encode(bundle: OpenVINOBundle, pixels: np.ndarray) -> np.ndarray:
    """The VAE encoder's latent distribution [1, 2C, h, w] of pixels [1, 3, H, W] in [-1, 1]."""
    encoded = bundle("encoder", np.ascontiguousarray(pixels))
    bundle.release_memory("encoder")
    return encoded


def decode(bundle: OpenVINOBundle, latents: np.ndarray) -> list[Image.Image]:
    """The pictures of `latents` by the bundle's decoder (the VAE's, or a tiny decoder's), one
    decode per picture (a batch's decode is the same per row, and one shape serves every batch
    size)."""
    return [Image.fromarray(_levels(bundle("decoder", row[None])[0], -1.0, 1.0)) for row in latents]


def upscale(bundle: OpenVINOBundle, picture: Image.Image) -> Image.Image:
    """`picture` twice as large by the built-in x2 upscaler (as models/upscaler.upscale_image)."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] * np.float32(2 / 255) - 1
    return Image.fromarray(_levels(bundle("upscaler", pixels)[0], -1.0, 1.0))


def _levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """float [3, H, W] in [low, high] -> uint8 [H, W, 3], clamped and rounded (pixels.to_levels)."""
    levels = np.clip((values - np.float32(low)) * np.float32(255.0 / (high - low)), 0, 255)
    return np.round(levels).astype(np.uint8).transpose(1, 2, 0)
