"""The dream method: a new dream in its own run folder, or a saved one continued where it stopped."""

from __future__ import annotations

from pathlib import Path

from ...device import pick_device
from ...models.cache import ModelCache
from ...outputs.files import Outputs
from ...outputs.video import check_video_path, write_video
from ...progress import Progress, ProgressEvent
from .dream import Dream, DreamReport
from .request import DreamRequest

CONTINUE_ITERATIONS = 100  # when a continued dream is not told how long to go on
# What a continuation request holds besides what it changes.
NOT_CHANGES = {"mode", "continue_from", "video", "device", "iterations"}


def run(request: DreamRequest, models: ModelCache, progress: Progress, outputs: Outputs) -> DreamReport:
    """Dream toward `request`'s prompts, or continue the dream in `request.continue_from`.

    A new dream gets its own folder from `outputs` (NNNNN-prompt, or exactly `outputs.run_folder`);
    a continued one goes on in its folder. The last picture and the state are saved however the
    run ends; with `video`, the snapshots also become an MP4, GIF or WebP.
    """
    if request.video is not None:
        check_video_path(request.video)
    device = pick_device(request.device)
    progress(ProgressEvent("load", message="loading the generator and guides"))
    if request.continue_from is not None:
        given = request.model_dump(exclude_unset=True)
        changes = {key: value for key, value in given.items() if key not in NOT_CHANGES}
        dream = Dream.resume(request.continue_from, device, models, **changes)
        iterations = given.get("iterations", CONTINUE_ITERATIONS)
        folder = Path(request.continue_from)
    else:
        dream = Dream(request, device, models)
        iterations = dream.request.iterations
        folder = outputs.run_folder_for(dream.request.prompt.split("|")[0])
    report = dream.run(iterations, folder, progress)
    if request.video is not None:
        frames = sorted((folder / "steps").glob("*.png"))
        if not frames or frames[-1].stem != f"{report.step:06d}":
            frames.append(report.picture)
        report.video = write_video(frames, folder / request.video)  # an absolute `video` path wins over `folder`
    progress(ProgressEvent("image", 1, 1, payload=report.images[0]))
    return report
