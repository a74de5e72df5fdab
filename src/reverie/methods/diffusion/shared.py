"""Several people's txt2img requests sharing forward passes (dynamic batching), each getting
exactly its own seeds' pictures.

`batch_key(request)` says which requests can share: the same model, size, sampler, steps, CFG
and every other setting but the prompts, the seeds and the counts (None: this one runs alone:
resuming, best-of, chaos, a refiner, the image modes, and any request the torch-free path
serves: compiled.py runs it alone). `run_shared(shares, models, limit)` then
runs them together:

1. Each request is resolved and split into its own batches (`n_samples` pictures each), as it
   would be run alone; each batch's prompts are encoded on their own, as alone.
2. Rounds take the requests' next batches in turn, whole, up to `limit` pictures, and denoise
   them in one pass (batches asking for other LoRAs, or prompts of another length, go in a
   pass of their own). The UNet's rows do not depend on their batch-mates
   (models/batch_invariance.py) and the VAE decodes one picture at a time, so a picture is
   bit-for-bit the one its request makes alone.
3. Each batch is finished (upscaled) and written as its request's, with its own progress:
   its own steps, its own previews (its columns of the shared preview), its own pictures.

A request that asks to stop drops out at the end of the round (the pass goes on for the
others); the pass stops when every request in it asks to. One request's error (an unknown
LoRA in its prompt) ends that request only.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field

from PIL import Image

from ...device import pick_device, pick_dtype
from ...errors import OutOfMemory, ReverieError
from ...models.batch_invariance import STEADY_PICTURES
from ...models.lora import apply_loras
from ...progress import Interrupted, Progress, ProgressEvent
from ...prompts.conditioning import encode_prompt_batch
from ...prompts.picture import prompt_plan
from ...result import Result
from ..registry import Share
from ..rerank import scorer_from, with_scores
from . import compiled
from .batches import denoise_batch, finish, unet_with_loras
from .inputs import prepare_input
from .pipelines import circular_padding, memory_settings, vae_dtype_kept
from .networks import batch_prompts
from .request import GenerationRequest, resolve
from .records import write_picture
from .run import diffusion_model, fit_memory, on_runtimes, picture_settings, run, tiny_decoder

# Fields that may differ between requests sharing a pass: what each picture is of, and how many.
PER_REQUEST = {"prompt", "negative_prompt", "seed", "n_samples", "n_iter", "combinatorial", "max_combinations",
               "strict_combinations", "expand", "prompt_parameters", "score", "scorer"}


def batch_key(request: GenerationRequest) -> str | None:
    """Requests with equal keys can share forward passes; None: this one runs alone."""
    if (request.mode != "txt2img" or request.made or request.rerank > 1 or request.keep_only is not None
            or request.chaos is not None or request.refiner or request.quantize != "none" or request.progress_video):
        return None
    request = resolve(request)
    if compiled.serves(request):
        # The bundle runs it alone, as fast as a shared pass on the torch pipeline (mini: eight
        # one-picture jobs in 0.86 s either way; two of four pictures 1.69 s against 1.97), the
        # same picture whether or not others were queued (the two paths round bf16 apart), and
        # a worker never holds the model on both paths (docs/deployment.md).
        return None
    return json.dumps(request.model_dump(mode="json", exclude=PER_REQUEST | {"made"}), sort_keys=True, default=str)


@dataclass
class Piece:
    """One batch of one request: its pictures' seeds, its place among the request's batches."""

    share: int
    batch: int
    seeds: list[int]
    first_index: int  # of its first picture among the request's
    conditioning: tuple = ()  # (cond, uncond) once encoded
    uses: tuple = ()  # the LoRAs its prompts ask for
    shape: tuple = field(default=())


def run_shared(shares: list[Share], models, limit: int) -> None:
    """Run every share's request, sharing passes of up to `limit` pictures; fills each share's
    `result` (pictures written as they come) or `error`."""
    requests = [resolve(share.request) for share in shares]
    keys = {batch_key(request) for request in requests}
    if None in keys or len(keys) > 1:
        raise ValueError("run_shared: the requests do not share a batch key")
    first = requests[0]
    device = pick_device(first.device)
    dtype = pick_dtype(first.dtype, device)
    started = time.perf_counter()
    for share in shares:
        share.progress(ProgressEvent("load", message=f"loading {first.model}"))
    components = diffusion_model(models, first.model, device, dtype, first.weights, torch_unet=False)
    if components.is_sdxl:  # SDXL's extra conditioning is not shared yet: each runs alone
        for share, request in zip(shares, requests):
            _alone(share, request, models)
        return
    requests = [request.with_defaults(components.sampling) for request in requests]
    prepared = prepare_input(requests[0], components)
    # Each request's memory settings as alone (its decode tiled or not: that changes pixels);
    # passes too big for the memory left go back to one batch each.
    fitted = []
    for share, request in zip(shares, requests):
        try:
            fitted.append(fit_memory(request, components, prepared, device, dtype))
        except ReverieError as exc:  # too big even alone: that one fails, as alone
            share.error = exc
            fitted.append(None)
    shares = [share for share, request in zip(shares, fitted) if request is not None]
    requests = [request for request in fitted if request is not None]
    if not requests:
        return
    decoder = tiny_decoder(models, requests[0], components, device, dtype)
    # Each request's runtime as alone: passes never mix them, since LoRAs have passes of their own.
    requests, components, runtime_unets = on_runtimes(models, requests, components, prepared, device, dtype)
    limit = min(limit, STEADY_PICTURES)  # larger passes would round a picture otherwise (batch_invariance.py)
    widest = max(min(limit, request.made_count()) for request in requests)
    try:
        fit_memory(requests[0].model_copy(update={"n_samples": widest}), components, prepared, device, dtype)
    except OutOfMemory:
        limit = 0
    jobs = [_Job(share, request, prompt_plan(request), picture_settings(request, components, dtype),
                 scorer_from(models, request.scorer) if request.score else None) for share, request in zip(shares, requests)]
    for job in jobs:
        job.share.request, job.share.result = job.request, Result(request=job.request)
    loaded = time.perf_counter()
    with circular_padding(components, first.tile), vae_dtype_kept(components):
        for pieces in rounds(requests, limit):
            pieces = [piece for piece in pieces if _active(jobs[piece.share].share)]
            for piece in pieces:
                _encode(piece, jobs[piece.share], components, device, dtype)
            pieces = [piece for piece in pieces if jobs[piece.share].share.error is None]
            for group in _passes(pieces, jobs):
                made = _run_pass(group, jobs, components, prepared, device, dtype, runtime_unets, decoder)
                for piece, pictures in zip(group, made or []):
                    _write_piece(piece, pictures, jobs[piece.share], prepared, models)
    for job in jobs:
        result = job.share.result
        result.interrupted = result.interrupted or job.share.stopped
        result.timings = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
        if result.images:
            shown = result.images[0]
            result.grid_path = job.share.outputs.grid_of([image.image for image in result.images], job.request.prompt,
                                                         shown.parameters, shown.metadata)


@dataclass
class _Job:
    """A share with what its pictures are made and written with."""

    share: Share
    request: GenerationRequest
    plan: object  # prompts.picture.PromptPlan
    settings: dict
    scorer: object
    encoded: dict = field(default_factory=dict)  # (LoRAs) -> its prompt cache, as alone


def _alone(share: Share, request: GenerationRequest, models) -> None:
    try:
        share.result = run(request, models, share.progress, share.outputs)
    except ReverieError as exc:
        share.error = exc


def rounds(requests: list[GenerationRequest], limit: int):
    """Yield lists of Pieces of at most `limit` pictures (a batch larger than that goes alone):
    each round takes the requests' next batches in turn, so everyone moves on together."""
    queues = []
    for number, request in enumerate(requests):
        seeds = request.image_seeds()
        size = request.n_samples
        queues.append([Piece(number, batch, seeds[batch * size:(batch + 1) * size], batch * size)
                       for batch in range(request.batch_count())])
    while any(queues):
        taken, count = [], 0
        for queue in queues:
            if queue and (not taken or count + len(queue[0].seeds) <= limit):
                piece = queue.pop(0)
                taken.append(piece)
                count += len(piece.seeds)
        yield taken


