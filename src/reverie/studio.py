"""The Python API: `Studio().generate(request)` — the one path every front door takes."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING
from collections import OrderedDict
from pathlib import Path

import torch

from . import __version__
from .device import check_fits, estimate_peak_bytes, pick_device, pick_dtype
from .errors import BadRequest
from .methods.diffusion.run import run_batches
from .methods.upscale import upscale_pictures
from .models.upscaler import load_upscaler
from .models.components import ModelComponents
from .models.registry import load_model
from .outputs.files import save_grid, save_image
from .outputs.metadata import a1111_parameters, read_png_info, reverie_metadata
from .progress import Interrupted, ProgressCallback, ProgressEvent, StopCheck, no_progress, should_never_stop
from .request import DreamRequest, GenerationRequest, make_dream_request, make_request
from .result import GeneratedImage, Result

if TYPE_CHECKING:
    from .methods.dreaming.run import DreamReport
    from .methods.rerank import Scorer

DEFAULT_MODEL = "mini"
DREAM_CONTINUE_ITERATIONS = 100  # when a continued dream is not told how long to go on


def default_model() -> str:
    return os.environ.get("REVERIE_DEFAULT_MODEL", DEFAULT_MODEL)


class Studio:
    """Loads models (kept in a small cache) and runs requests on them.

    `max_models` bounds how many loaded models stay in memory; the least recently used
    one is dropped first.
    """

    def __init__(self, device: str = "auto", max_models: int = 2):
        self.device_name = device
        self.max_models = max_models
        self._models: OrderedDict[tuple, ModelComponents] = OrderedDict()
        self._upscaler = None
        self._scorers: dict[str, "Scorer"] = {}

    # -- models -------------------------------------------------------------------------
    def add_model(self, name: str, components: ModelComponents, device: str = "cpu") -> None:
        """Make in-memory components available as `--model name` (training samples, benchmarks)."""
        dtype = components.unet.dtype
        self._models[(name, str(torch.device(device)), str(dtype))] = components

    def loaded_model(self, reference: str | None) -> ModelComponents | None:
        """The most recently used loaded model for `reference` (None if it is not loaded)."""
        reference = reference or default_model()
        for key in reversed(self._models):
            if key[0] == reference:
                return self._models[key]
        return None

    def model(self, reference: str, device: torch.device, dtype: torch.dtype) -> ModelComponents:
        """The loaded model for `reference`, from the cache when it is there."""
        key = (reference, str(device), str(dtype))
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        components = load_model(reference, dtype=dtype)
        for module in (components.unet, components.vae, components.text_encoder):
            module.to(device)
        self._models[key] = components
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return components

    # -- generation ---------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest | dict,
        *,
        outdir: str | Path | None = None,
        grid: bool = True,
        progress: ProgressCallback = no_progress,
        should_stop: StopCheck = should_never_stop,
    ) -> Result:
        """Make the pictures `request` asks for.

        With `outdir`, each picture is written (PNG with its settings) as soon as its batch is
        done, plus a grid when there are several (unless `grid` is False). Ctrl-C or `should_stop()` ends the run early:
        the result then holds every picture finished so far and `interrupted` is True.
        """
        if isinstance(request, dict):
            request = make_request(**request)
        request = self._resolve(request)
        if (request.rerank > 1 or request.score) and not request.prompt.strip():
            raise BadRequest("rerank" if request.rerank > 1 else "score", "needs a prompt to score the pictures against")
        device = pick_device(request.device if request.device != "auto" else self.device_name)
        dtype = pick_dtype(request.dtype, device)
        started = time.perf_counter()
        if request.mode == "upscale":
            batches, model_name = _picture_as_batch(request), "reverie-upscaler"
            request = request.model_copy(update={"upscale": request.upscale or 4}).with_defaults()
        else:
            progress(ProgressEvent("load", message=f"loading {request.model}"))
            components = self.model(request.model, device, dtype)
            request = self._fit_memory(request, components, device, dtype)
            request = request.with_defaults(components.extras.get("defaults"))
            if request.upscale is None:
                request = request.model_copy(update={"upscale": components.extras.get("default_upscale", 1)})
            candidates = request.model_copy(update={"n_iter": request.n_iter * request.rerank})
            batches, model_name = run_batches(candidates, components, device, dtype, progress, should_stop), components.name
        loaded = time.perf_counter()
        result = Result(request=request)
        outdir = Path(outdir) if outdir else None
        settings = request.settings() | {"model_name": model_name, "reverie_version": __version__}
        scorer = self.scorer(request.scorer) if request.score or request.rerank > 1 else None
        if request.rerank > 1:
            batches, result.interrupted = self._best_of(batches, request, scorer, progress)
        else:
            batches = (_with_scores(batch, scorer, request.prompt) for batch in batches)
        try:
            for batch in batches:
                pictures = self._upscaled([picture for picture, _, _ in batch], request.upscale, progress)
                for picture, (_, seed, score) in zip(pictures, batch):
                    index = len(result.images)
                    metadata = reverie_metadata(settings, seed, index) | {"image_size": list(picture.size)}
                    if score is not None:
                        metadata |= {"clip_score": round(score, 4), "scorer": scorer.name}
                    parameters = a1111_parameters(settings | _actual_size(picture), seed)
                    image = GeneratedImage(picture, seed, index, metadata, parameters, score=score)
                    if outdir:
                        image.path = save_image(picture, outdir, seed, request.prompt, parameters, metadata)
                    result.images.append(image)
                    progress(ProgressEvent("image", index + 1, request.n_samples * request.n_iter, payload=image))
        except (Interrupted, KeyboardInterrupt):
            result.interrupted = True
        if outdir and grid and len(result.images) > 1:
            first = result.images[0]
            result.grid_path = save_grid([img.image for img in result.images], outdir, request.prompt, first.parameters, first.metadata)
        result.timings = {"load_s": loaded - started, "generate_s": time.perf_counter() - loaded}
        return result

    # -- dreaming -------------------------------------------------------------------------
    def dream(
        self,
        request: DreamRequest | dict,
        *,
        run_dir: str | Path | None = None,
        continue_from: str | Path | None = None,
        folder: str | Path | None = None,
        video: str | Path | None = None,
        progress: ProgressCallback = no_progress,
        should_stop: StopCheck = should_never_stop,
    ) -> DreamReport:
        """Dream toward `request`'s prompts, or continue the dream saved in `continue_from`.

        A new dream gets its own folder under `run_dir` (default outputs/dreams/NNNNN-prompt),
        or exactly `folder` when given;
        a continued one goes on in its folder. For a continued dream, `request` holds only
        what changes (a dict: prompt, iterations, lr, ...). The last picture and the state are
        saved however the run ends; with `video`, the snapshots become an MP4 or GIF.
        """
        from .methods.dreaming.run import Dream
        from .outputs.video import check_video_path, write_video

        if video is not None:
            check_video_path(video)
        progress(ProgressEvent("load", message="loading the generator and guides"))
        if continue_from is not None:
            changes = dict(request) if isinstance(request, dict) else request.model_dump(exclude_unset=True)
            iterations = changes.pop("iterations", None) or DREAM_CONTINUE_ITERATIONS
            device = pick_device(changes.pop("device", None) or self.device_name)
            dream, folder = Dream.resume(continue_from, device, **changes), Path(continue_from)
        else:
            if isinstance(request, dict):
                request = make_dream_request(**request)
            device = pick_device(request.device if request.device != "auto" else self.device_name)
            dream = Dream(request, device)
            iterations = dream.request.iterations
            if folder is None:
                folder = _new_run_dir(Path(run_dir or "outputs/dreams"), dream.request.prompt)
            folder = Path(folder)  # Dream.run makes it when it does not exist yet
        report = dream.run(iterations, folder, progress, should_stop)
        if video is not None:
            frames = sorted((folder / "steps").glob("*.png"))
            if not frames or frames[-1].stem != f"{report.step:06d}":
                frames.append(report.picture)
            report.video = write_video(frames, folder / video)  # an absolute `video` path wins over `folder`
        return report

    def scorer(self, reference: str = "mini") -> "Scorer":
        """The CLIP that scores pictures against prompts (loaded once, then kept)."""
        from .methods.rerank import Scorer

        if reference not in self._scorers:
            self._scorers[reference] = Scorer.load(reference)
        return self._scorers[reference]

    @staticmethod
    def _best_of(batches, request: GenerationRequest, scorer, progress: ProgressCallback):
        """All the candidates' batches -> one batch of the best with their scores, best first, and
        whether the run was cut short."""
        from .methods.rerank import best_candidates

        keep = request.n_samples * request.n_iter
        progress(ProgressEvent("rerank", 0, keep * request.rerank,
                               message=f"making {keep * request.rerank} candidates, keeping the best {keep}"))
        kept, interrupted = best_candidates(batches, scorer, request.prompt, keep, keep * request.rerank, progress)
        return [[(candidate.picture, candidate.seed, candidate.score) for candidate in kept]], interrupted

    def _upscaled(self, pictures, factor: int, progress: ProgressCallback):
        if factor == 1:
            return pictures
        progress(ProgressEvent("upscale", message=f"upscaling x{factor}"))
        if self._upscaler is None:
            self._upscaler = load_upscaler()
        return upscale_pictures(pictures, factor, self._upscaler)

    def _resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Fix the seed and the model, and for variations borrow the source picture's prompt."""
        request = request.with_seed()
        updates = {}
        if not request.model:
            updates["model"] = default_model()
        if request.mode == "variations" and not request.prompt and isinstance(request.init_image, str):
            try:
                source = read_png_info(request.init_image)["reverie"]
            except Exception:  # an unreadable picture is reported when the run loads it
                source = None
            if source:
                updates["prompt"] = source["settings"].get("prompt", "")
                updates["negative_prompt"] = source["settings"].get("negative_prompt", "")
        return request.model_copy(update=updates) if updates else request

    def _fit_memory(self, request, components, device, dtype) -> GenerationRequest:
        """Turn on slicing/tiling where the size needs it; refuse what cannot fit at all."""
        width = request.width or components.native_size
        height = request.height or components.native_size
        tiling = request.vae_tiling
        def estimate(tiled: bool) -> int:
            return estimate_peak_bytes(
                width=width, height=height, batch=request.n_samples,
                latent_channels=components.vae.config.latent_channels, vae_scale=components.vae_scale_factor,
                dtype=dtype, vae_tiling=tiled,
            )
        if tiling is None:
            # Tile the decode only when it would not fit whole: tiling leaves faint seams.
            from .device import available_memory
            tiling = estimate(False) > available_memory(device) * 0.8
        check_fits(estimate(tiling), 0, device)
        vae = components.vae
        vae.enable_slicing()  # decode one picture at a time: same pixels, a fraction of the memory
        vae.enable_tiling() if tiling else vae.disable_tiling()
        slicing = bool(request.attention_slicing)
        components.extras["attention_slicing"] = slicing
        updates = {"vae_tiling": tiling, "attention_slicing": slicing}
        if request.mode == "txt2img":
            updates.update(width=width, height=height)
        return request.model_copy(update=updates)


def _new_run_dir(parent: Path, prompt: str) -> Path:
    from .outputs.files import slug

    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in parent.iterdir() if p.is_dir() and p.name[:5].isdigit()]
    folder = parent / f"{max(numbers, default=-1) + 1:05d}-{slug(prompt.split('|')[0])}"
    folder.mkdir()
    return folder


def _with_scores(batch, scorer, prompt: str) -> list[tuple]:
    """[(picture, seed)] -> [(picture, seed, score)]; the score is None when nothing scores."""
    scores = scorer.scores([picture for picture, _ in batch], prompt) if scorer else [None] * len(batch)
    return [(picture, seed, score) for (picture, seed), score in zip(batch, scores)]


def _picture_as_batch(request: GenerationRequest):
    """The upscale mode's input, as one batch of one picture (seed 0: nothing is random)."""
    from .methods.diffusion.images import load_image, to_rgb

    yield [(to_rgb(load_image(request.init_image, "init_image")), 0)]


def _actual_size(picture) -> dict:
    return {"width": picture.width, "height": picture.height}
