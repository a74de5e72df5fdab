"""reverie-mini's txt2img requests run on OpenVINO alone, without torch or diffusers (issue 22).

A cold `reverie generate "red apple" -n 4` spent 5.8 of its 8 s importing torch and diffusers'
model classes, for four 128 px pictures that take a second to make. `serves` says, without
importing either, whether a request is one this path runs: reverie-mini, txt2img, on the CPU
under runtime `auto` or `openvino`, with the DPM++ 2M sampler (mini's default; numpy_sampler.py),
at most 512 px a side (192 with the x2 upscale), a plain prompt (weights, negative, templates and
styles; no LoRAs or embeddings), without the options only the torch pipeline has (seamless
tiles, step caching, chaos below 100, a tiny decoder, prompt expansion). Live previews are drawn
here with the VAE's linear latent->RGB map (unless a tiny decoder in the models folder would
draw them); best-of-N and scores import torch for their CLIP, the pictures still come from here.
`run` then makes its pictures from the bundle (models/mini_bundle.py: the text encoder, UNet, VAE
decoder and x2 upscaler exported once, made on the first such request) the way run.py's
pipeline does, step for step: MiniLM's token states (prompts/tokens.py frames them), each
seed's starting noise as torch's CPU generator draws it (torch_noise.py), classifier-free
guidance over the CFG batch, the sampler, the decode, the upscale. Between the parts the values
stay in fp32 (the torch pipeline holds its latents in the request's dtype: rounding them to
bf16 here too brought the pictures no closer), so the pictures are the torch path's up to the
runtimes' kernels and that rounding: 57 dB in fp32, 33-44 dB in bf16, the same pictures to the
eye (tests/test_mini_compiled.py). Anything else runs on run.py, as before.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from ...errors import ModelNotFound
from ...host import is_x86, this_cpu_native_bf16
from ...models.cache import ModelCache
from ...models.mini import DEFAULT_UPSCALE, MINI_DIR, MINI_NAME, SAMPLING_DEFAULTS, mini_installed
from ...models.mini_bundle import MiniBundle, bundle_folder, bundle_made, make_bundle, precision_of
from ...outputs.files import Outputs
from ...progress import Interrupted, Progress, ProgressEvent
from ...prompts.extra_networks import extract_pair
from ...prompts.picture import prompt_plan
from ...prompts.tokens import TokenChunk, chunk_tokens, frame_rows, framing
from ...result import Result
from ...torch_noise import torch_randn
from .images import txt2img_size
from .numpy_sampler import DPMSolver2M, sampler_supported
from .preview import PREVIEW_EVERY, PREVIEW_SIDE, linear_preview
from .records import picture_settings, scored_batches, write_batches
from .request import GenerationRequest

log = logging.getLogger(__name__)

MAX_SIDE = 512  # working pixels a side: larger pictures go to run.py (its decode and memory checks)
UPSCALE_MAX_SIDE = 192  # the upscaler's whole-picture pass (models/upscaler.py tiles larger ones)


@dataclass(frozen=True)
class MiniFacts:
    """What reverie-mini's configs say that a request's size and records need."""

    native_size: int  # pixels a side it draws at by default
    size_multiple: int  # its sides are multiples of this (the VAE's and the UNet's downsampling)
    latent_channels: int
    vae_scale: int
    scheduler_config: dict


@cache
def mini_facts(folder: Path = MINI_DIR) -> MiniFacts:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return MiniFacts(int(unet["sample_size"]) * scale, scale * 2 ** (len(unet["block_out_channels"]) - 1),
                     int(vae["latent_channels"]), scale,
                     json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))


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


def serves(request: GenerationRequest, previews: bool = False) -> bool:
    """Whether this path runs `request` (resolved: its model and seed fixed) — see the module
    docstring; decided without importing torch. `previews` (the listener wants live previews):
    drawn with the VAE's linear latent->RGB map, or on the torch pipeline where a tiny decoder
    in the models folder would draw them."""
    if request.mode != "txt2img" or request.model != MINI_NAME or not mini_installed():
        return False
    if request.runtime == "torch" or importlib.util.find_spec("openvino") is None:
        return False
    if request.device not in ("auto", "cpu") or (request.device == "auto" and _accelerator_visible()):
        return False
    dtype = ran_dtype(request)
    if dtype is None or (dtype == "bf16" and not is_x86()) or request.weights not in ("auto", dtype):
        return False
    if precision_of(dtype) in _failed:  # its bundle failed earlier in this process
        return False
    chaos = request.chaos is not None and request.chaos < 100  # 100: each picture its own seed's noise, as without
    if previews and _tiny_decoder_present():
        return False
    if (request.tile or request.step_cache or chaos or request.refiner or request.decoder != "vae"
            or request.vae_tiling or request.attention_slicing or request.expand):
        return False
    facts = mini_facts()
    width, height = txt2img_size(request, facts)
    factor = request.upscale or DEFAULT_UPSCALE
    if width % facts.size_multiple or height % facts.size_multiple or max(width, height) > MAX_SIDE:
        return False
    if factor not in (1, 2) or (factor == 2 and max(width, height) > UPSCALE_MAX_SIDE):
        return False
    if not sampler_supported(request.sampler or SAMPLING_DEFAULTS.sampler, facts.scheduler_config):
        return False
    return not _names_networks(request)


def _tiny_decoder_present() -> bool:
    """Whether the models folder has a tiny decoder for reverie-mini's latents (run.py previews
    with it: a real decode)."""
    from ...models.tiny_decoder_files import find_tiny_decoder

    try:
        find_tiny_decoder("tiny", "mini")
    except ModelNotFound:
        return False
    return True


def _names_networks(request: GenerationRequest) -> bool:
    """Whether any picture's prompt names a LoRA or a textual-inversion embedding."""
    from ...models.embeddings import embedding_names_in, list_embeddings

    plan, known = prompt_plan(request), list_embeddings()
    for seed in request.image_seeds():
        prompt = plan(seed)
        if extract_pair(prompt.prompt, prompt.negative_prompt)[2]:
            return True
        if known and embedding_names_in(prompt.prompt + "\n" + prompt.negative_prompt, known):
            return True
    return False