def _active(share: Share) -> bool:
    if share.error is None and not share.stopped and share.progress.stop_requested():
        share.stopped = True
    return share.error is None and not share.stopped


def _encode(piece: Piece, job: _Job, components, device, dtype) -> None:
    """The piece's prompts encoded exactly as its request alone encodes that batch."""
    try:
        pairs, uses = batch_prompts(components, [job.plan(seed) for seed in piece.seeds])
        with apply_loras(components, uses):  # a LoRA's text encoder part is on while encoding
            cond, uncond = encode_prompt_batch(pairs, components.tokenizer, components.text_encoder, device=device,
                                               cache=job.encoded.setdefault(tuple(uses), {}))
    except ReverieError as exc:
        job.share.error = exc
        return
    piece.conditioning = (cond.to(device, dtype), uncond.to(device, dtype))
    piece.uses, piece.shape = tuple(uses), tuple(cond.shape[1:])


def _passes(pieces: list[Piece], jobs: list[_Job]) -> list[list[Piece]]:
    """The round's pieces grouped into passes: one LoRA set, one prompt length, one decode (tiled
    or whole) and one runtime per pass."""
    groups: dict = {}
    for piece in pieces:
        request = jobs[piece.share].request
        key = (piece.uses, piece.shape, request.vae_tiling, request.runtime)
        groups.setdefault(key, []).append(piece)
    return list(groups.values())


