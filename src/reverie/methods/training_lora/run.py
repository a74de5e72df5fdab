"""The train_lora method: a LoRA trained on the request's pictures by training/lora.py.

The pictures are written into the run's folder (`pictures/`), where the trainer reads them as a
concept folder; its checkpoints, samples and the LoRA file go there too, so a job the server
stops goes on from its last checkpoint when it runs again in the same folder. Each step is a
"train" progress event; each grid of samples is the preview. At the end the LoRA file is copied
where its user finds it (`models.own_loras.trained_lora_folder`: the user's own folder in the
studio, models/Lora/ elsewhere) and the last grid of samples is the job's picture.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from PIL import Image

from ... import __version__
from ...models.cache import ModelCache
from ...models.own_loras import trained_lora_folder
from ...models.registry import default_model
from ...outputs.files import Outputs, atomic_write
from ...outputs.metadata import a1111_parameters, reverie_metadata
from ...progress import Interrupted, Progress, ProgressEvent
from ...result import GeneratedImage, Result
from .request import TrainLoraRequest

SAVES_PER_RUN = 10  # checkpoints per run at most: a stopped job loses at most a tenth of its steps
WARMUP_SHARE = 10  # warm up over a tenth of the steps (at most 100)


def write_pictures(pictures: list, folder: Path) -> Path:
    """The request's pictures as files in `folder` (a concept folder), in their order."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, picture in enumerate(pictures):
        if isinstance(picture, Image.Image):
            picture.save(folder / f"{index:03d}.png")
        else:
            source = Path(picture)
            shutil.copyfile(source, folder / f"{index:03d}{source.suffix.lower() or '.png'}")
    return folder


def run(request: TrainLoraRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> Result:
    from ...training.lora import LoraSettings, train_lora
    from ...training.loop import TrainConfig

    started = time.perf_counter()
    request = request.with_seed()
    model = request.model or default_model()
    folder = outputs.run_folder_for(f"lora-{request.name}")
    concept = write_pictures(request.pictures, folder / "pictures")
    steps = request.steps
    config = TrainConfig(steps=steps, batch_size=request.batch_size, lr=request.lr,
                         warmup=max(1, min(100, steps // WARMUP_SHARE)), weight_decay=0.0,
                         save_every=max(1, -(-steps // SAVES_PER_RUN)), sample_every=request.sample_every,
                         seed=request.seed, device=request.device)
    settings = LoraSettings(trigger=request.trigger, rank=request.rank, alpha=request.alpha or float(request.rank),
                            resolution=request.resolution, name=request.name)
    samples = folder / "samples"

    def on_step(step: int) -> None:
        grid = samples / f"lora-{step:06d}.png"
        preview = Image.open(grid).convert("RGB") if progress.previews and grid.is_file() else None
        progress(ProgressEvent("train", step, steps, message=f"training {request.name}", preview=preview))
        if progress.stop_requested():
            raise Interrupted()  # the trainer saves a checkpoint first; the next run goes on from it

    progress(ProgressEvent("load", message=f"loading {model}"))
    result = Result(request=request)
    try:
        trained = train_lora(concept, model, folder, config, settings, quiet=True, on_step=on_step)
    except Interrupted:
        result.interrupted = True
        return result
    saved = _save(trained.file, trained_lora_folder() / trained.file.name)
    result.images.append(_final_grid(request, model, samples / f"lora-{steps:06d}.png", saved, outputs))
    progress(ProgressEvent("image", 1, 1, payload=result.images[-1]))
    result.timings["train_s"] = time.perf_counter() - started
    return result


def _save(trained: Path, target: Path) -> Path:
    """Copy the trained file where its user finds it, atomically: it is listed whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    data = trained.read_bytes()
    return atomic_write(target, lambda partial: Path(partial).write_bytes(data))


def _final_grid(request: TrainLoraRequest, model: str, grid: Path, saved: Path, outputs: Outputs) -> GeneratedImage:
    """The last grid of samples as the job's picture, with what was trained and how to use it."""
    from ...models.lora import a1111_hash

    with Image.open(grid) as opened:
        picture = opened.convert("RGB")
    use = f"{request.trigger} <lora:{request.name}:1>"
    settings = request.settings() | {"model": model, "reverie_version": __version__}
    metadata = reverie_metadata(settings, request.seed, 0)
    metadata["prompt"] = {"prompt": use}  # what to type to use it; the gallery finds the picture by it
    metadata["lora"] = {"name": request.name, "hash": a1111_hash(saved), "base": model, "trigger": request.trigger}
    parameters = a1111_parameters(use, "", {
        "Steps": request.steps, "Seed": request.seed, "Model": model, "Lora": request.name, "Rank": request.rank,
        "Training pictures": len(request.pictures)})
    image = GeneratedImage(picture, request.seed, 0, metadata, parameters)
    image.path = outputs.picture(picture, request.seed, f"lora {request.name}", parameters, metadata)
    return image