# ----------------------------------------------------------------------------- the run


def run(request: GenerationRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    """Make the pictures `request` asks for (one `serves` accepts), writing each to `outputs` as
    soon as it is finished; stopping keeps every picture finished, as run.py does."""
    started = time.perf_counter()
    dtype = ran_dtype(request)
    facts = mini_facts()
    width, height = txt2img_size(request, facts)
    factor = request.upscale or DEFAULT_UPSCALE
    # What ran, as run.py records it: the runtime, the size drawn at, the upscale, no tiled decode.
    request = request.with_defaults(SAMPLING_DEFAULTS).model_copy(update={
        "runtime": "openvino", "width": width, "height": height, "upscale": factor, "vae_tiling": False})
    progress(ProgressEvent("load", message=f"loading {request.model}"))
    bundle = load_bundle(models, precision_of(dtype), progress)
    tokenizer = models.get(("minilm-tokenizer",), MiniTokenizer)
    scorer = None
    if request.score or request.rerank > 1:
        from ..rerank import scorer_from  # the scorer is a torch CLIP: only such requests import torch

        scorer = scorer_from(models, request.scorer)
    loaded = time.perf_counter()

    plan = prompt_plan(request)
    settings = picture_settings(request, MINI_NAME, facts.latent_channels, facts.vae_scale, dtype)
    if plan.capped:
        progress(ProgressEvent("encode", message=(
            f"the prompt has more than {request.max_combinations} combinations: making the first "
            f"{request.max_combinations} (raise max_combinations to make more)")))
    progress(ProgressEvent("encode", message="encoding prompt"))
    result = Result(request=request)
    # Best-of-N makes N times the pictures and keeps the best-scored, scored at the size drawn.
    candidates = request.model_copy(update={"n_iter": request.n_iter * request.rerank})
    batches = make_batches(candidates, bundle, tokenizer, plan, (height, width), facts, progress)
    batches = scored_batches(batches, result, scorer, plan, progress)

    def final_size(pictures: list[Image.Image]) -> list[Image.Image]:
        if factor == 1:
            return pictures
        progress(ProgressEvent("upscale", message=f"upscaling x{factor}"))
        return [upscale(bundle, picture) for picture in pictures]

    write_batches(result, batches, request.batches_done() * request.n_samples, settings, scorer, outputs, plan, progress,
                  final_size)
    result.timings = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
    return result


def make_batches(request: GenerationRequest, bundle: MiniBundle, tokenizer: MiniTokenizer, plan, size: tuple[int, int],
                 facts: MiniFacts, progress: Progress):
    """[(picture at the size drawn, seed)] for each batch still to make (`batches_to_make`), as
    soon as it is finished."""
    encoded: dict = {}
    for batch, seeds in batches_to_make(request):
        if progress.stop_requested():
            raise Interrupted()
        pairs = [(plan(seed).prompt, plan(seed).negative_prompt) for seed in seeds]
        cond, uncond = encode_pairs(pairs, tokenizer, bundle, encoded)
        latents = denoise(request, bundle, seeds, cond, uncond, size, facts, batch, progress)
        progress(ProgressEvent("decode", batch=batch, batches=request.batch_count()))
        yield list(zip(decode(bundle, latents), seeds))


def batches_to_make(request: GenerationRequest):
    """(batch number, its seeds) for each batch still to make: from the first an earlier run did
    not finish (`batches_done`), or only the picture `keep_only` picks (a picture here does not
    depend on its batch-mates, so it is made alone)."""
    seeds, size = request.image_seeds(), request.n_samples
    if request.keep_only is not None:
        yield 0, [seeds[request.keep_only]]
        return
    for batch in range(request.batches_done(), request.batch_count()):
        yield batch, seeds[batch * size : (batch + 1) * size]


class BundleUnavailable(RuntimeError):
    """The bundle could not be made or read; this process runs reverie-mini on the torch pipeline
    from then on (`serves` says no), as `auto` does when a UNet's export fails."""


_failed: dict[str, str] = {}  # precision -> why its bundle could not be had, in this process


def load_bundle(models: ModelCache, precision: str, progress: Progress | None = None) -> MiniBundle:
    """The bundle for `precision` from the model cache, read from disk, or made first (once:
    about 11 s, the only time this path imports torch); BundleUnavailable when that fails."""
    def load() -> MiniBundle:
        folder = bundle_folder(precision)
        try:
            if not bundle_made(folder):
                if progress is not None:
                    progress(ProgressEvent("load", message="exporting reverie-mini to OpenVINO (once)"))
                make_bundle(folder, precision)
            return MiniBundle(folder, precision, "bf16" if this_cpu_native_bf16() and is_x86() else "f32")
        except Exception as exc:  # the exporter meets a layer it cannot trace, a full disk, a damaged file...
            _failed[precision] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("reverie-mini's OpenVINO bundle could not be had (%s); it runs on torch", _failed[precision])
            raise BundleUnavailable(_failed[precision]) from exc

    return models.get(("mini-bundle", precision), load)


class MiniTokenizer:
    """MiniLM's tokenizer read from its tokenizer.json by the `tokenizers` library (transformers
    is not imported), answering as transformers' does where prompts/tokens.py asks it; the same
    token ids (tests/test_mini_compiled.py)."""

    bos_token_id = eos_token_id = None

    def __init__(self):
        from tokenizers import Tokenizer

        from ...models.minilm import WINDOW, model_path

        self._tokenizer = Tokenizer.from_file(str(Path(model_path()) / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.cls_token_id, self.sep_token_id, self.pad_token_id = (
            self._tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]", "[PAD]"))
        self.model_max_length = WINDOW

    def __call__(self, text: str, add_special_tokens: bool = True, verbose: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: MiniTokenizer, bundle: MiniBundle,
                 encoded: dict) -> tuple[np.ndarray, np.ndarray]:
    """(cond, uncond) [N, n_chunks * L, D] for one (prompt, negative) pair per picture, as
    conditioning.encode_prompt_batch makes them: each window encoded with its padding masked,
    token weights applied, every row padded with empty windows to the longest. `encoded` keeps
    them by pair and window count across batches."""
    window = framing(tokenizer, None, None)
    chunked = {pair: (chunk_tokens(pair[0], tokenizer, window), chunk_tokens(pair[1], tokenizer, window))
               for pair in dict.fromkeys(pairs)}
    n_chunks = max(max(len(cond), len(uncond)) for cond, uncond in chunked.values())
    for pair, sides in chunked.items():
        if (pair, n_chunks) not in encoded:
            encoded[(pair, n_chunks)] = tuple(
                _encode_chunks(chunks + [TokenChunk() for _ in range(n_chunks - len(chunks))], window, bundle)
                for chunks in sides)
    rows = [encoded[(pair, n_chunks)] for pair in pairs]
    return np.concatenate([cond for cond, _ in rows]), np.concatenate([uncond for _, uncond in rows])


def _encode_chunks(chunks: list[TokenChunk], window, bundle: MiniBundle) -> np.ndarray:
    ids, mask, weights = frame_rows(chunks, window)
    hidden = bundle("text_encoder", np.asarray(ids, np.int64), np.asarray(mask, np.int64))
    hidden = apply_weights(hidden, np.asarray(weights, np.float32))
    return hidden.reshape(1, -1, hidden.shape[-1])


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


def denoise(request: GenerationRequest, bundle: MiniBundle, seeds: list[int], cond: np.ndarray, uncond: np.ndarray,
            size: tuple[int, int], facts: MiniFacts, batch: int, progress: Progress) -> np.ndarray:
    """One batch's latents after the request's steps, from each seed's own starting noise."""
    shape = (facts.latent_channels, size[0] // facts.vae_scale, size[1] // facts.vae_scale)
    sampler = DPMSolver2M(facts.scheduler_config, request.steps)
    latents = np.stack([torch_randn(seed, shape) for seed in seeds]) * np.float32(sampler.init_noise_sigma)
    scale = request.guidance_scale()
    guided = scale > 1  # as diffusers: no unconditioned pass at CFG 1 or below
    states = np.concatenate([uncond, cond]) if guided else cond
    total = len(sampler.timesteps)
    for step, timestep in enumerate(sampler.timesteps):
        model_input = np.concatenate([latents, latents]) if guided else latents
        out = bundle("unet", model_input, np.float32(timestep), states)
        if guided:
            out_uncond, out_cond = np.split(out, 2)
            out = out_uncond + np.float32(scale) * (out_cond - out_uncond)
        latents = sampler.step(out, latents)
        done = step + 1
        preview = None
        if progress.previews and (done % PREVIEW_EVERY == 0 or done == total):
            preview = linear_preview(latents, bundle.latent_rgb, PREVIEW_SIDE)
        progress(ProgressEvent("denoise", done, total, batch, request.batch_count(), preview=preview))
        if progress.stop_requested():
            raise Interrupted()  # the batch was cut short: its half-made pictures are not results
    return latents


def decode(bundle: MiniBundle, latents: np.ndarray) -> list[Image.Image]:
    """The VAE's pictures of `latents`, one decode per picture (a batch's decode is the same per
    row, and one shape serves every batch size)."""
    return [Image.fromarray(_levels(bundle("decoder", row[None])[0], -1.0, 1.0)) for row in latents]


def upscale(bundle: MiniBundle, picture: Image.Image) -> Image.Image:
    """`picture` twice as large by the built-in x2 upscaler (as models/upscaler.upscale_image)."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] * np.float32(2 / 255) - 1
    return Image.fromarray(_levels(bundle("upscaler", pixels)[0], -1.0, 1.0))


def _levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """float [3, H, W] in [low, high] -> uint8 [H, W, 3], clamped and rounded (pixels.to_levels)."""
    levels = np.clip((values - np.float32(low)) * np.float32(255.0 / (high - low)), 0, 255)
    return np.round(levels).astype(np.uint8).transpose(1, 2, 0)