class _PassProgress(Progress):
    """A shared pass's progress, told to each of its requests as its own batch's: its step,
    its batch number, its own columns of the preview. The pass stops when all of them ask to."""

    def __init__(self, pieces: list[Piece], jobs: list[_Job]):
        self.shares = [jobs[piece.share].share for piece in pieces]
        super().__init__(previews=any(share.progress.previews for share in self.shares))
        self.pieces = pieces

    def __call__(self, event: ProgressEvent) -> None:
        column, columns = 0, sum(len(piece.seeds) for piece in self.pieces)
        for piece, share in zip(self.pieces, self.shares):
            count = len(piece.seeds)
            preview = None
            if event.preview is not None and share.progress.previews:
                width = event.preview.width // columns
                preview = event.preview.crop((column * width, 0, (column + count) * width, event.preview.height))
            column += count
            if not share.stopped:
                share.progress(ProgressEvent(event.stage, event.step, event.total, piece.batch,
                                             share.request.batch_count(), event.message, preview=preview))

    def stop_requested(self) -> bool:
        return not any(_active(share) for share in self.shares)


def _run_pass(group: list[Piece], jobs: list[_Job], components, prepared, device, dtype, unets: dict,
              decoder=None) -> list | None:
    """Denoise the group's pieces in one pass: each piece's pictures, or None when every
    request in it stopped (a cut-short pass makes no results)."""
    import torch

    seeds = [seed for piece in group for seed in piece.seeds]
    cond = torch.cat([piece.conditioning[0] for piece in group])
    uncond = torch.cat([piece.conditioning[1] for piece in group])
    progress = _PassProgress(group, jobs)
    request = jobs[group[0].share].request
    try:
        with memory_settings(components, bool(request.vae_tiling), request.attention_slicing), \
                apply_loras(components, list(group[0].uses)) as infos:
            unet = unet_with_loras(unets.get(request.runtime), components, list(group[0].uses), infos, progress)
            pictures = denoise_batch(request, components, prepared, seeds, cond, uncond, device, dtype,
                                     group[0].batch, progress, unet=unet, decoder=decoder)
    except Interrupted:
        for share in progress.shares:
            share.stopped = True
        return None
    ends = list(itertools.accumulate(len(piece.seeds) for piece in group))
    return [pictures[end - len(piece.seeds):end] for piece, end in zip(group, ends)]


def _write_piece(piece: Piece, pictures: list[Image.Image], job: _Job, prepared, models) -> None:
    """Finish the piece's pictures as its request alone does and write them as its own."""
    share = job.share
    if not _active(share):
        return  # stopped during the pass: a cut-short batch is not a result
    request = share.request
    pictures = finish(pictures, prepared, request, models, share.progress)
    for offset, (picture, seed, score) in enumerate(with_scores(list(zip(pictures, piece.seeds)), job.scorer, job.plan)):
        index = piece.first_index + offset
        image = write_picture(picture, seed, score, index, request, job.settings, job.scorer, share.outputs,
                              job.plan(seed))
        share.result.images.append(image)
        share.progress(ProgressEvent("image", index + 1, request.picture_count(), payload=image))
